//! `okapi-train tokenizer` and `okapi-train init` through the binary.

mod common;

use common::fixture;
use okapi::data::Tokenizer;
use okapi::model::Model;
use okapi::runtime::CpuBackend;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_okapi-train");

/// One sentence per script Okapi covers (Latin with diacritics, Cyrillic, Arabic, Devanagari,
/// Bengali, Tamil, Telugu, Kannada, Malayalam, Han).
const TEXTS: &[&str] = &[
    "Tôi thích học tiếng Việt vào buổi sáng.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Сегодня хорошая погода, и мы идём гулять в парк.",
    "القراءة تفتح أبواب المعرفة أمام الجميع.",
    "मुझे सुबह चाय पीना बहुत पसंद है।",
    "আমি প্রতিদিন সকালে বই পড়ি।",
    "நான் தினமும் காலையில் நடக்கிறேன்.",
    "నేను ప్రతిరోజూ పుస్తకం చదువుతాను.",
    "ನಾನು ಪ್ರತಿದಿನ ಶಾಲೆಗೆ ಹೋಗುತ್ತೇನೆ.",
    "ഞാൻ എല്ലാ ദിവസവും പാട്ട് കേൾക്കുന്നു.",
    "我每天早上喝一杯茶。",
];

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("okapi-tokinit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn tokenizer_trains_on_every_script_and_adds_bos() {
    let dir = tmp("tok");
    let data = dir.join("multi.json");
    let recs: Vec<serde_json::Value> = TEXTS.iter().cycle().take(60).enumerate().map(|(i, t)| serde_json::json!({"instruction": t, "input": "", "output": TEXTS[(i + 3) % TEXTS.len()]})).collect();
    std::fs::write(&data, serde_json::to_string(&recs).unwrap()).unwrap();
    let out = dir.join("tokenizer.json");
    let o = Command::new(BIN).args(["tokenizer", "--data"]).arg(&data).args(["--vocab-size", "600", "--out"]).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tok = Tokenizer::load(&out).unwrap();
    assert!(tok.vocab_size() <= 600 && tok.vocab_size() > 260 + 100, "vocab {}", tok.vocab_size());
    for (i, s) in ["<unk>", "<s>", "</s>", "<pad>"].iter().enumerate() {
        assert_eq!(tok.token_to_id(s), Some(i as u32), "{s}");
    }
    for t in TEXTS {
        let plain = tok.encode(t, false).unwrap();
        let with_bos = tok.encode(t, true).unwrap();
        assert_eq!(with_bos[0], 1, "BOS added by the post-processor");
        assert_eq!(&with_bos[1..], &plain[..]);
        assert_eq!(tok.decode(&plain, false).unwrap(), *t, "round trip");
        // merges were learnt for this script: fewer tokens than UTF-8 bytes
        assert!(plain.len() < t.len(), "{t}: {} tokens for {} bytes", plain.len(), t.len());
    }
    // text it never saw still encodes (byte fallback) and decodes exactly
    let unseen = "Ελληνικά και עברית 🙂";
    assert_eq!(tok.decode(&tok.encode(unseen, false).unwrap(), false).unwrap(), unseen);
    let o = Command::new(BIN).args(["tokenizer", "--data"]).arg(&data).args(["--vocab-size", "100", "--out"]).arg(&out).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--vocab-size 100 is too small"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn init_writes_a_loadable_seeded_model_for_both_archs() {
    let dir = tmp("init");
    let tok = fixture("llama_gqa").join("tokenizer.json");
    for arch in ["llama", "bloom"] {
        let run = |seed: &str, out: &std::path::Path| {
            Command::new(BIN).args(["init", "--arch", arch, "--preset", "tiny", "--tokenizer"]).arg(&tok).arg("--out").arg(out).args(["--seed", seed]).output().unwrap()
        };
        let (a, b, c) = (dir.join(format!("{arch}-a")), dir.join(format!("{arch}-b")), dir.join(format!("{arch}-c")));
        for (seed, out) in [("1", &a), ("1", &b), ("2", &c)] {
            let o = run(seed, out);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        let m = Model::load(CpuBackend, &a).unwrap();
        assert_eq!(m.cfg.vocab_size, 400, "vocabulary from the tokenizer");
        assert_eq!((m.cfg.hidden_size, m.cfg.n_layers, m.cfg.n_heads), (128, 4, 4));
        assert_eq!((m.cfg.bos_token_id, m.cfg.eos_token_id, m.cfg.pad_token_id), (Some(1), Some(2), Some(3)));
        assert!(a.join("tokenizer.json").exists());
        let (wa, wb, wc) = (std::fs::read(a.join("model.safetensors")).unwrap(), std::fs::read(b.join("model.safetensors")).unwrap(), std::fs::read(c.join("model.safetensors")).unwrap());
        assert!(wa == wb && wa != wc, "same seed → same weights, other seed → other weights");
        // transformers' init: matrices N(0, 0.02), norms 1, biases 0
        let emb = m.host_value(m.embed);
        let std = (emb.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / emb.len() as f64).sqrt();
        assert!((std - 0.02).abs() < 0.001, "embedding std {std}");
        assert!(m.host_value(m.ln_f.w).iter().all(|&x| x == 1.0));
        // a forward runs and gives near-uniform logits (loss ≈ ln V)
        let mut acts = m.new_acts(1, 8);
        m.forward(&mut acts, &[1, 50, 60, 70, 80, 90, 100, 2], 1, 8).unwrap();
        let lstd = (acts.logits.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / acts.logits.len() as f64).sqrt();
        assert!(lstd > 0.01 && lstd < 0.5, "logits std {lstd}: near-uniform at init");
    }
    let o = Command::new(BIN).args(["init", "--arch", "llama", "--preset", "huge", "--tokenizer"]).arg(&tok).arg("--out").arg(dir.join("x")).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("unknown preset `huge`") && err.lines().count() == 1, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
