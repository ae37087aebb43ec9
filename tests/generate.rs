//! Batched generation with the KV cache (`okapi::rlhf::generate`) against full forwards of the
//! same model, sampling reproducibility and stopping rules, and `okapi-train generate`.

use okapi::model::Model;
use okapi::rlhf::{generate, Generation, Sampling};
use okapi::runtime::CpuBackend;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

fn load(name: &str) -> Model<CpuBackend> {
    Model::load(CpuBackend, &fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Three prompts of different lengths (ids from the non-special part of the vocabulary).
fn prompts() -> Vec<Vec<u32>> {
    let mut x = 12345u64;
    let mut next = move || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        4 + ((x >> 33) % 396) as u32
    };
    [5usize, 13, 9].iter().map(|&n| (0..n).map(|_| next()).collect()).collect()
}

/// Logits (V) of the last position of a full forward over `seq`.
fn full_last_logits(model: &Model<CpuBackend>, seq: &[u32]) -> Vec<f32> {
    let v = model.cfg.vocab_size;
    let mut acts = model.new_acts(1, seq.len());
    model.forward(&mut acts, seq, 1, seq.len()).unwrap();
    acts.logits[(seq.len() - 1) * v..seq.len() * v].to_vec()
}

fn log_softmax(x: &[f32], i: usize) -> f64 {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let s: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
    x[i] as f64 - m - s.ln()
}

fn first_argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Every generated token's logprob equals log_softmax of the full forward over prompt + the
/// tokens before it; with `greedy`, every token is that forward's argmax. Returns the count.
fn check_against_full_forward(name: &str, model: &Model<CpuBackend>, prompts: &[Vec<u32>], gens: &[Generation], greedy: bool) -> usize {
    let mut n = 0;
    for (s, (p, g)) in prompts.iter().zip(gens).enumerate() {
        assert_eq!(g.tokens.len(), g.logprobs.len());
        for k in 0..g.tokens.len() {
            let mut seq = p.clone();
            seq.extend_from_slice(&g.tokens[..k]);
            let logits = full_last_logits(model, &seq);
            let tok = g.tokens[k] as usize;
            if greedy {
                let want = first_argmax(&logits);
                assert_eq!(tok, want, "{name} seq {s} step {k}: greedy token {tok} vs full-forward argmax {want} (logits {} vs {})", logits[tok], logits[want]);
            }
            let want = log_softmax(&logits, tok);
            let got = g.logprobs[k] as f64;
            assert!((got - want).abs() <= 1e-4, "{name} seq {s} step {k}: logprob {got} vs full forward {want}");
            n += 1;
        }
    }
    n
}

fn check_greedy(name: &str) {
    let model = load(name);
    let p = prompts();
    let gens = generate(&model, &p, &Sampling::greedy(12), None).unwrap();
    for g in &gens {
        assert_eq!(g.tokens.len(), 12, "{name}: no EOS given, every sequence runs to max_new_tokens");
        assert!(!g.finished);
    }
    let n = check_against_full_forward(name, &model, &p, &gens, true);
    println!("{name}: {n} greedy tokens equal to the full forward's argmax, logprobs within 1e-4");
}

#[test]
fn llama_greedy_equals_full_forward_argmax() {
    check_greedy("llama_gqa");
}

#[test]
fn bloom_greedy_equals_full_forward_argmax() {
    check_greedy("bloom_6h");
}

/// Sampled tokens carry the policy's log-probability (temperature 1, unfiltered), whatever the
/// sampling settings.
#[test]
fn sampled_logprobs_are_the_raw_policys() {
    for name in ["llama_gqa", "bloom_6h"] {
        let model = load(name);
        let p = prompts();
        let s = Sampling { temperature: 1.5, top_k: 50, top_p: 0.9, max_new_tokens: 8, seed: 3 };
        let gens = generate(&model, &p, &s, None).unwrap();
        let n = check_against_full_forward(name, &model, &p, &gens, false);
        println!("{name}: {n} sampled logprobs equal to the full forward's log_softmax");
    }
}

#[test]
fn same_seed_same_samples_different_seed_different() {
    let model = load("llama_gqa");
    let p = prompts();
    let s = |seed| Sampling { temperature: 1.5, top_k: 0, top_p: 1.0, max_new_tokens: 12, seed };
    let a = generate(&model, &p, &s(7), None).unwrap();
    let b = generate(&model, &p, &s(7), None).unwrap();
    let c = generate(&model, &p, &s(8), None).unwrap();
    assert_eq!(a, b, "same seed → same samples and logprobs");
    assert_ne!(a.iter().map(|g| &g.tokens).collect::<Vec<_>>(), c.iter().map(|g| &g.tokens).collect::<Vec<_>>(), "different seed → different samples");
    let greedy = generate(&model, &p, &Sampling::greedy(12), None).unwrap();
    assert_ne!(a, greedy, "temperature 1.5 samples differ from greedy");
}

#[test]
fn top_k_1_equals_greedy() {
    for name in ["llama_gqa", "bloom_6h"] {
        let model = load(name);
        let p = prompts();
        let greedy = generate(&model, &p, &Sampling::greedy(10), None).unwrap();
        let k1 = generate(&model, &p, &Sampling { temperature: 1.5, top_k: 1, top_p: 0.9, max_new_tokens: 10, seed: 99 }, None).unwrap();
        assert_eq!(k1, greedy, "{name}");
    }
}

/// With `eos` = the token greedy decoding gives sequence 0 at step 3, every sequence is its
/// greedy continuation cut after the first occurrence of that token (finished), or in full.
#[test]
fn eos_stops_a_sequence_while_others_continue() {
    let model = load("llama_gqa");
    let p = prompts();
    let max_new = 12;
    let greedy = generate(&model, &p, &Sampling::greedy(max_new), None).unwrap();
    // the step-3 token of sequence 0, or a later one if that also occurs in every other sequence
    let eos = greedy[0].tokens[2..]
        .iter()
        .copied()
        .find(|t| greedy[1..].iter().any(|g| !g.tokens.contains(t)))
        .expect("a token of sequence 0 absent from another sequence");
    let got = generate(&model, &p, &Sampling::greedy(max_new), Some(eos)).unwrap();
    for (s, (g, full)) in got.iter().zip(&greedy).enumerate() {
        match full.tokens.iter().position(|&t| t == eos) {
            Some(at) => {
                assert_eq!(g.tokens, full.tokens[..=at], "seq {s}: ends with EOS, included");
                assert_eq!(g.logprobs, full.logprobs[..=at], "seq {s}");
                assert!(g.finished, "seq {s}: finished");
            }
            None => {
                assert_eq!(g, full, "seq {s}: continues to max_new_tokens");
                assert!(!g.finished);
            }
        }
    }
    assert!(got[0].finished && got[0].tokens.len() <= 3 || greedy[0].tokens[2] != eos);
    assert!(got.iter().any(|g| !g.finished && g.tokens.len() == max_new), "another sequence continues");
}

#[test]
fn max_new_tokens_and_position_limit() {
    let model = load("llama_gqa");
    let p = prompts();
    for max_new in [0, 1, 4] {
        let gens = generate(&model, &p, &Sampling { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: max_new, seed: 1 }, None).unwrap();
        assert_eq!(gens.len(), 3);
        assert!(gens.iter().all(|g| g.tokens.len() == max_new && g.logprobs.len() == max_new && !g.finished), "max_new_tokens {max_new}");
    }
    // max_position_embeddings is 64: a 60-token prompt gets 4 new tokens, a short one all 10
    let mp = model.cfg.max_positions.unwrap();
    assert_eq!(mp, 64);
    let long: Vec<u32> = (0..60).map(|i| 4 + (i * 7 % 396) as u32).collect();
    let gens = generate(&model, &[long.clone(), p[0].clone()], &Sampling::greedy(10), None).unwrap();
    assert_eq!(gens[0].tokens.len(), 4);
    assert!(!gens[0].finished);
    assert_eq!(gens[1].tokens.len(), 10);
    check_against_full_forward("llama_gqa near the position limit", &model, &[long.clone(), p[0].clone()], &gens, true);
    // no room at all: an error naming the prompt
    let full: Vec<u32> = (0..64).map(|i| 4 + i as u32).collect();
    let err = generate(&model, &[p[0].clone(), full], &Sampling::greedy(4), None).unwrap_err().to_string();
    assert!(err.contains("prompt 1") && err.contains("64"), "{err}");
    // BLOOM (ALiBi) has no position limit
    let bloom = load("bloom_6h");
    assert!(bloom.cfg.max_positions.is_none());
    let long: Vec<u32> = (0..80).map(|i| 4 + (i * 7 % 396) as u32).collect();
    let gens = generate(&bloom, &[long], &Sampling::greedy(6), None).unwrap();
    assert_eq!(gens[0].tokens.len(), 6);
}

#[test]
fn bad_inputs_are_errors() {
    let model = load("llama_gqa");
    let err = generate(&model, &[vec![5, 6], vec![]], &Sampling::greedy(4), None).unwrap_err().to_string();
    assert!(err.contains("prompt 1 is empty"), "{err}");
    let err = generate(&model, &[vec![5, 400]], &Sampling::greedy(4), None).unwrap_err().to_string();
    assert!(err.contains("400"), "{err}");
    for (s, what) in [
        (Sampling { top_p: 0.0, ..Sampling::greedy(4) }, "--top-p"),
        (Sampling { top_p: 1.5, ..Sampling::greedy(4) }, "--top-p"),
        (Sampling { temperature: -1.0, ..Sampling::greedy(4) }, "temperature"),
    ] {
        let err = generate(&model, &[vec![5, 6]], &s, None).unwrap_err().to_string();
        assert!(err.contains(what), "{err}");
    }
    assert!(generate(&model, &[], &Sampling::greedy(4), None).unwrap().is_empty());
}

// ---- okapi-train generate -------------------------------------------------------------------

fn okapi_train(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_okapi-train")).args(args).output().unwrap()
}

#[test]
fn cli_generate_prints_the_response() {
    let model = fixture("llama_gqa");
    let model = model.to_str().unwrap();
    let out = okapi_train(&["generate", "--model", model, "--instruction", "Say hi", "--temperature", "0", "--max-new-tokens", "8"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "exit {:?}\nstderr: {stderr}", out.status);
    assert!(stdout.ends_with('\n'), "stdout: {stdout:?}");
    assert!(!stdout.contains("### Response"), "only the response is printed: {stdout:?}");
    // greedy is deterministic, and sampling with a seed too
    let again = okapi_train(&["generate", "--model", model, "--instruction", "Say hi", "--temperature", "0", "--max-new-tokens", "8"]);
    assert_eq!(again.stdout, out.stdout);
    let with_input = okapi_train(&["generate", "--model", model, "--instruction", "Translate", "--input", "hi", "--max-new-tokens", "4", "--seed", "5"]);
    assert!(with_input.status.success(), "{}", String::from_utf8_lossy(&with_input.stderr));
}

#[test]
fn cli_generate_bad_top_p_is_one_line_error() {
    let model = fixture("llama_gqa");
    let model = model.to_str().unwrap();
    for bad in ["1.5", "0", "-0.2"] {
        let out = okapi_train(&["generate", "--model", model, "--instruction", "Say hi", &format!("--top-p={bad}")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--top-p {bad}: exit {:?}", out.status);
        assert_eq!(stderr.lines().count(), 1, "--top-p {bad}: stderr {stderr:?}");
        assert!(stderr.starts_with("error: ") && stderr.contains("--top-p") && !stderr.contains("internal error"), "--top-p {bad}: {stderr:?}");
        assert!(out.stdout.is_empty());
    }
    let out = okapi_train(&["generate", "--model", model, "--instruction", "x", "--temperature=-1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.lines().count() == 1 && stderr.contains("--temperature"), "{stderr:?}");
}
