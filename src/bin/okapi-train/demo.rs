//! `okapi-train demo`: the whole Okapi pipeline on the bundled multilingual data, on the CPU by
//! default — train a tokenizer, init the `tiny` model (LLaMA by default, `--arch`), fine-tune on every language, show the
//! loss falling and responses to held-out instructions in three scripts, then a reward model and
//! PPO (or DPO) and the m_arc table per language before and after.

use super::rl_flags::Prompts;
use super::train_flags::args_json;
use okapi_data::assets::{self, Asset};
use okapi_data::bpe::{save_tokenizer, train_bpe};
use okapi_data::template::{OKAPI_PROMPT_INPUT, OKAPI_PROMPT_NO_INPUT};
use okapi_data::{encode_example, load_instructions, Example, InstructRecord, PromptTemplate, SftEncoding, Tokenizer};
use okapi_model::{preset_config, Arch, DType, Model};
use okapi_rlhf::eval::results::{results_json, results_markdown, Cell};
use okapi_rlhf::ppo::group::{GroupCfg, GroupLossCfg};
use okapi_rlhf::ppo::{add_value_head, PpoIo};
use okapi_rlhf::rewards::RewardSpec;
use okapi_rlhf::trainer::Objective;
use okapi_rlhf::{generate, run_ppo, run_sft, train, AdamWConfig, PpoConfig, PpoModels, RunDir, Sampling, TrainConfig};
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
    /// RLHF after SFT: ppo (Okapi: reward model + PPO), grpo (reward model + language
    /// consistency, GRPO), dpo, or none
    #[arg(long, default_value = "ppo")]
    pub method: String,
    /// PPO / GRPO iterations [default: 6 for PPO; 30 for GRPO, whose iterations are cheaper
    /// and whose language-consistency reward needs more of them to move]
    #[arg(long)]
    pub ppo_iterations: Option<u64>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// The tiny model's architecture: llama, bloom, qwen2, qwen3, mistral or gemma2
    #[arg(long, default_value = "llama")]
    pub arch: Arch,
}

/// Languages whose last record is held out and answered at the end: Latin, Cyrillic, Han.
const SHOWCASE: [&str; 3] = ["vi", "ru", "zh"];
const VOCAB: usize = 3072;
const MAX_LEN: usize = 192;

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", p.display())
}

fn err(e: impl ToString) -> String {
    e.to_string()
}

pub fn run(a: DemoArgs) -> Result<(), String> {
    if !matches!(a.method.as_str(), "ppo" | "grpo" | "dpo" | "none") {
        return Err(format!("--method {}: expected ppo, grpo, dpo or none", a.method));
    }
    super::on_backend!(a.backend, a.precision, |be| run_on(be, &a))
}

/// What the demo's stages share.
struct Demo<'a, B: Backend> {
    a: &'a DemoArgs,
    be: B,
    tok: Tokenizer,
    tok_path: PathBuf,
    eos: u32,
    pad: u32,
    tpl: PromptTemplate,
    /// the demo's summary, one line per stage
    report: Vec<String>,
}

/// What the demo writes in its directory, and the file that marks it as the demo's.
const DEMO_ENTRIES: [&str; 10] = ["data", "tokenizer.json", "init", "sft", "rm", "ppo", "grpo", "dpo", "eval", "report.html"];
const DEMO_MARKER: &str = ".okapi-demo";

