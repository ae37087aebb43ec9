//! Reward model, DPO and PPO against PyTorch (tests/fixtures/generate_rlhf.py): one RM batch of
//! pairs and a ranked list of 4 (rewards, loss, every gradient, frozen layers, one AdamW step),
//! two DPO steps, one PPO update on fixed rollouts (log-probs, values, rewards, GAE, whitening,
//! losses, gradients, two optimizer steps), and the adaptive KL controller.

mod common;
// GRPO and RLOO updates (and a LoRA policy vs PEFT), in this binary to keep CI's links few
#[path = "rlhf/grpo_parity.rs"]
mod grpo_parity;

use common::*;
use okapi::data::{encode_group, load_rankings, PromptTemplate, SftEncoding, Tokenizer};
use okapi::model::{Checkpoint, Model};
use okapi::rlhf::ppo::kl::KlController;
use okapi::rlhf::ppo::{compute_advantages, gae::gae, gae::whiten, LossNorm, PpoBufs, PpoLossCfg, Rollout, WhitenScope};
use okapi::rlhf::trainer::Objective;
use okapi::rlhf::{AdamWConfig, Optimizer, RewardObjective};
use okapi::runtime::CpuBackend;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

fn groups(model_dir: &Path) -> Vec<okapi::data::PromptGroup> {
    let tok = Tokenizer::load(model_dir).unwrap();
    let (recs, stats) = load_rankings(&[fixture("ranking_data.json")], None).unwrap();
    assert_eq!(stats.kept, 3);
    let enc = SftEncoding { max_len: 768, mask_prompt: true, eos: 2 };
    recs.iter().map(|r| encode_group(&tok, &PromptTemplate::okapi(), r, &enc).unwrap().unwrap()).collect()
}

