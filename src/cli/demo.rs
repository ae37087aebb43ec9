//! `okapi-train demo`: the whole SFT path on the bundled multilingual data, on the CPU by
//! default — train a tokenizer, init the `tiny` LLaMA, fine-tune on every language, show the
//! loss falling and responses to held-out instructions in three scripts.

use super::train_flags::args_json;
use okapi_data::assets::{self, Asset};
use okapi_data::bpe::{save_tokenizer, train_bpe};
use okapi_data::template::{OKAPI_PROMPT_INPUT, OKAPI_PROMPT_NO_INPUT};
use okapi_data::{encode_example, load_instructions, InstructRecord, PromptTemplate, SftEncoding, Tokenizer};
use okapi_model::{preset_config, Arch, DType, Model};
use okapi_rlhf::trainer::Objective;
use okapi_rlhf::{generate, run_sft, AdamWConfig, Sampling, ScheduleKind, TrainConfig};
use okapi_runtime::{Backend, BackendKind};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Working directory for the data, tokenizer and models
    #[arg(long, default_value = "okapi-demo")]
    pub out: PathBuf,
    /// Compute backend: auto, cpu, wgpu or cuda
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
    /// f32 (exact) or bf16 (matmul and attention on bf16 operands, fp32 accumulation; GPU backends)
    #[arg(long, default_value = "f32")]
    pub precision: okapi_runtime::Precision,
    /// SFT epochs over the bundled data
    #[arg(long, default_value_t = 8)]
    pub epochs: u64,
    /// RLHF after SFT: ppo (Okapi: reward model + PPO), dpo, or none
    #[arg(long, default_value = "ppo")]
    pub method: String,
    /// PPO iterations
    #[arg(long, default_value_t = 6)]
    pub ppo_iterations: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Languages whose last record is held out and answered at the end: Latin, Cyrillic, Han.
const SHOWCASE: [&str; 3] = ["vi", "ru", "zh"];
const VOCAB: usize = 3072;
const MAX_LEN: usize = 192;

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", p.display())
}

pub fn run(a: DemoArgs) -> Result<(), String> {
    if !matches!(a.method.as_str(), "ppo" | "dpo" | "none") {
        return Err(format!("--method {}: expected ppo, dpo or none", a.method));
    }
    super::on_backend!(a.backend, a.precision, |be| run_on(be, &a))
}

/// Mean of the first and of the last `k` values of a metric in a metrics.jsonl.
fn first_last_mean(path: &Path, key: &str, k: usize) -> (f64, f64) {
    let vals: Vec<f64> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get(key)?.as_f64())
        .collect();
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
    let k = k.min(vals.len()).max(1);
    (mean(&vals[..k.min(vals.len())]), mean(&vals[vals.len().saturating_sub(k)..]))
}

