//! The chunked LM head (`--lm-head-chunk R`): the logits of R rows at a time, never the whole
//! (B·T, V) tensor. Unchunked, the block path is the old `forward` + loss + `backward`, bit for
//! bit; chunked, the loss is the same and every gradient agrees to float rounding (the head
//! weight's gradient sums its rows block by block) — LLaMA (untied head) and BLOOM (tied).

mod common;

use common::{fixture, short_sft, Scratch};
use okapi::model::Model;
use okapi::rlhf::{lm_loss_and_grad, lm_loss_blocks, LossBufs};
use okapi::runtime::{Backend, CpuBackend, IGNORE_INDEX};

struct Run {
    loss: f64,
    grads: Vec<Vec<f32>>,
    logits_rows: usize,
}

/// One forward, loss and backward of a fixture on a fixed (3, 11) batch, through the old path
/// (`chunk = None, old = true`) or the head's row blocks.
fn run(name: &str, chunk: Option<usize>, old: bool) -> Run {
    let mut model = Model::load(CpuBackend, &fixture(name)).unwrap();
    model.head_chunk = chunk;
    let (b, t, v) = (3, 11, model.cfg.vocab_size);
    let mut rng = okapi::model::Rng::new(5);
    let ids: Vec<u32> = (0..b * t).map(|_| (rng.next_u64() % v as u64) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| if i % t == t - 1 || i % 5 == 0 { IGNORE_INDEX } else { ids[i + 1] }).collect();
    let (mut acts, mut scratch) = (model.new_acts(b, t), model.new_scratch(b, t));
    let mut grads = model.new_grads(|_| true);
    let mut bufs = LossBufs::new(&model.be, b * t);
    let weight = 1.0 / targets.iter().filter(|&&x| x != IGNORE_INDEX).count() as f32;
    let loss = if old {
        model.forward(&mut acts, &ids, b, t).unwrap();
        let (s, _) = lm_loss_and_grad(&model, &mut acts, &mut bufs, &targets, weight);
        model.backward(&mut acts, &mut scratch, &mut grads);
        s
    } else {
        model.forward_hidden(&mut acts, &ids, b, t).unwrap();
        let (s, _) = lm_loss_blocks(&model, &mut acts, &mut bufs, &targets, weight, Some((&mut scratch, &mut grads))).unwrap();
        model.backward_hidden(&mut acts, &mut scratch, &mut grads);
        s
    };
    let grads = grads.bufs.iter().map(|g| g.as_ref().map(|g| model.be.read(g, model.be.buf_len(g))).unwrap()).collect();
    Run { loss, grads, logits_rows: model.be.buf_len(&acts.logits) / v }
}

#[test]
fn unchunked_blocks_are_the_old_path_bit_for_bit() {
    for name in ["llama_gqa", "bloom_6h"] {
        let (old, new) = (run(name, None, true), run(name, None, false));
        assert_eq!(old.loss.to_bits(), new.loss.to_bits(), "{name}");
        for (i, (a, b)) in old.grads.iter().zip(&new.grads).enumerate() {
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{name}: parameter {i}");
        }
    }
}

#[test]
fn chunked_head_gives_the_same_loss_and_gradients() {
    for name in ["llama_gqa", "bloom_6h"] {
        let whole = run(name, None, false);
        assert_eq!(whole.logits_rows, 33);
        for chunk in [1, 5, 32] {
            let c = run(name, Some(chunk), false);
            assert_eq!(c.logits_rows, chunk, "{name}: the logits buffer holds one chunk");
            let rel = (c.loss - whole.loss).abs() / whole.loss.abs();
            assert!(rel < 1e-6, "{name} chunk {chunk}: loss {} vs {} ({rel:e})", c.loss, whole.loss);
            for (i, (a, b)) in c.grads.iter().zip(&whole.grads).enumerate() {
                let norm = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt().max(1e-12);
                let diff = a.iter().zip(b).map(|(x, y)| ((*x - *y) as f64).powi(2)).sum::<f64>().sqrt();
                // relative, with a floor for gradients that are zero but for rounding (BLOOM's key bias)
                assert!(diff <= 1e-5 * norm + 1e-6, "{name} chunk {chunk}: parameter {i} differs by {diff:e} (norm {norm:e})");
            }
        }
    }
}