/// The demo's directory: new, empty, or a previous demo's (whose contents it replaces); any
/// other directory is refused, so a mistyped `--out` never loses someone's files.
fn claim_demo_dir(out: &Path) -> Result<(), String> {
    let entries: Vec<String> = match std::fs::read_dir(out) {
        Ok(rd) => rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) if !out.exists() => vec![],
        Err(e) => return Err(format!("--out {}: {e}", out.display())),
    };
    let foreign: Vec<&String> = entries.iter().filter(|e| *e != DEMO_MARKER && !DEMO_ENTRIES.iter().any(|d| e.as_str() == *d || e.strip_suffix(".trash") == Some(d))).collect();
    if !foreign.is_empty() && !entries.iter().any(|e| e == DEMO_MARKER) {
        let list: Vec<&str> = foreign.iter().map(|s| s.as_str()).collect();
        return Err(format!("--out {}: the directory holds files that are not a previous demo's ({}): choose a new or empty directory", out.display(), list.join(", ")));
    }
    for name in DEMO_ENTRIES.iter().flat_map(|d| [d.to_string(), format!("{d}.trash")]) {
        let p = out.join(name);
        if p.is_dir() {
            okapi_rlhf::rundir::trash_dir(&p).map_err(err)?;
        } else if p.exists() {
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    std::fs::write(out.join(DEMO_MARKER), "okapi-train demo's working directory: the next demo run replaces its contents\n").map_err(io(out))
}

fn run_on<B: Backend>(be: B, a: &DemoArgs) -> Result<(), String> {
    let t0 = Instant::now();
    claim_demo_dir(&a.out)?;
    let (files, records, held_out) = sft_files(a)?;
    let (tok, tok_path) = tokenizer(a, &records)?;
    let mut demo = Demo { a, be, tok, tok_path, eos: 0, pad: 0, tpl: PromptTemplate::okapi(), report: Vec::new() };
    let (model, init_dir) = demo.init_model()?;
    let sft_dir = demo.sft(model, &records, &files, &init_dir, t0)?;
    let tuned = Model::load(demo.be.clone(), &sft_dir).map_err(err)?;
    demo.showcase(&tuned, &held_out)?;
    let mut cells = Vec::new();
    let arc_before = eval_arc(&tuned, &demo.tok, "sft", &mut cells)?;
    demo.report.push(format!("ARC      0-shot acc after SFT: {arc_before:.3} (chance ≈ 0.26; a 1.6M-parameter model is not expected to beat it)"));
    let tuned_dir = match a.method.as_str() {
        "ppo" | "grpo" => Some(demo.rlhf_ppo(&sft_dir)?),
        "dpo" => Some(demo.rlhf_dpo(&sft_dir)?),
        _ => None,
    };
    let mut models = vec![(String::from("sft"), sft_dir.clone())];
    if let Some(dir) = tuned_dir {
        let rl = Model::load(demo.be.clone(), &dir).map_err(err)?;
        let after = eval_arc(&rl, &demo.tok, &a.method, &mut cells)?;
        demo.report.push(format!("ARC      0-shot acc after {}: {after:.3}", a.method.to_uppercase()));
        models.push((a.method.clone(), dir));
    }
    write_eval_results(&a.out.join("eval"), &models, &cells)?;
    println!("\n== okapi demo summary ==");
    for line in &demo.report {
        println!("{line}");
    }
    let report = a.out.join("report.html");
    super::report::write_report(std::slice::from_ref(&a.out), &report, 0.6)?;
    println!("demo finished in {:.0} s; everything is in {} (data/, tokenizer.json, init/, sft/, rm/, ppo/, grpo/ or dpo/, eval/); curves and samples: {}", t0.elapsed().as_secs_f64(), a.out.display(), report.display());
    Ok(())
}

/// The written files, their records, and the held-out records.
type SftFiles = (Vec<PathBuf>, Vec<InstructRecord>, Vec<InstructRecord>);

/// The bundled SFT data as Okapi files, minus the showcase languages' last records (returned).
fn sft_files(a: &DemoArgs) -> Result<SftFiles, String> {
    let data_dir = a.out.join("data/sft");
    std::fs::create_dir_all(&data_dir).map_err(io(&data_dir))?;
    let (mut files, mut held_out) = (Vec::new(), Vec::new());
    for Asset { lang, text, .. } in assets::SFT {
        let path = data_dir.join(format!("{lang}.json"));
        let mut recs: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|e| format!("bundled sft/{lang}.json: {e}"))?;
        if SHOWCASE.contains(lang) {
            let last = recs.pop().expect("bundled files are not empty");
            let field = |k: &str| last.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            held_out.push(InstructRecord { instruction: field("instruction"), input: field("input"), output: field("output"), lang: Some(lang.to_string()), id: None, origin: format!("sft/{lang}.json") });
        }
        std::fs::write(&path, serde_json::to_string_pretty(&recs).expect("JSON values serialise")).map_err(io(&path))?;
        files.push(path);
    }
    let (records, stats) = load_instructions(&files, None, true).map_err(err)?;
    println!("okapi demo: {} languages, {} ({} held out)", assets::SFT.len(), stats.summary(), held_out.len());
    Ok((files, records, held_out))
}