fn run_on<B: Backend>(be: B, a: &DemoArgs) -> Result<(), String> {
    let t0 = Instant::now();
    let data_dir = a.out.join("data/sft");
    std::fs::create_dir_all(&data_dir).map_err(io(&data_dir))?;
    // 1. the bundled SFT data as Okapi files, minus the showcase languages' last records
    let mut files = Vec::new();
    let mut held_out: Vec<InstructRecord> = Vec::new();
    for Asset { lang, text, .. } in assets::SFT {
        let path = data_dir.join(format!("{lang}.json"));
        let mut recs: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|e| format!("bundled sft/{lang}.json: {e}"))?;
        if SHOWCASE.contains(lang) {
            let last = recs.pop().expect("bundled files are not empty");
            let field = |k: &str| last.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            held_out.push(InstructRecord { instruction: field("instruction"), input: field("input"), output: field("output"), lang: Some(lang.to_string()), id: None, origin: format!("sft/{lang}.json") });
        }
        std::fs::write(&path, serde_json::to_string_pretty(&recs).unwrap()).map_err(io(&path))?;
        files.push(path);
    }
    let (records, stats) = load_instructions(&files, None, true).map_err(|e| e.to_string())?;
    println!("okapi demo: {} languages, {} ({} held out)", assets::SFT.len(), stats.summary(), held_out.len());

    // 2. a byte-level BPE tokenizer on the data (and the prompt template it will encode)
    let mut texts: Vec<String> = records.iter().flat_map(|r| [r.instruction.clone(), r.input.clone(), r.output.clone()]).filter(|t| !t.is_empty()).collect();
    texts.extend([OKAPI_PROMPT_INPUT, OKAPI_PROMPT_NO_INPUT].iter().map(|s| s.to_string()));
    let tok_path = a.out.join("tokenizer.json");
    let bpe = train_bpe(&texts, VOCAB).map_err(|e| e.to_string())?;
    save_tokenizer(&bpe, &tok_path).map_err(|e| e.to_string())?;
    let tok = Tokenizer::load(&tok_path).map_err(|e| e.to_string())?;
    println!("tokenizer: byte-level BPE, {} tokens", tok.vocab_size());

    // 3. the tiny LLaMA, initialised as transformers does
    let mut cfg = preset_config(Arch::Llama, "tiny", Some(tok.vocab_size()), 512).map_err(|e| e.to_string())?;
    for (key, token) in [("bos_token_id", "<s>"), ("eos_token_id", "</s>"), ("pad_token_id", "<pad>")] {
        cfg.raw[key] = tok.token_to_id(token).expect("okapi tokenizers carry the special tokens").into();
    }
    let cfg = okapi_model::ModelConfig::from_value(cfg.raw.clone(), cfg.path.clone()).map_err(|e| e.to_string())?;
    let (eos, pad) = (cfg.eos_token_id.unwrap(), cfg.pad_token_id.unwrap());
    let model = Model::init(be.clone(), cfg, a.seed);
    let init_dir = a.out.join("init");
    model.save(&init_dir, DType::F32, okapi_model::DEFAULT_MAX_SHARD_BYTES, Some(&tok_path)).map_err(|e| e.to_string())?;
    println!("model: tiny LLaMA, {} parameters, on {}", model.n_params(), be.name());

    // 4. SFT on every language
    let tpl = PromptTemplate::okapi();
    let enc = SftEncoding { max_len: MAX_LEN, mask_prompt: true, eos };
    let mut examples = Vec::new();
    for r in &records {
        if let Some(e) = encode_example(&tok, &tpl, r, &enc).map_err(|e| e.to_string())? {
            examples.push(e);
        }
    }
    let train_cfg = TrainConfig {
        epochs: a.epochs,
        max_steps: None,
        batch_size: 8,
        grad_accum: 1,
        lr: 3e-3,
        schedule: ScheduleKind::Cosine,
        warmup_steps: 10,
        adam: AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.05 },
        max_grad_norm: 1.0,
        seed: a.seed,
        shuffle: true,
        eval_every: None,
        save_every: None,
        save_dtype: Some(DType::F32),
        log_every: 10,
        resume: None,
    };
    let sft_dir = a.out.join("sft");
    std::fs::create_dir_all(&sft_dir).map_err(io(&sft_dir))?;
    let extra = serde_json::json!({ "model": init_dir, "data": files, "max_len": MAX_LEN, "mask_prompt": true });
    super::sft::write_json(&sft_dir.join("args.json"), &args_json("demo sft", &train_cfg, extra))?;
    println!("sft: {} examples, {} epochs, batch 8, lr 3e-3 cosine; loss starts near ln V = {:.2}", examples.len(), a.epochs, (tok.vocab_size() as f64).ln());
    let summary = run_sft(model, &tok_path, examples, vec![], &train_cfg, &sft_dir, pad).map_err(|e| e.to_string())?;
    let (l0, l1) = first_last_mean(&sft_dir.join("metrics.jsonl"), "loss", 10);
    println!("sft: {} steps in {:.0} s; loss {:.3} → {:.3} (mean of the first and last 10 steps: {l0:.3} → {l1:.3})", summary.steps, t0.elapsed().as_secs_f64(), summary.first_loss.unwrap_or(f64::NAN), summary.last_loss.unwrap_or(f64::NAN));
    let mut report = vec![format!("SFT      loss {l0:.2} → {l1:.2} (ln V = {:.2})", (tok.vocab_size() as f64).ln())];

    // 5. held-out instructions in three scripts
    let tuned = Model::load(be, &sft_dir).map_err(|e| e.to_string())?;
    let prompts: Vec<Vec<u32>> = held_out.iter().map(|r| tok.encode(&tpl.prompt(&r.instruction, &r.input), true)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    // a 1.6M-parameter model that saw 350 examples: greedy decoding loops, light sampling reads better
    let sampling = Sampling { temperature: 0.7, top_p: 0.9, top_k: 40, max_new_tokens: 40, seed: a.seed };
    let gens = generate(&tuned, &prompts, &sampling, Some(eos)).map_err(|e| e.to_string())?;
    for (r, g) in held_out.iter().zip(&gens) {
        let ids: Vec<u32> = g.tokens.iter().copied().filter(|&t| t != eos).collect();
        let text = tok.decode(&ids, true).map_err(|e| e.to_string())?;
        println!("\n[{}] ### Instruction: {}{}", r.lang.as_deref().unwrap_or("?"), r.instruction, if r.input.is_empty() { String::new() } else { format!("\n     ### Input: {}", r.input) });
        println!("     ### Response: {}", text.trim());
        println!("     (reference: {})", r.output);
    }
    let arc_before = eval_arc(&tuned, &tok, "after SFT")?;
    report.push(format!("ARC      0-shot acc after SFT: {arc_before:.3} (chance ≈ 0.26; a 1.6M-parameter model is not expected to beat it)"));
    let tuned_dir = match a.method.as_str() {
        "ppo" => {
            report.extend(rlhf_ppo(&be_of(&tuned), a, &sft_dir, &tok_path, &tok, eos, pad)?);
            Some(a.out.join("ppo"))
        }
        "dpo" => {
            report.extend(rlhf_dpo(&be_of(&tuned), a, &sft_dir, &tok_path, &tok, eos, pad)?);
            Some(a.out.join("dpo"))
        }
        _ => None,
    };
    if let Some(dir) = tuned_dir {
        let rl = Model::load(be_of(&tuned), &dir).map_err(|e| e.to_string())?;
        let after = eval_arc(&rl, &tok, &format!("after {}", a.method.to_uppercase()))?;
        report.push(format!("ARC      0-shot acc after {}: {after:.3}", a.method.to_uppercase()));
    }
    println!("\n== okapi demo summary ==");
    for line in &report {
        println!("{line}");
    }
    println!("demo finished in {:.0} s; everything is in {} (data/, tokenizer.json, init/, sft/, rm/, ppo/ or dpo/)", t0.elapsed().as_secs_f64(), a.out.display());
    Ok(())
}

