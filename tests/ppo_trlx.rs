//! PPO against a reference written from trlx's code (tests/fixtures/generate_ppo_trlx.py,
//! trlx_ppo_ref.py): one iteration on 4 fixed rollouts, made in chunks of 2 and trained for one
//! PPO epoch over the minibatches [2, 0], [3, 1] — with trlx's choices (`--recipe okapi`: MLP
//! value head, per-minibatch whitening, per-sequence loss mean, trlx's KL controller, prompts
//! without BOS, left-truncated) and with okapi's defaults. Checked: prompt ids, log-probs,
//! values, rewards, advantages, returns, the whitened advantages of each minibatch, losses,
//! every gradient of the first minibatch, the parameters after the epoch, the KL fed to the
//! controller and β after it.

mod common;

use common::*;
use okapi::data::Tokenizer;
use okapi::model::Model;
use okapi::rlhf::ppo::kl::KlController;
use okapi::rlhf::ppo::{
    add_value_head, compute_advantages, controller_kl, encode_prompt, k3_sum, minibatch_rollouts, update_kl_controller, KlControl, LossNorm, PpoBufs, PpoConfig, PpoLossCfg, PromptEncoding, Rollout, ValueHeadKind, WhitenScope,
};
use okapi::rlhf::{AdamWConfig, Optimizer};
use okapi::runtime::CpuBackend;
use serde_json::Value;
use std::collections::HashMap;

const TOL: Tol = Tol { name: "ppo-trlx-f32", max_abs: 1e-4, rel_norm: 1e-5 };

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// The run's settings from its trajectory file, as `okapi-train ppo` flags would set them.
fn config(traj: &Value) -> PpoConfig {
    let (c, ch) = (&traj["config"], &traj["choices"]);
    let s = |k: &str| ch[k].as_str().unwrap().to_string();
    let mut cfg = PpoConfig::defaults();
    cfg.value_head = ValueHeadKind::parse(&s("value_head")).unwrap();
    cfg.whiten = WhitenScope::parse(&s("whiten")).unwrap();
    cfg.kl_control = KlControl::parse(&s("kl_control")).unwrap();
    cfg.prompt_encoding = PromptEncoding::parse(&s("prompts")).unwrap();
    cfg.loss = PpoLossCfg { cliprange: c["cliprange"].as_f64().unwrap(), cliprange_value: c["cliprange_value"].as_f64().unwrap(), vf_coef: c["vf_coef"].as_f64().unwrap(), norm: LossNorm::parse(&s("loss_norm")).unwrap() };
    cfg.kl = KlController { beta: c["beta"].as_f64().unwrap(), target: Some(c["kl_target"].as_f64().unwrap()), horizon: c["kl_horizon"].as_f64().unwrap() };
    (cfg.gamma, cfg.lam, cfg.reward_clip) = (c["gamma"].as_f64().unwrap(), c["lam"].as_f64().unwrap(), c["score_clip"].as_f64().unwrap() as f32);
    (cfg.chunk_size, cfg.minibatch, cfg.ppo_epochs, cfg.rollouts) = (2, 2, c["ppo_epochs"].as_u64().unwrap() as usize, 4);
    cfg
}