/// A byte-level BPE tokenizer on the data (and the prompt template it will encode).
fn tokenizer(a: &DemoArgs, records: &[InstructRecord]) -> Result<(Tokenizer, PathBuf), String> {
    let mut texts: Vec<String> = records.iter().flat_map(|r| [r.instruction.clone(), r.input.clone(), r.output.clone()]).filter(|t| !t.is_empty()).collect();
    texts.extend([OKAPI_PROMPT_INPUT, OKAPI_PROMPT_NO_INPUT].iter().map(|s| s.to_string()));
    let tok_path = a.out.join("tokenizer.json");
    let bpe = train_bpe(&texts, VOCAB).map_err(err)?;
    save_tokenizer(&bpe, &tok_path).map_err(err)?;
    let tok = Tokenizer::load(&tok_path).map_err(err)?;
    println!("tokenizer: byte-level BPE, {} tokens", tok.vocab_size());
    Ok((tok, tok_path))
}

/// The demo's training settings: AdamW (β₂ 0.95), cosine, clip 1.0, saved in f32.
fn demo_train_cfg(a: &DemoArgs, epochs: u64, batch: usize, lr: f64, warmup: u64, eval_every: Option<u64>) -> TrainConfig {
    TrainConfig { epochs, batch_size: batch, lr, warmup_steps: warmup, adam: AdamWConfig { weight_decay: 0.0, ..TrainConfig::sft().adam }, max_len: MAX_LEN, seed: a.seed, eval_every, save_dtype: Some(DType::F32), log_every: 5, ..TrainConfig::sft() }
}