/// Zero-shot m_arc on the bundled sets of 8 languages: prints the per-language table, returns
/// the overall accuracy.
fn eval_arc<B: Backend>(model: &Model<B>, tok: &Tokenizer, when: &str) -> Result<f64, String> {
    use okapi_rlhf::eval::{bundled_sources, formats::Task, run_eval, EvalConfig};
    let cfg = EvalConfig { num_fewshot: Some(0), ..EvalConfig::new(Task::Arc) };
    let r = run_eval(model, tok, &cfg, &bundled_sources(Task::Arc), &[]).map_err(|e| e.to_string())?;
    println!("\nm_arc, 0-shot, {when} ({} items in {:.1} s):", r.items.len(), r.seconds);
    println!("{}", r.table());
    Ok(r.overall.acc.mean)
}

fn be_of<B: Backend>(m: &Model<B>) -> B {
    m.be.clone()
}

/// The bundled ranking data as Okapi files, tokenized into prompt groups.
fn ranking_groups(a: &DemoArgs, tok: &Tokenizer, eos: u32) -> Result<Vec<okapi_data::PromptGroup>, String> {
    let dir = a.out.join("data/ranking");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mut files = Vec::new();
    for Asset { lang, text, .. } in assets::RANKING {
        let p = dir.join(format!("{lang}.json"));
        std::fs::write(&p, text).map_err(io(&p))?;
        files.push(p);
    }
    let (recs, _) = okapi_data::load_rankings(&files, None).map_err(|e| e.to_string())?;
    let enc = SftEncoding { max_len: MAX_LEN, mask_prompt: true, eos };
    let tpl = PromptTemplate::okapi();
    let mut groups = Vec::new();
    for r in &recs {
        if let Some(g) = okapi_data::encode_group(tok, &tpl, r, &enc).map_err(|e| e.to_string())? {
            groups.push(g);
        }
    }
    Ok(groups)
}

