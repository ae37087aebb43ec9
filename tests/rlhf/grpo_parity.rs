//! GRPO and RLOO against PyTorch (tests/fixtures/generate_grpo.py, TRL GRPOTrainer's formulas):
//! one optimizer step on 6 fixed completions (2 prompts × G = 3) whose old log-probs are the
//! policy's plus a fixed perturbation, so tokens clip low, high, and fall outside the range with
//! the gradient flowing. Cases: (a) GRPO, scale group, loss grpo, β 0.04 and (b) RLOO, loss
//! bnpo, β 0.1 in full (advantages, per-token losses, loss, KL, clip metrics, entropy, every
//! gradient, grad norm, parameters after AdamW); (c) GRPO scale batch + bnpo, scale none +
//! dr_grpo, β = 0 (no reference) as small records; (d) case (a) with only the top block, the
//! final norm and the head training; (e) case (a)'s settings on a LoRA policy (PEFT adapter r 2
//! on q_proj, v_proj, B ≠ 0) whose reference is its base with the adapters off, against PEFT:
//! reference log-probs, losses, metrics, every lora_A / lora_B gradient, grad norm, the adapters
//! after AdamW, and the frozen base unchanged.

use crate::common::*;
use okapi::model::{Grads, Model};
use okapi::rlhf::ppo::group::{group_spread, grpo_advantages, rloo_advantages, set_group_advantages, Algo, GroupLossCfg, GroupStats, LossType, ScaleRewards};
use okapi::rlhf::ppo::update::MinibatchSize;
use okapi::rlhf::ppo::{PpoBufs, Rollout};
use okapi::rlhf::{AdamWConfig, Optimizer};
use okapi::runtime::CpuBackend;
use serde_json::Value;
use std::collections::HashMap;

const PAD: u32 = 3;
/// case (e): GRPO with a LoRA policy, the reference its base with the adapters off
const LORA_CASE: &str = "grpo_lora";
/// log-probs, entropies: f32 forwards of two implementations
const LOGPROBS: Tol = Tol { name: "logprobs-f32", max_abs: 1e-4, rel_norm: 1e-5 };
/// per-token losses (|A| ≤ 3 times ρ < 1.65 times the log-prob differences)
const TOKEN_LOSS: Tol = Tol { name: "token-loss-f32", max_abs: 1e-4, rel_norm: 1e-5 };

fn dir() -> std::path::PathBuf {
    fixture("grpo_llama_gqa")
}