/// The policy with the run's value head (trlx's MLP from the fixture, or the linear one).
fn policy(cfg: &PpoConfig) -> Model<CpuBackend> {
    let mut policy = Model::load(CpuBackend, &fixture("llama_gqa")).unwrap();
    let (file, mlp) = match cfg.value_head {
        ValueHeadKind::Mlp => ("ppo_trlx_llama_gqa/value_head_mlp.safetensors", true),
        ValueHeadKind::Linear => ("ppo_llama_gqa/value_head.safetensors", false),
    };
    let bytes = std::fs::read(fixture(file)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    if mlp {
        policy.add_value_head_mlp(&f32s(&st, "v_head.0.weight"), &f32s(&st, "v_head.0.bias"), &f32s(&st, "v_head.2.weight"), f32s(&st, "v_head.2.bias")[0]);
    } else {
        policy.add_value_head(&f32s(&st, "v_head.weight"), f32s(&st, "v_head.bias")[0]);
    }
    policy
}

/// make_experience: log-probs, reference log-probs, values and the k3 sums, chunk by chunk.
fn experience(policy: &Model<CpuBackend>, reference: &Model<CpuBackend>, traj: &Value, cfg: &PpoConfig) -> Vec<Rollout> {
    let mut rollouts: Vec<Rollout> = traj["rollouts"].as_array().unwrap().iter().map(|r| Rollout { prompt: ids(&r["prompt"]), response: ids(&r["response"]), score: r["score"].as_f64().unwrap() as f32, ..Default::default() }).collect();
    let cap_t = rollouts.iter().map(|r| r.prompt.len() + r.response.len()).max().unwrap();
    let (mut pb, mut rb) = (PpoBufs::new(policy, 2, cap_t, 3), PpoBufs::new(reference, 2, cap_t, 3));
    for chunk in rollouts.chunks_mut(cfg.chunk_size) {
        let refs: Vec<&Rollout> = chunk.iter().collect();
        let (pe, _, _) = pb.eval_from(policy, &refs, false, true, None).unwrap();
        let (re, _, _) = rb.eval_from(reference, &refs, false, true, None).unwrap();
        for (k, r) in chunk.iter_mut().enumerate() {
            (r.old_logprobs, r.old_values, r.ref_logprobs, r.kl_k3) = (pe.logprobs[k].clone(), pe.values[k].clone(), re.logprobs[k].clone(), k3_sum(&pe, &re, k));
        }
    }
    rollouts
}

fn check_experience(name: &str, rollouts: &[Rollout], traj: &Value, beta: f64) {
    let want = traj["rollouts"].as_array().unwrap();
    let cat = |key: &str| want.iter().flat_map(|r| floats(&r[key])).collect::<Vec<f32>>();
    let got32 = |f: &dyn Fn(&Rollout) -> Vec<f32>| rollouts.iter().flat_map(f).collect::<Vec<f32>>();
    let as32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    assert_close(&format!("{name} old_logprobs"), &got32(&|r| r.old_logprobs.clone()), &cat("old_logprobs"), &TOL);
    assert_close(&format!("{name} ref_logprobs"), &got32(&|r| r.ref_logprobs.clone()), &cat("ref_logprobs"), &TOL);
    assert_close(&format!("{name} old_values"), &got32(&|r| r.old_values.clone()), &cat("old_values"), &TOL);
    assert_close(&format!("{name} rewards"), &got32(&|r| as32(&r.rewards)), &cat("rewards"), &TOL);
    assert_close(&format!("{name} advantages"), &got32(&|r| as32(&r.raw_advantages)), &cat("advantages"), &TOL);
    assert_close(&format!("{name} returns"), &got32(&|r| as32(&r.returns)), &cat("returns"), &TOL);
    for (r, w) in rollouts.iter().zip(want) {
        let k3 = w["kl_k3"].as_f64().unwrap();
        assert!((r.kl_k3 - k3).abs() <= 1e-4 * (1.0 + k3.abs()), "{name} k3 {} vs {k3}", r.kl_k3);
        // the score lands on the response's last token: its reward minus the KL penalty there
        let last = r.rewards.len() - 1;
        let penalty = -beta * (r.old_logprobs[last] as f64 - r.ref_logprobs[last] as f64);
        assert!((r.rewards[last] - penalty - (r.score as f64).clamp(-10.0, 10.0)).abs() < 1e-9);
    }
}

/// One PPO epoch over the fixture's minibatch order, as `Ppo::update` runs each minibatch.
fn epoch(name: &str, policy: &mut Model<CpuBackend>, rollouts: &[Rollout], traj: &Value, cfg: &PpoConfig) {
    let c = &traj["config"];
    let cap_t = rollouts.iter().map(|r| r.prompt.len() + r.response.len()).max().unwrap();
    let mut pb = PpoBufs::new(policy, 2, cap_t, 3);
    let mut grads = policy.new_grads(|_| true);
    let mut opt = Optimizer::new(policy, &grads, AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 });
    let grads_file = std::fs::read(fixture(&format!("ppo_trlx_llama_gqa/{name}_grads.safetensors"))).unwrap();
    let want_grads = safetensors::SafeTensors::deserialize(&grads_file).unwrap();
    for (k, (step, white)) in traj["steps"].as_array().unwrap().iter().zip(traj["whitened_per_minibatch"].as_array().unwrap()).enumerate() {
        let idx: Vec<usize> = step["minibatch"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        let mb = minibatch_rollouts(&idx.iter().map(|&i| &rollouts[i]).collect::<Vec<_>>(), cfg.whiten);
        let got: Vec<f32> = mb.iter().flat_map(|r| r.advantages.iter().map(|&x| x as f32)).collect();
        assert_close(&format!("{name} minibatch {k} whitened advantages"), &got, &white.as_array().unwrap().iter().flat_map(floats).collect::<Vec<_>>(), &TOL);
        policy.zero_grads(&mut grads);
        let st = pb.minibatch(policy, &mb.iter().collect::<Vec<_>>(), &cfg.loss, &mut grads).unwrap();
        let norm = opt.grad_norm(policy, &grads);
        for (key, got) in [("loss", st.loss), ("pg_loss", st.pg_loss), ("vf_loss", st.vf_loss), ("grad_norm", norm)] {
            let want = step[key].as_f64().unwrap();
            assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{name} minibatch {k} {key}: {got} vs torch {want}");
        }
        if k == 0 {
            for (i, info) in policy.info.iter().enumerate() {
                let want = f32s(&want_grads, &info.name);
                assert_close(&format!("{name} grad {}", info.name), grads.bufs[i].as_ref().unwrap(), &want, &GRAD_F32);
            }
        }
        opt.step(policy, &grads, c["lr"].as_f64().unwrap() as f32, okapi::rlhf::clip_coef(norm, c["max_grad_norm"].as_f64().unwrap()));
    }
    let saved: HashMap<String, Vec<f32>> = policy.info.iter().enumerate().map(|(i, p)| (p.name.clone(), policy.host_value(i))).collect();
    check_params(&format!("{name}: parameters after one PPO epoch"), &saved, &fixture(&format!("ppo_trlx_llama_gqa/{name}_params_after.safetensors")), &traj["param_check"]);
}

fn run(name: &str) {
    let traj = json(&fixture(&format!("ppo_trlx_llama_gqa/{name}.json")));
    let cfg = config(&traj);
    let mut policy = policy(&cfg);
    let reference = Model::load(CpuBackend, &fixture("ppo_llama_gqa/reference")).unwrap();
    let mut rollouts = experience(&policy, &reference, &traj, &cfg);
    compute_advantages(&mut rollouts, cfg.kl.beta, cfg.gamma, cfg.lam, cfg.reward_clip, cfg.whiten);
    check_experience(name, &rollouts, &traj, cfg.kl.beta);
    let kl_in = controller_kl(&rollouts, cfg.chunk_size, cfg.kl_control);
    let want = traj["controller_kl"].as_f64().unwrap();
    assert!((kl_in - want).abs() <= 1e-4 * (1.0 + want.abs()), "{name}: KL fed to the controller {kl_in} vs {want}");
    let mut kl = cfg.kl.clone();
    update_kl_controller(&mut kl, want, &cfg);
    let beta = traj["beta_after"].as_f64().unwrap();
    assert!((kl.beta - beta).abs() < 1e-12, "{name}: β after the iteration {} vs {beta}", kl.beta);
    assert_ne!(kl.beta, cfg.kl.beta, "{name}: the controller moved β");
    epoch(name, &mut policy, &rollouts, &traj, &cfg);
}

#[test]
fn trlx_choices_match_the_trlx_reference() {
    run("trlx");
}

#[test]
fn okapi_defaults_match_the_same_reference() {
    run("defaults");
}

#[test]
fn prompts_encode_as_trlx_and_okapi_do() {
    let tok = Tokenizer::load(&fixture("llama_gqa")).unwrap();
    let mut truncated = 0;
    for p in json(&fixture("ppo_trlx_llama_gqa/prompts.json")).as_array().unwrap() {
        for (enc, key) in [(PromptEncoding::Trlx, "trlx"), (PromptEncoding::BosSkip, "bos-skip")] {
            for limit in [136, 192] {
                let (got, cut) = encode_prompt(&tok, p["text"].as_str().unwrap(), enc, limit).unwrap();
                let want = &p[format!("{key}@{limit}")];
                assert_eq!(got, if want.is_null() { None } else { Some(ids(want)) }, "{key} at {limit}");
                truncated += usize::from(cut);
            }
        }
    }
    assert_eq!(truncated, 3, "three prompts are longer than 136 tokens without BOS");
}

#[test]
fn the_mlp_value_head_draws_pytorchs_default_init_and_bloom_trains_its_embedding_norm() {
    let mut policy = Model::load(CpuBackend, &fixture("llama_gqa")).unwrap();
    add_value_head(&mut policy, ValueHeadKind::Mlp, 7);
    let names: Vec<&str> = policy.value_head_params().map(|i| policy.info[i].name.as_str()).collect();
    assert_eq!(names, ["v_head.0.weight", "v_head.0.bias", "v_head.2.weight", "v_head.2.bias"]);
    let c = policy.cfg.hidden_size;
    let up = policy.host_value(policy.value_mlp.unwrap().w);
    assert_eq!(up.len(), 2 * c * c);
    // U(±1/√C): inside the bound, spread over it (variance bound²/3)
    let bound = 1.0 / (c as f64).sqrt();
    let var = up.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / up.len() as f64;
    assert!(up.iter().all(|&x| (x as f64).abs() <= bound) && (var / (bound * bound / 3.0) - 1.0).abs() < 0.05, "variance {var}");
    let mask = policy.trainable_mask(Some(1)).unwrap();
    assert!(policy.value_head_params().all(|i| mask[i]), "the value head trains under --unfrozen-layers");
    let bloom = Model::load(CpuBackend, &fixture("bloom_6h")).unwrap();
    let ln = bloom.emb_ln.unwrap();
    let (frozen, trlx) = (bloom.trainable_mask(Some(1)).unwrap(), bloom.trainable_mask_with(Some(1), true).unwrap());
    assert!(!frozen[ln.w] && trlx[ln.w] && trlx[ln.b.unwrap()] && !trlx[bloom.embed]);
    assert_eq!(frozen.iter().zip(&trlx).filter(|(a, b)| a != b).count(), 2, "only the embedding norm's weight and bias differ");
}