impl<B: Backend> Demo<'_, B> {
    /// The tiny model (`--arch`) on the tokenizer's vocabulary, initialised as transformers does.
    fn init_model(&mut self) -> Result<(Model<B>, PathBuf), String> {
        let mut cfg = preset_config(self.a.arch, "tiny", Some(self.tok.vocab_size()), 512).map_err(err)?;
        for (key, token) in [("bos_token_id", "<s>"), ("eos_token_id", "</s>"), ("pad_token_id", "<pad>")] {
            cfg.raw[key] = self.tok.token_to_id(token).expect("okapi tokenizers carry the special tokens").into();
        }
        let cfg = okapi_model::ModelConfig::from_value(cfg.raw.clone(), cfg.path.clone()).map_err(err)?;
        (self.eos, self.pad) = (cfg.eos_token_id.expect("set above"), cfg.pad_token_id.expect("set above"));
        let model = Model::init(self.be.clone(), cfg, self.a.seed);
        let init_dir = self.a.out.join("init");
        model.save(&init_dir, DType::F32, okapi_model::DEFAULT_MAX_SHARD_BYTES, Some(&self.tok_path)).map_err(err)?;
        println!("model: tiny {}, {} parameters, on {}", model.cfg.arch.name(), model.n_params(), self.be.name());
        Ok((model, init_dir))
    }

    /// SFT on every language; returns the tuned model's directory.
    fn sft(&mut self, model: Model<B>, records: &[InstructRecord], files: &[PathBuf], init_dir: &Path, t0: Instant) -> Result<PathBuf, String> {
        let enc = SftEncoding { max_len: MAX_LEN, mask_prompt: true, eos: self.eos };
        let mut examples: Vec<Example> = Vec::new();
        for r in records {
            examples.extend(encode_example(&self.tok, &self.tpl, r, &enc).map_err(err)?);
        }
        let cfg = TrainConfig { adam: AdamWConfig { weight_decay: 0.05, ..TrainConfig::sft().adam }, log_every: 10, ..demo_train_cfg(self.a, self.a.epochs, 8, 3e-3, 10, None) };
        let sft_dir = self.a.out.join("sft");
        std::fs::create_dir_all(&sft_dir).map_err(io(&sft_dir))?;
        let extra = serde_json::json!({ "model": init_dir, "data": files });
        super::outdir::write_json(&sft_dir.join("args.json"), &args_json("demo sft", &cfg, extra))?;
        let ln_v = (self.tok.vocab_size() as f64).ln();
        println!("sft: {} examples, {} epochs, batch 8, lr 3e-3 cosine; loss starts near ln V = {ln_v:.2}", examples.len(), self.a.epochs);
        let (_, summary) = run_sft(model, examples, vec![], &cfg, Some(RunDir { dir: &sft_dir, tokenizer: Some(&self.tok_path), tensorboard: None })).map_err(err)?;
        let (l0, l1) = first_last_mean(&summary.history, "loss", 10);
        println!("sft: {} steps in {:.0} s; loss {:.3} → {:.3} (mean of the first and last 10 steps: {l0:.3} → {l1:.3})", summary.steps, t0.elapsed().as_secs_f64(), summary.first_loss.unwrap_or(f64::NAN), summary.last_loss.unwrap_or(f64::NAN));
        self.report.push(format!("SFT      loss {l0:.2} → {l1:.2} (ln V = {ln_v:.2})"));
        Ok(sft_dir)
    }

    /// Responses to the held-out instructions, beside their references.
    fn showcase(&self, tuned: &Model<B>, held_out: &[InstructRecord]) -> Result<(), String> {
        let prompts: Vec<Vec<u32>> = held_out.iter().map(|r| self.tok.encode(&self.tpl.prompt(&r.instruction, &r.input), true)).collect::<Result<_, _>>().map_err(err)?;
        // a 1.6M-parameter model that saw 350 examples: greedy decoding loops, light sampling reads better
        let sampling = Sampling { temperature: 0.7, top_p: 0.9, top_k: 40, max_new_tokens: 40, seed: self.a.seed };
        let gens = generate(tuned, &prompts, &sampling, Some(self.eos)).map_err(err)?;
        for (r, g) in held_out.iter().zip(&gens) {
            let ids: Vec<u32> = g.tokens.iter().copied().filter(|&t| t != self.eos).collect();
            let text = self.tok.decode(&ids, true).map_err(err)?;
            let input = if r.input.is_empty() { String::new() } else { format!("\n     ### Input: {}", r.input) };
            println!("\n[{}] ### Instruction: {}{input}", r.lang.as_deref().unwrap_or("?"), r.instruction);
            println!("     ### Response: {}", text.trim());
            println!("     (reference: {})", r.output);
        }
        Ok(())
    }

    /// The bundled ranking data as Okapi files, tokenized into prompt groups, split 85 / 15.
    fn ranking_groups(&self) -> Result<(Vec<okapi_data::PromptGroup>, Vec<okapi_data::PromptGroup>), String> {
        let files = write_assets(&self.a.out.join("data/ranking"), assets::RANKING)?;
        let (recs, _) = okapi_data::load_rankings(&files, None).map_err(err)?;
        let enc = SftEncoding { max_len: MAX_LEN, mask_prompt: true, eos: self.eos };
        let mut groups = Vec::new();
        for r in &recs {
            groups.extend(okapi_data::encode_group(&self.tok, &self.tpl, r, &enc).map_err(err)?);
        }
        Ok(okapi_rlhf::split_val(groups, 0.15, self.a.seed))
    }

    /// Reward model on the bundled rankings, then PPO (or GRPO) on the bundled RL prompts;
    /// returns the policy's directory.
    fn rlhf_ppo(&mut self, sft_dir: &Path) -> Result<PathBuf, String> {
        let t = Instant::now();
        let (train_g, val_g) = self.ranking_groups()?;
        let pairs = |g: &[okapi_data::PromptGroup]| g.iter().map(|g| g.pairs.len()).sum::<usize>();
        println!("\nreward model: {} training / {} held-out prompts ({} / {} pairs), from the SFT model", train_g.len(), val_g.len(), pairs(&train_g), pairs(&val_g));
        let rm0 = Model::load_reward(self.be.clone(), sft_dir, self.a.seed).map_err(err)?;
        let cfg = TrainConfig { warmup_steps: 2, ..demo_train_cfg(self.a, 2, 8, 1e-3, 2, Some(8)) };
        let mut obj = okapi_rlhf::RewardObjective::new(&rm0, train_g, val_g, cfg.batch_size, self.pad, 0.0);
        let rm_dir = self.a.out.join("rm");
        let (rm, s) = train(rm0, &mut obj, &cfg, Some(RunDir { dir: &rm_dir, tokenizer: Some(&self.tok_path), tensorboard: None })).map_err(err)?;
        let val_acc = obj.validate(&rm).map_err(err)?.and_then(|m| m.get("val_accuracy").and_then(|v| v.as_f64())).unwrap_or(f64::NAN);
        println!("reward model: {} steps in {:.0} s, train accuracy {}, held-out pairwise accuracy {val_acc:.3} (chance 0.5)", s.steps, t.elapsed().as_secs_f64(), s.last_extra.get("accuracy").map(|v| v.to_string()).unwrap_or_default());
        self.report.push(format!("RM       held-out pairwise accuracy {val_acc:.3} (chance 0.500)"));
        match self.a.method.as_str() {
            "grpo" => self.grpo(sft_dir, &rm),
            _ => self.ppo(sft_dir, &rm),
        }
    }

    /// PPO of the SFT model against `rm` on the bundled RL prompts.
    fn ppo(&mut self, sft_dir: &Path, rm: &Model<B>) -> Result<PathBuf, String> {
        let t = Instant::now();
        let prompts = self.rl_prompts()?;
        let mut policy = Model::load(self.be.clone(), sft_dir).map_err(err)?;
        let base = PpoConfig::defaults();
        add_value_head(&mut policy, base.value_head, self.a.seed);
        let cfg = self.rl_cfg(base, 6);
        println!("\nppo: {} prompts in 27 languages, {} iterations of {} rollouts (≤ {} new tokens), 4 PPO epochs, adaptive KL (β₀ 0.1, target 6)", prompts.ids.len(), cfg.iterations, cfg.rollouts, cfg.sampling.max_new_tokens);
        let (out, _, s) = self.run_rl(sft_dir, policy, rm, &prompts, &cfg)?;
        let (s0, s1) = first_last(&s.scores);
        let kmax = s.kls.iter().cloned().fold(0.0, f64::max);
        println!("ppo: {} iterations in {:.0} s; mean reward {s0:.3} → {s1:.3}, KL to the SFT model at most {kmax:.3}", s.iterations, t.elapsed().as_secs_f64());
        self.report.push(format!("PPO      mean reward {s0:.3} → {s1:.3} over {} iterations; KL ≤ {kmax:.3} nats", s.iterations));
        Ok(out)
    }

    /// The demo's RL settings over `base`: 32 rollouts of ≤ 32 tokens, lr 2e-4, samples every 2
    /// iterations, `--ppo-iterations` (else `iterations`).
    fn rl_cfg(&self, base: PpoConfig, iterations: u64) -> PpoConfig {
        PpoConfig {
            iterations: self.a.ppo_iterations.unwrap_or(iterations),
            rollouts: 32,
            sampling: Sampling { max_new_tokens: 32, seed: self.a.seed, ..base.sampling.clone() },
            lr: 2e-4,
            seed: self.a.seed,
            samples_every: 2,
            save_dtype: Some(DType::F32),
            ..base
        }
    }

    /// `cfg` (PPO or GRPO) from the SFT model against `rm` on `prompts`, into `ppo/` or
    /// `grpo/`; returns that directory, the tuned policy and the summary.
    fn run_rl(&self, sft_dir: &Path, policy: Model<B>, rm: &Model<B>, prompts: &Prompts, cfg: &PpoConfig) -> Result<(PathBuf, Model<B>, okapi_rlhf::ppo::PpoSummary), String> {
        let reference = Model::load(self.be.clone(), sft_dir).map_err(err)?;
        let decode = |ids: &[u32]| self.tok.decode(ids, true).unwrap_or_default();
        let rm_ids = |p: &[u32], r: &[u32]| -> Result<Vec<u32>, okapi_rlhf::TrainError> { Ok(p.iter().chain(r).copied().collect()) };
        let io_ = PpoIo { rm_ids: &rm_ids, decode: &decode, eos: self.eos, pad: self.pad, rm_pad: self.pad, tokenizer: Some(&self.tok_path), tensorboard: None, comm: &okapi_runtime::SingleProcess, prompt_langs: &prompts.langs };
        let out = self.a.out.join(cfg.command());
        let (tuned, s) = run_ppo(PpoModels { policy, reference: Some(&reference), reward: Some(rm), critic: None }, &prompts.ids, cfg, &io_, Some(&out)).map_err(err)?;
        Ok((out, tuned, s))
    }

    /// The bundled RL prompts (Okapi's template) and their languages.
    fn rl_prompts(&self) -> Result<Prompts, String> {
        let files = write_assets(&self.a.out.join("data/rl"), assets::RL_PROMPTS)?;
        let (recs, _) = load_instructions(&files, None, false).map_err(err)?;
        let ids = recs.iter().map(|r| self.tok.encode(&self.tpl.prompt(&r.instruction, &r.input), true)).collect::<Result<_, _>>().map_err(err)?;
        let langs = recs.iter().map(|r| okapi_rlhf::rewards::prompt_language(r.lang.as_deref(), &r.instruction)).collect();
        Ok(Prompts { ids, langs })
    }

    /// GRPO of the SFT model against `rm` plus the language-consistency reward, with the
    /// consistency rate per language before and after.
    fn grpo(&mut self, sft_dir: &Path, rm: &Model<B>) -> Result<PathBuf, String> {
        let t = Instant::now();
        let prompts = self.rl_prompts()?;
        let policy = Model::load(self.be.clone(), sft_dir).map_err(err)?;
        let before = lang_consistency(&policy, &prompts, &self.tok, self.eos, self.a.seed)?;
        let base = PpoConfig::grpo();
        let group = base.group.map(|g| GroupCfg { num_generations: 4, loss: GroupLossCfg { max_completion_len: 32, ..g.loss }, ..g });
        let cfg = PpoConfig { rewards: RewardSpec::parse("rm=1.0,lang=1.0").map_err(err)?, group, ..self.rl_cfg(base, 30) };
        println!("\ngrpo: {} prompts in 27 languages, {} iterations of 8 prompts × 4 completions (≤ 32 new tokens), reward = reward model + language consistency, β 0.04", prompts.ids.len(), cfg.iterations);
        let (out, tuned, s) = self.run_rl(sft_dir, policy, rm, &prompts, &cfg)?;
        let (s0, s1) = first_last(&s.scores);
        println!("grpo: {} iterations in {:.0} s; mean reward {s0:.3} → {s1:.3}", s.iterations, t.elapsed().as_secs_f64());
        let after = lang_consistency(&tuned, &prompts, &self.tok, self.eos, self.a.seed)?;
        let table = consistency_table(&before, &after);
        println!("\nlanguage consistency (one sampled answer per RL prompt, in the prompt's language?):\n{table}");
        std::fs::write(out.join("lang_consistency.md"), &table).map_err(io(&out))?;
        let rate = |c: &[(String, usize, usize)]| c.iter().map(|x| x.2).sum::<usize>() as f64 / c.iter().map(|x| x.1).sum::<usize>().max(1) as f64;
        self.report.push(format!("GRPO     mean reward {s0:.3} → {s1:.3}; language consistency {:.3} → {:.3}", rate(&before), rate(&after)));
        Ok(out)
    }

    /// DPO on the bundled rankings instead of RM + PPO; returns the policy's directory.
    fn rlhf_dpo(&mut self, sft_dir: &Path) -> Result<PathBuf, String> {
        let t = Instant::now();
        let (train_g, val_g) = self.ranking_groups()?;
        let policy = Model::load(self.be.clone(), sft_dir).map_err(err)?;
        let cfg = demo_train_cfg(self.a, 2, 8, 3e-4, 2, Some(5));
        println!("\ndpo: {} training / {} held-out prompts, β 0.1", train_g.len(), val_g.len());
        let mut obj = okapi_rlhf::DpoObjective::new(&policy, train_g, val_g, cfg.batch_size, self.pad, 0.1).map_err(err)?;
        let out = self.a.out.join("dpo");
        let (_, s) = train(policy, &mut obj, &cfg, Some(RunDir { dir: &out, tokenizer: Some(&self.tok_path), tensorboard: None })).map_err(err)?;
        let va = s.val.as_ref().and_then(|v| v.get("val_reward_accuracy")).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        let (l0, l1) = (s.first_loss.unwrap_or(f64::NAN), s.last_loss.unwrap_or(f64::NAN));
        println!("dpo: {} steps in {:.0} s, loss {l0:.3} → {l1:.3}, held-out reward accuracy {va:.3}", s.steps, t.elapsed().as_secs_f64());
        self.report.push(format!("DPO      loss {l0:.3} → {l1:.3}; held-out reward accuracy {va:.3} (chance 0.500)"));
        Ok(out)
    }
}