fn rows(st: &safetensors::SafeTensors, name: &str, lens: &[usize]) -> Vec<Vec<f32>> {
    let v = f32s(st, name);
    let w = st.tensor(name).unwrap().shape()[1];
    lens.iter().enumerate().map(|(i, &l)| v[i * w..i * w + l].to_vec()).collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[track_caller]
fn close_abs(what: &str, got: f64, want: f64, tol: f64) -> f64 {
    let e = (got - want).abs();
    assert!(e <= tol, "{what}: {got} vs torch {want} (|Δ| {e:.2e} > {tol:.0e})");
    e
}

#[track_caller]
fn close_rel(what: &str, got: f64, want: f64, rel: f64) -> f64 {
    let e = (got - want).abs() / want.abs().max(1e-3);
    assert!(e <= rel, "{what}: {got} vs torch {want} (relative {e:.2e} > {rel:.0e})");
    e
}

fn scale_of(v: &Value) -> ScaleRewards {
    v.as_str().map(|s| ScaleRewards::parse(s).unwrap()).unwrap_or(ScaleRewards::Group)
}

fn algo_of(case: &Value) -> Algo {
    match case["algo"].as_str().unwrap() {
        "grpo" => Algo::Grpo,
        "rloo" => Algo::Rloo,
        other => panic!("algo {other}"),
    }
}

/// The policy, the fixture's completions as rollouts (old log-probs from the fixture, reference
/// log-probs computed by okapi on `ppo_llama_gqa/reference` and checked against torch's), and
/// the policy's own log-probs / entropies checked the same way. With `lora` (case grpo_lora):
/// the policy carries the fixture's PEFT adapter and the reference is its base with the
/// adapters off (`--reference hydra` with LoRA), the tensors are `grpo_lora.*`.
struct Setup {
    traj: Value,
    reference: Vec<u8>,
    policy: Model<CpuBackend>,
    rollouts: Vec<Rollout>,
    lens: Vec<usize>,
    /// okapi's log-probs of the completions under the KL reference
    ref_lp: Vec<Vec<f32>>,
    bufs: PpoBufs<CpuBackend>,
}

fn setup() -> Setup {
    setup_with(false)
}

fn setup_with(lora: bool) -> Setup {
    let traj = json(&dir().join("trajectory.json"));
    let reference = std::fs::read(dir().join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&reference).unwrap();
    let mut policy = Model::load(CpuBackend, &fixture("llama_gqa")).unwrap();
    let pre = if lora { format!("{LORA_CASE}.") } else { String::new() };
    if lora {
        policy.load_adapter(&dir().join(traj["cases"][LORA_CASE]["adapter_init"].as_str().unwrap())).unwrap();
    }
    let mut rollouts = super::fixed_rollouts(&dir().join("completions.json"), "reward");
    let lens: Vec<usize> = rollouts.iter().map(|r| r.response.len()).collect();
    assert_eq!(lens.iter().map(|&l| l as u64).collect::<Vec<_>>(), traj["completion_lens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect::<Vec<_>>());
    let cap_t = rollouts.iter().map(|r| r.prompt.len() + r.response.len()).max().unwrap();
    // the batch okapi builds is torch's: same ids, right-padded with 3
    let ids: Vec<i64> = st.tensor("input_ids").unwrap().data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(st.tensor("input_ids").unwrap().shape(), &[rollouts.len(), cap_t]);
    for (i, r) in rollouts.iter().enumerate() {
        let want: Vec<i64> = r.prompt.iter().chain(&r.response).map(|&x| x as i64).chain(std::iter::repeat(PAD as i64)).take(cap_t).collect();
        assert_eq!(&ids[i * cap_t..(i + 1) * cap_t], &want[..], "completion {i} ids");
    }
    let mut bufs = PpoBufs::new(&policy, rollouts.len(), cap_t, PAD);
    let refs: Vec<&Rollout> = rollouts.iter().collect();
    let (pe, _, _) = bufs.eval(&policy, &refs, true).unwrap();
    let re = if lora {
        // as the RL loop's evaluation does it (run.rs `evaluate_chunk`): the policy's base
        let mut rb = PpoBufs::new(&policy, rollouts.len(), cap_t, PAD);
        let re = policy.with_adapters_off(|base| rb.eval(base, &refs, false)).unwrap().0;
        assert!(!policy.lora_disabled, "the adapters are on again");
        // the base is case (a)'s policy
        assert_close("adapters off vs the base's logprobs", &re.logprobs.concat(), &rows(&st, "logprobs", &lens).concat(), &LOGPROBS);
        re
    } else {
        let ref_model = Model::load(CpuBackend, &fixture("ppo_llama_gqa/reference")).unwrap();
        let mut rb = PpoBufs::new(&ref_model, rollouts.len(), cap_t, PAD);
        rb.eval(&ref_model, &refs, false).unwrap().0
    };
    let lp = assert_close(&format!("{pre}policy logprobs"), &pe.logprobs.concat(), &rows(&st, &format!("{pre}logprobs"), &lens).concat(), &LOGPROBS);
    let rl = assert_close(&format!("{pre}ref_logprobs"), &re.logprobs.concat(), &rows(&st, &format!("{pre}ref_logprobs"), &lens).concat(), &LOGPROBS);
    let ent: Vec<f32> = pe.entropy.concat().into_iter().map(|x| x as f32).collect();
    let en = assert_close(&format!("{pre}entropy"), &ent, &rows(&st, &format!("{pre}entropy"), &lens).concat(), &LOGPROBS);
    eprintln!("{}max |Δ| logprobs {:.1e}, ref_logprobs {:.1e}, entropy {:.1e}", if lora { "grpo_lora: " } else { "" }, lp.0, rl.0, en.0);
    if lora {
        // the adapters move the policy off its reference: the KL term is not zero
        assert!(errors(&pe.logprobs.concat(), &re.logprobs.concat()).0 > 0.5, "the adapters must change the log-probs");
    }
    let old = rows(&st, &format!("{pre}old_logprobs"), &lens);
    for (i, r) in rollouts.iter_mut().enumerate() {
        r.old_logprobs = old[i].clone();
    }
    Setup { traj, reference, policy, rollouts, lens, ref_lp: re.logprobs, bufs }
}

fn cfg_of(traj: &Value, case: &Value) -> GroupLossCfg {
    let cfg = GroupLossCfg {
        epsilon: traj["epsilon"].as_f64().unwrap(),
        beta: case["beta"].as_f64().unwrap(),
        loss_type: LossType::parse(case["loss_type"].as_str().unwrap()).unwrap(),
        max_completion_len: traj["max_completion_length"].as_u64().unwrap() as usize,
    };
    cfg.validate().unwrap();
    cfg
}

/// Sets the case's advantages (from the scores, over groups of G) and runs the one optimizer
/// step's loss and gradient over all 6 completions; checks advantages, per-token losses, loss
/// and metrics against the fixture. Returns the stats.
fn loss_and_grads(s: &mut Setup, name: &str, grads: &mut Grads<CpuBackend>) -> (GroupStats, [f64; 6]) {
    let case = &s.traj["cases"][name];
    let g = s.traj["group_size"].as_u64().unwrap() as usize;
    let (algo, scale) = (algo_of(case), scale_of(&case["scale_rewards"]));
    set_group_advantages(&mut s.rollouts, g, algo, scale);
    // β = 0: TRL loads no reference, and neither does okapi
    let with_ref = case["beta"].as_f64().unwrap() != 0.0;
    for (r, lp) in s.rollouts.iter_mut().zip(&s.ref_lp) {
        r.ref_logprobs = if with_ref { lp.clone() } else { vec![] };
    }
    let want_adv = f64s(&case["advantages"]);
    let mut d = [0f64; 6];
    for (i, (r, &w)) in s.rollouts.iter().zip(&want_adv).enumerate() {
        assert_eq!(r.advantages.len(), r.response.len());
        assert!(r.advantages.iter().all(|&a| a == r.advantages[0]), "{name}: one advantage per completion");
        d[0] = d[0].max(close_abs(&format!("{name} advantage {i}"), r.advantages[0], w, 1e-6));
    }
    let cfg = cfg_of(&s.traj, case);
    let refs: Vec<&Rollout> = s.rollouts.iter().collect();
    let (st, per_token) = s.bufs.group_minibatch_share(&s.policy, &refs, MinibatchSize::of(&refs), &cfg, grads).unwrap();
    assert_eq!(st.tokens, s.lens.iter().sum::<usize>());
    let want_ptl: Vec<f32> = case["per_token_loss"].as_array().unwrap().iter().flat_map(f64s).map(|x| x as f32).collect();
    assert_eq!(per_token.iter().map(Vec::len).collect::<Vec<_>>(), s.lens, "{name}: per-token losses per completion");
    let got_ptl: Vec<f32> = per_token.concat().into_iter().map(|x| x as f32).collect();
    d[1] = assert_close(&format!("{name} per-token losses"), &got_ptl, &want_ptl, &TOKEN_LOSS).0;
    d[2] = close_abs(&format!("{name} loss"), st.loss, case["loss"].as_f64().unwrap(), 1e-5);
    d[3] = match case["kl"].as_f64() {
        Some(kl) => close_abs(&format!("{name} kl"), st.kl, kl, 1e-5),
        None => {
            assert_eq!(st.kl, 0.0, "{name}: no reference, no KL");
            0.0
        }
    };
    // the clip metrics are fractions of the 31 tokens: equal to rounding
    for (k, got) in [("clip_low", st.clip_low), ("clip_high", st.clip_high), ("clip_region", st.clip_region)] {
        close_abs(&format!("{name} {k}"), got, case[k].as_f64().unwrap(), 1e-12);
    }
    d[4] = close_abs(&format!("{name} entropy"), st.entropy, case["entropy"].as_f64().unwrap(), 1e-5);
    eprintln!("{name}: max |Δ| advantages {:.1e}, per-token loss {:.1e}, loss {:.1e}, kl {:.1e}, entropy {:.1e}", d[0], d[1], d[2], d[3], d[4]);
    (st, d)
}

fn hf_grads(policy: &Model<CpuBackend>, grads: &Grads<CpuBackend>) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    okapi::model::model::to_hf(&policy.hf, &|i| grads.bufs[i].clone().unwrap())
}

/// Cases (a), (b) and (e): also every gradient, the grad norm, and the parameters after one
/// AdamW step (with LoRA: the adapters' under PEFT's names, and the frozen base unchanged).
fn full_case(name: &str) {
    let lora = name == LORA_CASE;
    let mut s = setup_with(lora);
    let case = s.traj["cases"][name].clone();
    // what trains: everything, or with adapters only the adapters
    let mask = s.policy.trainable_mask(None).unwrap();
    let adapter = s.policy.lora_params();
    assert_eq!(adapter.len(), if lora { 2 * 2 * 2 } else { 0 }, "A and B of q_proj and v_proj in both layers");
    for (i, p) in s.policy.info.iter().enumerate() {
        assert_eq!(mask[i], !lora || adapter.contains(&i), "{name}: {} trains", p.name);
    }
    let mut grads = s.policy.new_grads(|i| mask[i]);
    loss_and_grads(&mut s, name, &mut grads);
    let bytes = std::mem::take(&mut s.reference);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let named = if lora { s.policy.lora_tensors(&|i| grads.bufs[i].clone().unwrap()) } else { hf_grads(&s.policy, &grads) };
    assert_eq!(named.len(), st.names().iter().filter(|n| n.starts_with(&format!("{name}.grad."))).count());
    let mut worst = 0f64;
    for (n, _, g) in &named {
        worst = worst.max(assert_close(&format!("{name} grad {n}"), g, &f32s(&st, &format!("{name}.grad.{n}")), &GRAD_F32).1);
    }
    let opt_cfg = &s.traj["optimizer"];
    let betas = f64s(&opt_cfg["betas"]);
    let mut opt = Optimizer::new(&s.policy, &grads, AdamWConfig { beta1: betas[0] as f32, beta2: betas[1] as f32, eps: opt_cfg["eps"].as_f64().unwrap() as f32, weight_decay: case["weight_decay"].as_f64().unwrap() as f32 });
    let norm = opt.grad_norm(&s.policy, &grads);
    let e = close_rel(&format!("{name} grad_norm"), norm, case["grad_norm"].as_f64().unwrap(), 1e-5);
    eprintln!("{name}: gradients worst relative norm error {worst:.1e}, grad norm relative {e:.1e}");
    let base_before = lora.then(|| okapi::model::model::to_hf(&s.policy.hf, &|i| s.policy.host_value(i)));
    opt.step(&mut s.policy, &grads, opt_cfg["lr"].as_f64().unwrap() as f32, okapi::rlhf::clip_coef(norm, opt_cfg["max_grad_norm"].as_f64().unwrap()));
    let saved: HashMap<String, Vec<f32>> = if let Some(before) = base_before {
        // the base is frozen: not one weight moved
        let after = okapi::model::model::to_hf(&s.policy.hf, &|i| s.policy.host_value(i));
        assert_eq!(after.len(), before.len());
        for ((n, _, a), (_, _, b)) in after.iter().zip(&before) {
            assert!(a == b, "{name}: the frozen base weight {n} changed");
        }
        s.policy.lora_tensors(&|i| s.policy.host_value(i))
    } else {
        okapi::model::model::to_hf(&s.policy.hf, &|i| s.policy.host_value(i))
    }
    .into_iter()
    .map(|(n, _, d)| (n, d))
    .collect();
    let want_path = dir().join(case["params_after"].as_str().unwrap());
    check_params(&format!("{name} after one AdamW step"), &saved, &want_path, &case["param_check"]);
    let want_bytes = std::fs::read(&want_path).unwrap();
    let want = safetensors::SafeTensors::deserialize(&want_bytes).unwrap();
    // check_params' 1e-4 cannot see the weight decay (lr·wd·|p| ≈ 6e-6 on matrices, 5e-5 on
    // norms, were they decayed): the bulk of each tensor must agree far tighter
    let (mut worst, mut worst_p99) = (0f64, 0f64);
    for n in want.names() {
        let mut d: Vec<f64> = saved[n].iter().zip(&f32s(&want, n)).map(|(a, b)| (*a as f64 - *b as f64).abs()).collect();
        d.sort_by(f64::total_cmp);
        let p99 = d[d.len() * 99 / 100];
        assert!(p99 <= 1e-6, "{name} after one AdamW step: {n}: 99th percentile |Δ| {p99:.1e} > 1e-6");
        (worst, worst_p99) = (worst.max(d[d.len() - 1]), worst_p99.max(p99));
    }
    eprintln!("{name}: parameters after the step ({} tensors): max |Δ| {worst:.1e}, worst 99th percentile {worst_p99:.1e}", want.names().len());
}

#[test]
fn advantages_and_group_spread_match_pytorch() {
    let traj = json(&dir().join("trajectory.json"));
    let rewards = f64s(&traj["rewards"]);
    let g = traj["group_size"].as_u64().unwrap() as usize;
    for (name, case) in traj["cases"].as_object().unwrap() {
        let got = match algo_of(case) {
            Algo::Rloo => rloo_advantages(&rewards, g),
            _ => grpo_advantages(&rewards, g, scale_of(&case["scale_rewards"])),
        };
        let want = f64s(&case["advantages"]);
        assert_eq!(got.len(), want.len());
        for (i, (a, w)) in got.iter().zip(&want).enumerate() {
            close_abs(&format!("{name} advantage {i}"), *a, *w, 1e-6);
        }
    }
    let spread = group_spread(&rewards, g);
    let stds = f64s(&traj["group_std"]);
    close_abs("mean group std", spread.mean_std, stds.iter().sum::<f64>() / stds.len() as f64, 1e-6);
    assert_eq!(spread.frac_zero_std, traj["frac_zero_std"].as_f64().unwrap());
}

#[test]
fn grpo_step_matches_pytorch() {
    full_case("grpo");
}

#[test]
fn rloo_step_matches_pytorch() {
    full_case("rloo");
}

#[test]
fn lora_grpo_step_matches_peft() {
    full_case(LORA_CASE);
}

#[test]
fn grpo_variants_losses_and_metrics_match_pytorch() {
    let mut s = setup();
    for name in ["grpo_batch_bnpo", "grpo_none_dr_grpo", "grpo_beta0"] {
        let mut grads = s.policy.new_grads(|_| true);
        loss_and_grads(&mut s, name, &mut grads);
    }
}

#[test]
fn unfrozen_top_layer_gets_case_a_gradients() {
    let mut s = setup();
    let mut full = s.policy.new_grads(|_| true);
    let (st_full, _) = loss_and_grads(&mut s, "grpo", &mut full);
    let mask = s.policy.trainable_mask(Some(1)).unwrap();
    let mut grads = s.policy.new_grads(|i| mask[i]);
    let (st, _) = loss_and_grads(&mut s, "grpo", &mut grads);
    assert_eq!(st.loss, st_full.loss, "freezing changes no forward");
    let bytes = std::mem::take(&mut s.reference);
    let r = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let layers = s.policy.cfg.n_layers;
    let mut trained = 0;
    for (i, p) in s.policy.info.iter().enumerate() {
        let top = p.name.starts_with(&format!("model.layers.{}.", layers - 1)) || p.name == "model.norm.weight" || p.name == "lm_head.weight";
        assert_eq!(mask[i], top, "{}: trains iff it is in the top block, the final norm or the head", p.name);
        match &grads.bufs[i] {
            Some(g) => {
                trained += 1;
                assert_close(&format!("frozen-variant grad {}", p.name), g, &f32s(&r, &format!("grpo.grad.{}", p.name)), &GRAD_F32);
                assert_close(&format!("frozen-variant grad {} vs the full model's", p.name), g, full.bufs[i].as_ref().unwrap(), &SAME_F32);
            }
            None => assert!(!mask[i], "{} is frozen: no gradient buffer", p.name),
        }
    }
    assert_eq!(trained, mask.iter().filter(|&&m| m).count());
    assert!(trained > 0 && trained < s.policy.info.len());
}