fn demo_train_cfg(a: &DemoArgs, epochs: u64, batch: usize, lr: f64, eval_every: Option<u64>) -> TrainConfig {
    TrainConfig {
        epochs,
        max_steps: None,
        batch_size: batch,
        grad_accum: 1,
        lr,
        schedule: ScheduleKind::Cosine,
        warmup_steps: 2,
        adam: AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 },
        max_grad_norm: 1.0,
        seed: a.seed,
        shuffle: true,
        eval_every,
        save_every: None,
        save_dtype: Some(DType::F32),
        log_every: 5,
        resume: None,
    }
}

/// Reward model on the bundled rankings, then PPO on the bundled RL prompts.
#[allow(clippy::too_many_arguments)]
fn rlhf_ppo<B: Backend>(be: &B, a: &DemoArgs, sft_dir: &Path, tok_path: &Path, tok: &Tokenizer, eos: u32, pad: u32) -> Result<Vec<String>, String> {
    use okapi_rlhf::ppo::{kl::KlController, run_ppo, PpoConfig, PpoIo, PpoLossCfg};
    let t = Instant::now();
    let groups = ranking_groups(a, tok, eos)?;
    let (train, val) = okapi_rlhf::split_val(groups, 0.15, a.seed);
    println!("\nreward model: {} training / {} held-out prompts ({} / {} pairs), from the SFT model", train.len(), val.len(), train.iter().map(|g| g.pairs.len()).sum::<usize>(), val.iter().map(|g| g.pairs.len()).sum::<usize>());
    let rm0 = Model::load_reward(be.clone(), sft_dir, a.seed).map_err(|e| e.to_string())?;
    let rm_dir = a.out.join("rm");
    let cfg = demo_train_cfg(a, 2, 8, 1e-3, Some(8));
    let mut obj = okapi_rlhf::RewardObjective::new(&rm0, train, val, cfg.batch_size, pad, 0.0);
    let (rm, s) = okapi_rlhf::trainer::train(rm0, &|_| true, &mut obj, &cfg, &rm_dir, tok_path).map_err(|e| e.to_string())?;
    let val_acc = obj.validate(&rm).map_err(|e| e.to_string())?.and_then(|m| m.get("val_accuracy").and_then(|v| v.as_f64())).unwrap_or(f64::NAN);
    println!("reward model: {} steps in {:.0} s, train accuracy {}, held-out pairwise accuracy {val_acc:.3} (chance 0.5)", s.steps, t.elapsed().as_secs_f64(), s.last_extra.get("accuracy").map(|v| v.to_string()).unwrap_or_default());
    let mut report = vec![format!("RM       held-out pairwise accuracy {val_acc:.3} (chance 0.500)")];

    let t = Instant::now();
    let prompt_dir = a.out.join("data/rl");
    std::fs::create_dir_all(&prompt_dir).map_err(io(&prompt_dir))?;
    let mut files = Vec::new();
    for Asset { lang, text, .. } in assets::RL_PROMPTS {
        let p = prompt_dir.join(format!("{lang}.json"));
        std::fs::write(&p, text).map_err(io(&p))?;
        files.push(p);
    }
    let (recs, _) = load_instructions(&files, None, false).map_err(|e| e.to_string())?;
    let tpl = PromptTemplate::okapi();
    let prompts: Vec<Vec<u32>> = recs.iter().map(|r| tok.encode(&tpl.prompt(&r.instruction, &r.input), true)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let mut policy = Model::load(be.clone(), sft_dir).map_err(|e| e.to_string())?;
    let reference = Model::load(be.clone(), sft_dir).map_err(|e| e.to_string())?;
    let mut rng = okapi_model::Rng::new(a.seed ^ 0x7A1E);
    let w: Vec<f32> = (0..policy.cfg.hidden_size).map(|_| (rng.normal() * 0.02) as f32).collect();
    policy.add_value_head(&w, 0.0);
    let mask = vec![true; policy.info.len()];
    let cfg = PpoConfig {
        iterations: a.ppo_iterations,
        rollouts: 32,
        chunk_size: 16,
        ppo_epochs: 4,
        minibatch: 8,
        sampling: Sampling { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: 32, seed: a.seed },
        kl: KlController { beta: 0.1, target: Some(6.0), horizon: 10000.0 },
        gamma: 1.0,
        lam: 0.95,
        loss: PpoLossCfg { cliprange: 0.2, cliprange_value: 0.2, vf_coef: 1.0 },
        reward_clip: 10.0,
        lr: 2e-4,
        adam: AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 },
        max_grad_norm: 1.0,
        seed: a.seed,
        save_every: None,
        resume: None,
        samples_every: 2,
        save_dtype: Some(DType::F32),
        log_every: 1,
    };
    println!("\nppo: {} prompts in 27 languages, {} iterations of {} rollouts (≤ {} new tokens), 4 PPO epochs, adaptive KL (β₀ 0.1, target 6)", prompts.len(), cfg.iterations, cfg.rollouts, cfg.sampling.max_new_tokens);
    let decode = |ids: &[u32]| tok.decode(ids, true).unwrap_or_default();
    let rm_ids = |p: &[u32], r: &[u32]| -> Result<Vec<u32>, okapi_rlhf::TrainError> { Ok(p.iter().chain(r).copied().collect()) };
    let io_ = PpoIo { rm_ids: &rm_ids, decode: &decode, eos, pad, rm_pad: pad, tokenizer: tok_path };
    let (_, s) = run_ppo(policy, &mask, &reference, &rm, &prompts, &cfg, &io_, &a.out.join("ppo"), None).map_err(|e| e.to_string())?;
    let (s0, s1) = (s.scores.first().copied().unwrap_or(f64::NAN), s.scores.last().copied().unwrap_or(f64::NAN));
    let kmax = s.kls.iter().cloned().fold(0.0, f64::max);
    println!("ppo: {} iterations in {:.0} s; mean reward {s0:.3} → {s1:.3}, KL to the SFT model at most {kmax:.3}", s.iterations, t.elapsed().as_secs_f64());
    report.push(format!("PPO      mean reward {s0:.3} → {s1:.3} over {} iterations; KL ≤ {kmax:.3} nats", s.iterations));
    Ok(report)
}