/// Writes bundled assets as `{lang}.json` files into `dir`.
fn write_assets(dir: &Path, set: &[Asset]) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut files = Vec::new();
    for Asset { lang, text, .. } in set {
        let p = dir.join(format!("{lang}.json"));
        std::fs::write(&p, text).map_err(io(&p))?;
        files.push(p);
    }
    Ok(files)
}

/// The first and the last value (NaN when none).
fn first_last(v: &[f64]) -> (f64, f64) {
    (v.first().copied().unwrap_or(f64::NAN), v.last().copied().unwrap_or(f64::NAN))
}

/// Mean of the first and of the last `k` values of a metric over a run's metrics lines.
fn first_last_mean(history: &[serde_json::Value], key: &str, k: usize) -> (f64, f64) {
    let vals: Vec<f64> = history.iter().filter_map(|l| l.get(key)?.as_f64()).collect();
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
    let k = k.min(vals.len()).max(1);
    (mean(&vals[..k.min(vals.len())]), mean(&vals[vals.len().saturating_sub(k)..]))
}

/// Zero-shot m_arc on the bundled sets of 8 languages: prints the per-language table, adds
/// each language's row to `cells` under `model`, returns the overall accuracy.
fn eval_arc<B: Backend>(model: &Model<B>, tok: &Tokenizer, name: &str, cells: &mut Vec<Cell>) -> Result<f64, String> {
    use okapi_rlhf::eval::{bundled_sources, formats::Task, run_eval, EvalConfig};
    let cfg = EvalConfig { num_fewshot: Some(0), ..EvalConfig::new(Task::Arc) };
    let r = run_eval(model, tok, &cfg, &bundled_sources(Task::Arc), &[]).map_err(err)?;
    println!("\nm_arc, 0-shot, after {} ({} items in {:.1} s):", name.to_uppercase(), r.items.len(), r.seconds);
    println!("{}", r.table());
    cells.extend(r.langs.iter().map(|row| Cell { model: name.to_string(), task: Task::Arc, lang: row.lang.clone(), row: row.clone(), shots: 0 }));
    Ok(r.overall.acc.mean)
}