fn close(what: &str, got: f64, want: f64, rel: f64) {
    assert!((got - want).abs() <= rel * want.abs().max(1e-3), "{what}: {got} vs torch {want}");
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("okapi-rlhfparity-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn reward_model_rewards_loss_and_every_gradient_match_pytorch() {
    let dir = fixture("rm_llama_gqa");
    let model = Model::load_reward(CpuBackend, &dir.join("model"), 0).unwrap();
    assert!(model.score.is_some(), "the reward checkpoint's own head is reused");
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let r = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let gs = groups(&dir.join("model"));
    // same token rows as the reference (A.c, A.r, B.c, B.r, C.r0..r3)
    let ids: Vec<i64> = r.tensor("input_ids").unwrap().data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    let t = r.tensor("input_ids").unwrap().shape()[1];
    let rows: Vec<&Vec<u32>> = gs.iter().flat_map(|g| g.responses.iter().map(|e| &e.ids)).collect();
    for (i, row) in rows.iter().enumerate() {
        let want: Vec<u32> = ids[i * t..i * t + row.len()].iter().map(|&x| x as u32).collect();
        assert_eq!(&want, *row, "response {i} tokens");
    }
    let want_pairs = json(&dir.join("pairs.json"));
    let mut flat_pairs = vec![];
    let mut off = 0;
    for g in &gs {
        flat_pairs.extend(g.pairs.iter().map(|&(c, j)| serde_json::json!([off + c, off + j])));
        off += g.responses.len();
    }
    assert_eq!(Value::Array(flat_pairs), want_pairs, "pairs of the ranked list");
    // rewards
    let mut obj = RewardObjective::new(&model, gs.clone(), vec![], 3, 3, 0.0);
    let mut bufs = okapi::rlhf::reward::RewardBufs::new(&model, &gs, 3, 3, 0.0);
    let rewards: Vec<f32> = bufs.rewards(&model, &gs, 3).unwrap().concat();
    assert_close("rewards", &rewards, &f32s(&r, "rewards"), &Tol { name: "rewards", max_abs: 1e-4, rel_norm: 1e-5 });
    // loss and gradients of the batch
    let mut grads = model.new_grads(|_| true);
    let out = obj.step(&model, &[vec![0, 1, 2]], obj.normaliser(&[vec![0, 1, 2]]), &mut grads).unwrap();
    close("rm loss", out.loss, f32s(&r, "loss")[0] as f64, 1e-5);
    assert_eq!(out.extra["accuracy"].as_f64().unwrap(), f32s(&r, "accuracy")[0] as f64);
    let named = okapi::model::model::to_hf(&model.hf, &|i| grads.bufs[i].clone().unwrap());
    assert_eq!(named.len(), r.names().iter().filter(|n| n.starts_with("grad.")).count());
    for (name, _, g) in &named {
        assert_close(&format!("rm grad {name}"), g, &f32s(&r, &format!("grad.{name}")), &GRAD_F32);
    }
    // --unfrozen-layers 1: only the top block, the final norm and the head get gradients
    let frozen = json(&dir.join("frozen.json"));
    let mask = model.trainable_mask(Some(1)).unwrap();
    let mut grads = model.new_grads(|i| mask[i]);
    obj.step(&model, &[vec![0, 1, 2]], obj.normaliser(&[vec![0, 1, 2]]), &mut grads).unwrap();
    let trainable: Vec<String> = model.info.iter().zip(&mask).filter(|(_, m)| **m).map(|(p, _)| p.name.clone()).collect();
    let want_trainable: Vec<String> = frozen["trainable_names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(trainable.len(), want_trainable.len());
    for name in &want_trainable {
        let i = model.info.iter().position(|p| &p.name == name).unwrap_or_else(|| panic!("{name}"));
        assert_close(&format!("frozen-variant grad {name}"), grads.bufs[i].as_ref().unwrap(), &f32s(&r, &format!("grad_frozen.{name}")), &GRAD_F32);
    }
    for name in frozen["frozen_names"].as_array().unwrap() {
        let i = model.info.iter().position(|p| p.name == name.as_str().unwrap()).unwrap();
        assert!(grads.bufs[i].is_none(), "{name} is frozen: no gradient buffer");
    }
}

#[test]
fn reward_model_step_through_the_cli_matches_pytorch_and_transformers_loads_it() {
    let dir = fixture("rm_llama_gqa");
    let traj = json(&dir.join("trajectory.json"));
    let out = tmp("rm");
    run_cli(traj["argv"].as_array().unwrap(), &out, &[]);
    let m = metrics(&out);
    for k in ["loss", "grad_norm", "reward_margin"] {
        close(&format!("rm step {k}"), m[0][k].as_f64().unwrap(), traj[k].as_f64().unwrap(), 1e-4);
    }
    assert_eq!(m[0]["accuracy"], traj["accuracy"]);
    let saved: HashMap<String, Vec<f32>> = Checkpoint::load(&out).unwrap().tensors.into_iter().map(|(k, v)| (k, v.data)).collect();
    check_params("rm after one AdamW step", &saved, &dir.join("params_after.safetensors"), &traj["param_check"]);
    let cfg = json(&out.join("config.json"));
    assert_eq!(cfg["architectures"][0], "LlamaForSequenceClassification");
    assert_eq!(cfg["id2label"].as_object().unwrap().len(), 1);
    assert_eq!(cfg["pad_token_id"], 3, "a pad id distinct from EOS, so transformers reads the EOS");
    // `score` on the saved model gives rewards per record
    let o = Command::new(env!("CARGO_BIN_EXE_okapi-train")).args(["score", "--model"]).arg(&out).arg("--data").arg(fixture("ranking_data.json")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|l| l["rewards"].as_array().unwrap().len()).collect::<Vec<_>>(), vec![2, 2, 4]);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn dpo_two_steps_match_pytorch() {
    let dir = fixture("dpo_llama_gqa");
    let traj = json(&dir.join("trajectory.json"));
    // step-1 sequence log-probs and gradients through the library
    let model = Model::load(CpuBackend, &fixture("llama_gqa")).unwrap();
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let r = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let gs = groups(&fixture("llama_gqa"));
    let mut obj = okapi::rlhf::DpoObjective::new(&model, gs, vec![], 3, 3, 0.1).unwrap();
    let mut grads = model.new_grads(|_| true);
    let out = obj.step(&model, &[vec![0, 1, 2]], obj.normaliser(&[vec![0, 1, 2]]), &mut grads).unwrap();
    close("dpo step-1 loss", out.loss, traj["steps"][0]["loss"].as_f64().unwrap(), 1e-6);
    for (name, _, g) in okapi::model::model::to_hf(&model.hf, &|i| grads.bufs[i].clone().unwrap()) {
        assert_close(&format!("dpo grad {name}"), &g, &f32s(&r, &format!("grad.{name}")), &GRAD_F32);
    }
    // two steps through the CLI
    let out_dir = tmp("dpo");
    run_cli(traj["argv"].as_array().unwrap(), &out_dir, &[]);
    let m = metrics(&out_dir);
    for (got, want) in m.iter().zip(traj["steps"].as_array().unwrap()) {
        for k in ["loss", "grad_norm"] {
            close(&format!("dpo step {} {k}", want["step"]), got[k].as_f64().unwrap(), want[k].as_f64().unwrap(), 1e-4);
        }
        if want["step"] == 2 {
            for k in ["rewards_chosen", "rewards_rejected", "reward_margin"] {
                close(&format!("dpo step 2 {k}"), got[k].as_f64().unwrap(), want[k].as_f64().unwrap(), 1e-3);
            }
            assert_eq!(got["reward_accuracy"], want["reward_accuracy"]);
        }
    }
    let saved: HashMap<String, Vec<f32>> = Checkpoint::load(&out_dir).unwrap().tensors.into_iter().map(|(k, v)| (k, v.data)).collect();
    check_params("dpo after two steps", &saved, &dir.join("params_after.safetensors"), &traj["param_check"]);
    let _ = std::fs::remove_dir_all(&out_dir);
}

fn rows(st: &safetensors::SafeTensors, name: &str, lens: &[usize]) -> Vec<Vec<f32>> {
    let v = f32s(st, name);
    let w = st.tensor(name).unwrap().shape()[1];
    lens.iter().enumerate().map(|(i, &l)| v[i * w..i * w + l].to_vec()).collect()
}

/// A fixture's rollouts (prompt and response ids) with their reward under `score_key`.
fn fixed_rollouts(path: &std::path::Path, score_key: &str) -> Vec<Rollout> {
    let ids = |v: &Value| v.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    json(path).as_array().unwrap().iter().map(|x| Rollout { prompt: ids(&x["prompt"]), response: ids(&x["response"]), score: x[score_key].as_f64().unwrap() as f32, ..Default::default() }).collect()
}

#[test]
fn ppo_update_on_fixed_rollouts_matches_pytorch() {
    let dir = fixture("ppo_llama_gqa");
    let traj = json(&dir.join("trajectory.json"));
    let c = &traj["config"];
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let r = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut policy = Model::load(CpuBackend, &fixture("llama_gqa")).unwrap();
    let vh_bytes = std::fs::read(dir.join("value_head.safetensors")).unwrap();
    let vh = safetensors::SafeTensors::deserialize(&vh_bytes).unwrap();
    policy.add_value_head(&f32s(&vh, "v_head.weight"), f32s(&vh, "v_head.bias")[0]);
    let reference = Model::load(CpuBackend, &dir.join("reference")).unwrap();
    let mut rollouts = fixed_rollouts(&dir.join("rollouts.json"), "score");
    let lens: Vec<usize> = rollouts.iter().map(|r| r.response.len()).collect();
    let refs: Vec<&Rollout> = rollouts.iter().collect();
    let cap_t = rollouts.iter().map(|r| r.prompt.len() + r.response.len()).max().unwrap();
    let mut pb = PpoBufs::new(&policy, 4, cap_t, 3);
    let mut rb = PpoBufs::new(&reference, 4, cap_t, 3);
    let (pe, _, _) = pb.eval(&policy, &refs, false).unwrap();
    let (re, _, _) = rb.eval(&reference, &refs, false).unwrap();
    let tol = Tol { name: "ppo-f32", max_abs: 1e-4, rel_norm: 1e-5 };
    for (i, ro) in rollouts.iter_mut().enumerate() {
        ro.old_logprobs = pe.logprobs[i].clone();
        ro.old_values = pe.values[i].clone();
        ro.ref_logprobs = re.logprobs[i].clone();
    }
    for (name, got) in [("old_logprobs", &pe.logprobs), ("old_values", &pe.values), ("ref_logprobs", &re.logprobs)] {
        assert_close(name, &got.concat(), &rows(&r, name, &lens).concat(), &tol);
    }
    let mean_kl = compute_advantages(&mut rollouts, traj["beta"].as_f64().unwrap(), c["gamma"].as_f64().unwrap(), c["lam"].as_f64().unwrap(), c["score_clip"].as_f64().unwrap() as f32, WhitenScope::Batch);
    close("mean KL", mean_kl, traj["mean_kl"].as_f64().unwrap(), 1e-4);
    let as32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    for (name, got) in [("rewards", rollouts.iter().flat_map(|r| r.rewards.clone()).collect::<Vec<_>>()), ("returns", rollouts.iter().flat_map(|r| r.returns.clone()).collect()), ("whitened_advantages", rollouts.iter().flat_map(|r| r.advantages.clone()).collect())] {
        assert_close(name, &as32(got), &rows(&r, name, &lens).concat(), &tol);
    }
    // two optimizer steps on the one minibatch
    let lcfg = PpoLossCfg { cliprange: c["cliprange"].as_f64().unwrap(), cliprange_value: c["cliprange_value"].as_f64().unwrap(), vf_coef: c["vf_coef"].as_f64().unwrap(), norm: LossNorm::Token };
    let mut grads = policy.new_grads(|_| true);
    let mut opt = Optimizer::new(&policy, &grads, AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 });
    for (k, want) in traj["steps"].as_array().unwrap().iter().enumerate() {
        policy.zero_grads(&mut grads);
        let refs: Vec<&Rollout> = rollouts.iter().collect();
        let st = pb.minibatch(&policy, &refs, &lcfg, &mut grads).unwrap();
        let norm = opt.grad_norm(&policy, &grads);
        for (key, got) in [("vf_loss", st.vf_loss), ("loss", st.loss), ("entropy", st.entropy), ("grad_norm", norm)] {
            close(&format!("ppo step {} {key}", k + 1), got, want[key].as_f64().unwrap(), 1e-4);
        }
        // pg_loss is 0 in exact arithmetic at step 1 (ρ = 1, whitened advantages sum to 0)
        assert!((st.pg_loss - want["pg_loss"].as_f64().unwrap()).abs() <= 1e-5, "ppo step {} pg_loss {} vs {}", k + 1, st.pg_loss, want["pg_loss"]);
        assert!((st.approx_kl - want["approx_kl"].as_f64().unwrap()).abs() <= 1e-5);
        assert!((st.clipfrac - want["clipfrac"].as_f64().unwrap()).abs() <= 1e-6, "clip fraction");
        if k == 0 {
            let named = okapi::model::model::to_hf(&policy.hf, &|i| grads.bufs[i].clone().unwrap());
            for (name, _, g) in &named {
                assert_close(&format!("ppo grad {name}"), g, &f32s(&r, &format!("grad.{name}")), &GRAD_F32);
            }
            let vh = policy.value_head.unwrap();
            assert_close("ppo grad v_head.weight", grads.bufs[vh.w].as_ref().unwrap(), &f32s(&r, "grad.v_head.weight"), &GRAD_F32);
            assert_close("ppo grad v_head.bias", grads.bufs[vh.b.unwrap()].as_ref().unwrap(), &f32s(&r, "grad.v_head.bias"), &GRAD_F32);
        }
        opt.step(&mut policy, &grads, c["lr"].as_f64().unwrap() as f32, okapi::rlhf::clip_coef(norm, c["max_grad_norm"].as_f64().unwrap()));
    }
    let mut saved: HashMap<String, Vec<f32>> = okapi::model::model::to_hf(&policy.hf, &|i| policy.host_value(i)).into_iter().map(|(n, _, d)| (n, d)).collect();
    let vh = policy.value_head.unwrap();
    saved.insert("v_head.weight".into(), policy.host_value(vh.w));
    saved.insert("v_head.bias".into(), policy.host_value(vh.b.unwrap()));
    check_params("ppo after two steps", &saved, &dir.join("params_after.safetensors"), &traj["param_check"]);
}

#[test]
fn gae_whitening_and_the_kl_controller_match_trlx() {
    let g = json(&fixture("ppo_llama_gqa/gae.json"));
    let f = |v: &Value| -> Vec<Vec<f64>> { v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect() };
    let (rewards, values) = (f(&g["rewards"]), f(&g["values"]));
    let mut advs = vec![];
    for (i, (rw, v)) in rewards.iter().zip(&values).enumerate() {
        let v32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        let (a, ret) = gae(rw, &v32, g["gamma"].as_f64().unwrap(), g["lam"].as_f64().unwrap());
        for (x, y) in a.iter().zip(&f(&g["advantages"])[i]) {
            assert!((x - y).abs() < 1e-6, "advantage {x} vs {y}");
        }
        for (x, y) in ret.iter().zip(&f(&g["returns"])[i]) {
            assert!((x - y).abs() < 1e-6, "return {x} vs {y}");
        }
        advs.push(a);
    }
    whiten(&mut advs);
    for (x, y) in advs.iter().flatten().zip(f(&g["whitened_advantages"]).iter().flatten()) {
        assert!((x - y).abs() < 1e-6, "whitened {x} vs {y}");
    }
    let k = json(&fixture("ppo_llama_gqa/kl_controller.json"));
    let mut ctl = KlController { beta: k["init_kl_coef"].as_f64().unwrap(), target: Some(k["target"].as_f64().unwrap()), horizon: k["horizon"].as_f64().unwrap() };
    for (kl, want) in k["kls"].as_array().unwrap().iter().zip(k["betas"].as_array().unwrap()) {
        ctl.update(kl.as_f64().unwrap(), k["n_steps"].as_u64().unwrap() as usize);
        assert!((ctl.beta - want.as_f64().unwrap()).abs() < 1e-12, "β {} vs {}", ctl.beta, want);
    }
    let mut fixed = KlController { beta: 0.1, target: None, horizon: 10000.0 };
    fixed.update(100.0, 128);
    assert_eq!(fixed.beta, 0.1, "--kl-target none keeps β");
}