#[test]
fn a_whole_forward_is_refused_when_the_logits_are_chunked() {
    let mut model = Model::load(CpuBackend, &fixture("llama_gqa")).unwrap();
    model.head_chunk = Some(4);
    let mut acts = model.new_acts(2, 8);
    let err = model.forward(&mut acts, &[1; 16], 2, 8).unwrap_err().to_string();
    assert!(err.contains("--lm-head-chunk") && err.contains("16"), "{err}");
}

fn sft_losses(dir: &Scratch, tag: &str, extra: &[&str]) -> Vec<f64> {
    let out = dir.root.join(tag);
    let args = [&["--max-steps", "4", "--batch-size", "2", "--max-len", "40", "--lr", "1e-3", "--no-shuffle", "--val-fraction", "0.25", "--eval-every", "2"][..], extra].concat();
    let o = short_sft(&dir.root, "bloom_6h", &out, &args, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    m.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).flat_map(|v| [v["loss"].as_f64(), v["val_loss"].as_f64()]).flatten().collect()
}

#[test]
fn an_sft_run_with_a_chunked_head_follows_the_whole_one() {
    let dir = Scratch::new("head-chunk");
    let whole = sft_losses(&dir, "whole", &[]);
    let chunked = sft_losses(&dir, "chunked", &["--lm-head-chunk", "7"]);
    assert_eq!(whole.len(), chunked.len());
    assert!(whole.len() >= 5, "losses and validation losses: {whole:?}");
    for (a, b) in whole.iter().zip(&chunked) {
        assert!((a - b).abs() <= 1e-5 * a.abs(), "{whole:?} vs {chunked:?}");
    }
}

fn okapi(args: &[&str]) -> std::process::Output {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_okapi-train")).args(args).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

fn metric(out: &std::path::Path, key: &str) -> Vec<f64> {
    let m = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    m.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get(key)?.as_f64()).collect()
}

fn close(what: &str, a: &[f64], b: &[f64], rel: f64) {
    assert!(!a.is_empty() && a.len() == b.len(), "{what}: {a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= rel * x.abs().max(1e-3), "{what}: {a:?} vs {b:?}");
    }
}

#[test]
fn dpo_with_a_chunked_head_follows_the_whole_one() {
    let dir = Scratch::new("head-chunk-dpo");
    let data = fixture("ranking_data.json");
    let model = fixture("llama_gqa");
    let outs = [dir.root.join("whole"), dir.root.join("chunked")];
    for (out, extra) in outs.iter().zip([&[][..], &["--lm-head-chunk", "5"][..]]) {
        let mut a = vec!["dpo", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--max-steps", "3", "--batch-size", "2", "--lr", "1e-3", "--no-shuffle"];
        a.extend(extra);
        okapi(&a);
    }
    close("dpo loss", &metric(&outs[0], "loss"), &metric(&outs[1], "loss"), 1e-5);
}

#[test]
fn loglik_with_a_chunked_head_gives_the_same_logliks() {
    let dir = Scratch::new("head-chunk-loglik");
    let model = fixture("llama_gqa");
    let data = model.join("loglik.jsonl");
    let read = |f: &std::path::Path| -> Vec<serde_json::Value> { std::fs::read_to_string(f).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect() };
    let (a, b) = (dir.root.join("a.jsonl"), dir.root.join("b.jsonl"));
    okapi(&["loglik", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--output", a.to_str().unwrap(), "--batch-size", "3"]);
    okapi(&["loglik", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--output", b.to_str().unwrap(), "--batch-size", "3", "--lm-head-chunk", "4"]);
    let (ra, rb) = (read(&a), read(&b));
    assert!(ra.len() >= 3 && ra.len() == rb.len());
    for (x, y) in ra.iter().zip(&rb) {
        let (lx, ly) = (x["loglik"].as_f64().unwrap(), y["loglik"].as_f64().unwrap());
        assert!((lx - ly).abs() <= 1e-5 * lx.abs().max(1.0), "{x} vs {y}");
        assert_eq!(x["is_greedy"], y["is_greedy"]);
    }
}