/// The demo's ARC tables as an eval suite writes them (`results.json` in the harness's layout,
/// `results.md`), so that `report` shows SFT next to RLHF.
fn write_eval_results(dir: &Path, models: &[(String, PathBuf)], cells: &[Cell]) -> Result<(), String> {
    use okapi_rlhf::eval::resume::{ModelEntry, Settings};
    let entries: Vec<ModelEntry> = models.iter().map(|(name, path)| ModelEntry { name: name.clone(), path: path.display().to_string(), adapter: None, items: name.clone() }).collect();
    let settings: Settings = [("--seed".to_string(), serde_json::json!(42)), ("--harness".to_string(), serde_json::json!("v0.3"))].into_iter().collect();
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let json = serde_json::to_string_pretty(&results_json(&entries, &settings, cells)).expect("JSON values serialise");
    std::fs::write(dir.join("results.json"), json + "\n").map_err(|e| format!("{}: {e}", dir.display()))?;
    let names: Vec<String> = models.iter().map(|m| m.0.clone()).collect();
    std::fs::write(dir.join("results.md"), results_markdown(&names, cells)).map_err(|e| format!("{}: {e}", dir.display()))
}

/// Per language (in the order first met): prompts, and answers detected in the prompt's
/// language — one answer each, sampled as the showcase samples.
fn lang_consistency<B: Backend>(model: &Model<B>, prompts: &Prompts, tok: &Tokenizer, eos: u32, seed: u64) -> Result<Vec<(String, usize, usize)>, String> {
    let sampling = Sampling { temperature: 0.7, top_p: 0.9, top_k: 40, max_new_tokens: 32, seed };
    let gens = generate(model, &prompts.ids, &sampling, Some(eos)).map_err(err)?;
    let mut rows: Vec<(String, usize, usize)> = Vec::new();
    for (g, lang) in gens.iter().zip(&prompts.langs) {
        let Some(lang) = lang else { continue };
        let text = tok.decode(&g.tokens, true).map_err(err)?;
        let hit = okapi_rlhf::rewards::lang_consistency(lang, &text) > 0.5;
        match rows.iter_mut().find(|r| r.0 == *lang) {
            Some(r) => (r.1, r.2) = (r.1 + 1, r.2 + usize::from(hit)),
            None => rows.push((lang.to_string(), 1, usize::from(hit))),
        }
    }
    Ok(rows)
}

/// The consistency rates before and after, per language and overall, as a Markdown table.
fn consistency_table(before: &[(String, usize, usize)], after: &[(String, usize, usize)]) -> String {
    let mut t = String::from("| lang | prompts | SFT | GRPO |\n|---|---|---|---|\n");
    for (b, a) in before.iter().zip(after) {
        t += &format!("| {} | {} | {:.2} | {:.2} |\n", b.0, b.1, b.2 as f64 / b.1.max(1) as f64, a.2 as f64 / a.1.max(1) as f64);
    }
    let total = |c: &[(String, usize, usize)]| (c.iter().map(|x| x.2).sum::<usize>(), c.iter().map(|x| x.1).sum::<usize>());
    let ((hb, n), (ha, _)) = (total(before), total(after));
    t += &format!("| all | {n} | {:.3} | {:.3} |\n", hb as f64 / n.max(1) as f64, ha as f64 / n.max(1) as f64);
    t
}
