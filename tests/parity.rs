//! Whole-model parity with transformers (fixtures from tests/fixtures/generate.py and, for Qwen2,
//! Qwen3, Mistral and Gemma 2, generate_arch.py): logits, loss and the gradient of every parameter;
//! KV-cache decoding equal to the full forward; `loglik` equal to transformers' values.

mod common;

use common::*;
use okapi::data::{read_records, LoglikRequest, Tokenizer};
use okapi::model::Model;
use okapi::rlhf::{lm_loss_and_grad, score_loglik, shift_labels, LossBufs};
use okapi::runtime::CpuBackend;

fn load(name: &str) -> Model<CpuBackend> {
    Model::load(CpuBackend, &fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn ids(t: &RefTensor) -> Vec<u32> {
    t.i64.iter().map(|&x| x as u32).collect()
}

/// Forward on the reference inputs: logits vs transformers.
fn check_logits(name: &str) {
    let model = load(name);
    let r = reference(name);
    let x = &r["input_ids"];
    let (b, t) = (x.shape[0], x.shape[1]);
    let mut acts = model.new_acts(b, t);
    model.forward(&mut acts, &ids(x), b, t).unwrap();
    let (max, rel) = assert_close(&format!("{name} logits"), &acts.logits[..b * t * model.cfg.vocab_size], &r["logits"].f32, &LOGITS_F32);
    println!("{name}: logits max abs error {max:.2e}, relative {rel:.2e}");
}

/// Loss and every parameter's gradient vs transformers' autograd.
fn check_loss_and_grads(name: &str) {
    let model = load(name);
    let r = reference(name);
    let x = &r["input_ids"];
    let (b, t) = (x.shape[0], x.shape[1]);
    let mut acts = model.new_acts(b, t);
    let mut scratch = model.new_scratch(b, t);
    let mut grads = model.new_grads(|_| true);
    let mut bufs = LossBufs::new(&model.be, b * t);
    model.forward(&mut acts, &ids(x), b, t).unwrap();
    let targets = shift_labels(&r["labels"].i64, b, t);
    let count = targets.iter().filter(|&&t| t != okapi::runtime::IGNORE_INDEX).count();
    let (sum, _) = lm_loss_and_grad(&model, &mut acts, &mut bufs, &targets, 1.0 / count as f32);
    let loss = sum / count as f64;
    let want = r["loss"].f32[0] as f64;
    let rel = (loss - want).abs() / want.abs();
    println!("{name}: loss {loss:.7} vs {want:.7} (relative error {rel:.1e}, {count} targets)");
    assert!(rel <= 1e-5, "{name}: loss {loss} vs transformers {want}: relative error {rel:.2e} > 1e-5");
    model.backward(&mut acts, &mut scratch, &mut grads);
    let named = okapi::model::model::to_hf(&model.hf, &|i| grads.bufs[i].clone().unwrap());
    let mut worst = (0f64, String::new());
    for (hf_name, shape, g) in &named {
        let want = r.get(&format!("grad.{hf_name}")).unwrap_or_else(|| panic!("{name}: no reference gradient for {hf_name}"));
        assert_eq!(&want.shape, shape, "{hf_name}: gradient shape");
        let (_, rel) = assert_close(&format!("{name} grad {hf_name}"), g, &want.f32, &GRAD_F32);
        if rel > worst.0 {
            worst = (rel, hf_name.clone());
        }
    }
    let n_ref = r.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(named.len(), n_ref, "{name}: every reference gradient is compared");
    println!("{name}: {} gradient tensors, worst relative error {:.2e} ({})", named.len(), worst.0, worst.1);
}

#[test]
fn llama_gqa_sharded_f32_logits() {
    check_logits("llama_gqa");
}

#[test]
fn llama_gqa_loss_and_every_gradient() {
    check_loss_and_grads("llama_gqa");
}

#[test]
fn bloom_non_power_of_two_heads_bf16_logits() {
    check_logits("bloom_6h");
}

#[test]
fn bloom_loss_and_every_gradient() {
    check_loss_and_grads("bloom_6h");
}

#[test]
fn llama3_rope_scaling_4x_config_keys_f16_logits() {
    check_logits("llama_rope_llama3");
}

#[test]
fn linear_rope_scaling_mqa_tied_logits() {
    check_logits("llama_rope_linear");
}

/// Prefill of right-padded prompts of different lengths, then token-by-token decoding with a
/// different number of new tokens per sequence: every real position's logits equal those of a
/// full forward over that sequence alone.
fn check_kv_cache(name: &str) {
    let r = reference(name);
    let all = ids(&r["input_ids"]);
    let t_full = r["input_ids"].shape[1];
    let seqs = vec![all[..t_full].to_vec(), all[t_full..t_full + 17].to_vec(), all[3..14].to_vec()];
    check_kv_cache_seqs(name, &seqs, &[7, 4, 9], 1);
}

/// [`check_kv_cache`] on given sequences and prompt lengths, decoding up to `chunk` tokens of a
/// sequence per step (the last step of a sequence may be shorter; a sequence that is done adds
/// nothing).
fn check_kv_cache_seqs(name: &str, seqs: &[Vec<u32>], prompt_lens: &[usize], chunk: usize) {
    let model = load(name);
    let v = model.cfg.vocab_size;
    let full: Vec<Vec<f32>> = seqs
        .iter()
        .map(|s| {
            let mut acts = model.new_acts(1, s.len());
            model.forward(&mut acts, s, 1, s.len()).unwrap();
            acts.logits[..s.len() * v].to_vec()
        })
        .collect();
    let b = seqs.len();
    let cap = seqs.iter().map(Vec::len).max().unwrap();
    let t_prompt = *prompt_lens.iter().max().unwrap();
    assert!(chunk <= t_prompt, "steps fit the cache's t_max");
    let mut cache = model.new_cache(b, cap, t_prompt).unwrap();
    // prefill, right-padded with token 0
    let mut tokens = vec![0u32; b * t_prompt];
    for (s, seq) in seqs.iter().enumerate() {
        tokens[s * t_prompt..s * t_prompt + prompt_lens[s]].copy_from_slice(&seq[..prompt_lens[s]]);
    }
    model.forward_cached(&mut cache, &tokens, t_prompt, prompt_lens).unwrap();
    let mut compared = 0;
    for s in 0..b {
        for i in 0..prompt_lens[s] {
            let got = &cache.logits[(s * t_prompt + i) * v..][..v];
            assert_close(&format!("{name} prefill seq {s} pos {i}"), got, &full[s][i * v..][..v], &SAME_F32);
            compared += 1;
        }
    }
    // up to `chunk` tokens per step, right-padded with token 0
    loop {
        let n_new: Vec<usize> = (0..b).map(|s| chunk.min(seqs[s].len() - cache.lens[s])).collect();
        if n_new.iter().all(|&n| n == 0) {
            break;
        }
        let mut step = vec![0u32; b * chunk];
        for s in 0..b {
            step[s * chunk..s * chunk + n_new[s]].copy_from_slice(&seqs[s][cache.lens[s]..cache.lens[s] + n_new[s]]);
        }
        let pos: Vec<usize> = cache.lens.clone();
        model.forward_cached(&mut cache, &step, chunk, &n_new).unwrap();
        for s in 0..b {
            for i in 0..n_new[s] {
                let p = pos[s] + i;
                let what = format!("{name} decode (steps of {chunk}) seq {s} pos {p}");
                assert_close(&what, &cache.logits[(s * chunk + i) * v..][..v], &full[s][p * v..][..v], &SAME_F32);
                compared += 1;
            }
        }
    }
    assert_eq!(compared, seqs.iter().map(Vec::len).sum::<usize>());
    println!("{name}: {compared} cached positions (decoding steps of {chunk}) equal to the full forward");
}

#[test]
fn llama_kv_cache_decoding_equals_full_forward() {
    check_kv_cache("llama_gqa");
}

#[test]
fn bloom_kv_cache_decoding_equals_full_forward() {
    check_kv_cache("bloom_6h");
}

#[test]
fn kv_cache_capacity_overflow_is_an_error() {
    let model = load("llama_gqa");
    let mut cache = model.new_cache(1, 4, 4).unwrap();
    model.forward_cached(&mut cache, &[5, 6, 7], 3, &[3]).unwrap();
    let err = model.forward_cached(&mut cache, &[8, 9], 2, &[2]).unwrap_err().to_string();
    assert!(err.contains("capacity 4"), "{err}");
}

fn check_loglik(name: &str, batch_size: usize) {
    let dir = fixture(name);
    let model = load(name);
    let tok = Tokenizer::load(&dir).unwrap();
    let reqs: Vec<LoglikRequest> = read_records(&dir.join("loglik.jsonl")).unwrap();
    #[derive(serde::Deserialize)]
    struct Expected {
        loglik: f64,
        is_greedy: bool,
    }
    let want: Vec<Expected> = read_records(&dir.join("loglik_expected.jsonl")).unwrap();
    let got = score_loglik(&model, &tok, &reqs, batch_size).unwrap();
    assert_eq!(got.len(), want.len());
    let mut greedy = 0;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let tol = 1e-4 * w.loglik.abs().max(1.0);
        assert!((g.loglik - w.loglik).abs() <= tol, "{name} request {i}: loglik {} vs transformers {}", g.loglik, w.loglik);
        assert_eq!(g.is_greedy, w.is_greedy, "{name} request {i}: is_greedy");
        greedy += g.is_greedy as usize;
    }
    assert!(greedy > 0 && greedy < got.len(), "the fixture covers both greedy and non-greedy requests");
}

#[test]
fn llama_loglik_matches_transformers_any_batch_size() {
    // batch 1: no padding at all; batch 3 and 16: padded batches must give the same values
    for bs in [1, 3, 16] {
        check_loglik("llama_gqa", bs);
    }
}

#[test]
fn bloom_loglik_matches_transformers_any_batch_size() {
    for bs in [1, 4] {
        check_loglik("bloom_6h", bs);
    }
}

// ---- Qwen2, Qwen3, Mistral, Gemma 2 (tests/fixtures/generate_arch.py) ----------------------

/// The checks llama_gqa gets, for one fixture of generate_arch.py.
macro_rules! arch_fixture {
    ($module:ident, $dir:literal, $what:literal) => {
        #[doc = $what]
        mod $module {
            use super::*;

            #[test]
            fn logits() {
                check_logits($dir);
            }

            #[test]
            fn loss_and_every_gradient() {
                check_loss_and_grads($dir);
            }

            #[test]
            fn kv_cache_decoding_equals_full_forward() {
                check_kv_cache($dir);
            }

            #[test]
            fn loglik_matches_transformers_any_batch_size() {
                for bs in [1, 4, 16] {
                    check_loglik($dir, bs);
                }
            }
        }
    };
}

arch_fixture!(qwen2_tied, "qwen2_tied", "Qwen2: GQA 6/2, q/k/v biases, tied head, theta 1e6, f32, 5.x config.");
arch_fixture!(qwen2_untied, "qwen2_untied", "Qwen2: MQA 5/1, untied, bf16, 4.x config naming a window that use_sliding_window leaves off.");
arch_fixture!(qwen3_gqa, "qwen3_gqa", "Qwen3: head_dim 12 != 40 / 4, per-head q_norm / k_norm before RoPE, no biases.");
arch_fixture!(mistral_swa, "mistral_swa", "Mistral: sliding window 7 on every layer, T = 24, head_dim 6.");
arch_fixture!(gemma2_swa, "gemma2_swa", "Gemma 2: window 5 on layers 0, 2 (full 1, 3), T = 24; soft caps 4 / 5 that bite; query_pre_attn_scalar 10 != head_dim 12; (1 + w) sandwich norms; x sqrt(32); tied.");

/// A window in the KV cache: one sequence of 48 tokens (both reference rows) decoded from a 3-token
/// prompt, i.e. 45 positions past the window, beside a prompt longer than the window; one token
/// per step, and steps of 4 and of 12 (more than the window: a step's queries read keys from the
/// cache and from the step itself).
fn check_kv_cache_far_past_the_window(name: &str) {
    let window = json(&fixture(name).join("config.json"))["sliding_window"].as_u64().unwrap() as usize;
    let all = ids(&reference(name)["input_ids"]);
    let seqs = vec![all.clone(), all[5..30].to_vec(), all[10..16].to_vec()];
    let prompt_lens = [3, 12, 6];
    assert!(seqs[0].len() - prompt_lens[0] > 6 * window && prompt_lens[1] > window && 12 > window);
    for chunk in [1, 4, 12] {
        check_kv_cache_seqs(name, &seqs, &prompt_lens, chunk);
    }
}

/// Mistral: a window of 7 on every layer.
#[test]
fn mistral_kv_cache_decoding_far_past_the_window() {
    check_kv_cache_far_past_the_window("mistral_swa");
}

/// Gemma 2: a window of 5 on the sliding layers (0, 2) between full layers (1, 3), which read every
/// cached position; soft-capped scores.
#[test]
fn gemma2_kv_cache_decoding_far_past_the_window() {
    check_kv_cache_far_past_the_window("gemma2_swa");
}