/// DPO on the bundled rankings instead of RM + PPO.
#[allow(clippy::too_many_arguments)]
fn rlhf_dpo<B: Backend>(be: &B, a: &DemoArgs, sft_dir: &Path, tok_path: &Path, tok: &Tokenizer, eos: u32, pad: u32) -> Result<Vec<String>, String> {
    let t = Instant::now();
    let groups = ranking_groups(a, tok, eos)?;
    let (train, val) = okapi_rlhf::split_val(groups, 0.15, a.seed);
    let policy = Model::load(be.clone(), sft_dir).map_err(|e| e.to_string())?;
    let cfg = demo_train_cfg(a, 2, 8, 3e-4, Some(5));
    println!("\ndpo: {} training / {} held-out prompts, β 0.1", train.len(), val.len());
    let mut obj = okapi_rlhf::DpoObjective::new(&policy, train, val, cfg.batch_size, pad, 0.1).map_err(|e| e.to_string())?;
    let (_, s) = okapi_rlhf::trainer::train(policy, &|_| true, &mut obj, &cfg, &a.out.join("dpo"), tok_path).map_err(|e| e.to_string())?;
    let va = s.val.as_ref().and_then(|v| v.get("val_reward_accuracy")).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    println!("dpo: {} steps in {:.0} s, loss {:.3} → {:.3}, held-out reward accuracy {va:.3}", s.steps, t.elapsed().as_secs_f64(), s.first_loss.unwrap_or(f64::NAN), s.last_loss.unwrap_or(f64::NAN));
    Ok(vec![format!("DPO      loss {:.3} → {:.3}; held-out reward accuracy {va:.3} (chance 0.500)", s.first_loss.unwrap_or(f64::NAN), s.last_loss.unwrap_or(f64::NAN))])
}
