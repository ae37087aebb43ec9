//! `okapi-train reward`, `okapi-train dpo` and `okapi-train score`: the commands on ranking data.

use super::outdir;
use super::sft::losses;
use super::train_flags::{args_json, check_flags_and_data, check_training_memory, eos_of, precheck_resume, Stage, TrainFlags};
use okapi_data::{load_preferences, PromptGroup, SftEncoding, Tokenizer};
use okapi_model::{Model, ModelConfig};
use okapi_rlhf::pairwise::{capacity, groups_fingerprint};
use okapi_rlhf::trainer::{check_resume, train_data_parallel};
use okapi_rlhf::reward::score_records_metered;
use okapi_rlhf::{split_val, DpoObjective, RewardObjective, RunDir, TrainConfig, TrainSummary};
use okapi_runtime::Backend;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct RewardArgs {
    /// Starting model: an SFT model (a fresh, seeded score head is added) or a reward model
    #[arg(long)]
    pub model: PathBuf,
    /// Ranking files, directories or globs: pairs {"instruction","input","prefered_output",
    /// "rejected_output"} (also preferred_output, chosen/rejected), ranked lists
    /// {"instruction","input","responses":[best…worst]}, or TRL's {"prompt","chosen","rejected"}
    /// (strings or message lists; without prompt, the common start is the prompt)
    #[arg(long, num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    /// Margin m in −log σ(r_chosen − r_rejected − m)
    #[arg(long, default_value_t = 0.0)]
    pub margin: f64,
    #[command(flatten)]
    pub train: TrainFlags,
}

#[derive(clap::Args, Debug)]
pub struct DpoArgs {
    /// Starting policy (an SFT model); the frozen reference is this same model
    #[arg(long)]
    pub model: PathBuf,
    /// Ranking files, directories or globs, as for `reward`
    #[arg(long, num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    /// β of the DPO loss
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    #[command(flatten)]
    pub train: TrainFlags,
}

/// Ranking files → tokenized prompt groups, with the skip counts in one line.
pub fn load_groups(files: &[PathBuf], flags: &TrainFlags, cfg: &TrainConfig, tok: &Tokenizer, eos: u32, model: &Path) -> Result<(Vec<PromptGroup>, String), String> {
    let langs = flags.langs()?;
    let format = flags.record_format(model)?;
    let enc = SftEncoding { max_len: cfg.max_len, mask_prompt: true, eos };
    let (records, mut stats) = load_preferences(files, langs.as_deref()).map_err(|e| e.to_string())?;
    let mut groups = Vec::with_capacity(records.len());
    for r in &records {
        match r.encode(tok, &format, &enc).map_err(|e| e.to_string())? {
            Some(g) => groups.push(g),
            None => stats.skipped_too_long += 1,
        }
    }
    stats.kept = groups.len();
    let pairs: usize = groups.iter().map(|g| g.pairs.len()).sum();
    let summary = format!("{}; {pairs} pairs", stats.summary());
    if groups.is_empty() {
        return Err(format!("no ranking data after filtering ({summary})"));
    }
    Ok((groups, summary))
}

/// Everything `reward` and `dpo` share, read and checked before the model is loaded:
/// settings, output directory, tokenizer, config, data split, the memory check.
struct PairRun<'a> {
    cfg: TrainConfig,
    /// the output directory (rank 0 of a data-parallel run, or the only process)
    out: Option<outdir::OutDir<'a>>,
    tok: Tokenizer,
    eos: u32,
    train: Vec<PromptGroup>,
    val: Vec<PromptGroup>,
}

/// Reads and checks a pair run's inputs. `objective`: the stage's own settings by flag.
fn prepare<'a, B: Backend>(be: &B, stage: Stage, flags: &TrainFlags, model: &Path, data: &[PathBuf], out: &'a Path, objective: &[(&str, serde_json::Value)]) -> Result<PairRun<'a>, String> {
    let cfg = flags.resolve(stage)?;
    let out = if super::ranks::writes() { Some(outdir::claim(out, &[("--model", model)], cfg.resume.as_deref(), flags.overwrite)?) } else { None };
    precheck_resume(&cfg, stage.name(), objective)?;
    let tok = Tokenizer::load(model).map_err(|e| e.to_string())?;
    let model_cfg = ModelConfig::load(model).map_err(|e| e.to_string())?;
    tok.check_fits(model_cfg.vocab_size, &model_cfg.path).map_err(|e| e.to_string())?;
    model_cfg.trainable_count(cfg.unfrozen_layers).map_err(|e| e.to_string())?;
    let eos = eos_of(&model_cfg)?;
    let (groups, summary) = load_groups(data, flags, &cfg, &tok, eos, model)?;
    eprintln!("{}: {summary}", stage.name());
    let (cap_b, cap_t) = capacity(&groups, cfg.batch_size);
    // the reward model is the LM with a score head instead of its LM head
    let mut planned = model_cfg.clone();
    if stage == Stage::Reward {
        planned.head = okapi_model::Head::Score;
    }
    check_training_memory(be, &planned, &cfg, cap_b.saturating_mul(cap_t), flags)?;
    let (train, val) = split_val(groups, cfg.val_fraction, cfg.seed);
    super::train_flags::check_zero_shares(&cfg, train.len())?;
    let settings = objective.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    check_resume(&cfg, stage.name(), &model_cfg, groups_fingerprint(&train, &val), train.len(), settings).map_err(|e| e.to_string())?;
    Ok(PairRun { cfg, out, tok, eos, train, val })
}

impl<'a> PairRun<'a> {
    /// Trains `obj` as this process's rank: rank 0 writes `args` into args.json first, then the
    /// run into `dir`, and copies the tokenizer's config from `model` at the end.
    fn train<B: Backend, O: okapi_rlhf::trainer::Objective<B>>(&self, model: Model<B>, obj: &mut O, args: serde_json::Value, paths: (&Path, &'a Path), tensorboard: Option<&Path>) -> Result<TrainSummary, String> {
        let (model_dir, dir) = paths;
        let run_dir = match &self.out {
            Some(out) => {
                out.write_args(args)?;
                Some(RunDir { dir, tokenizer: Some(&self.tok.path), tensorboard })
            }
            None => None,
        };
        let (_, s) = train_data_parallel(model, obj, &self.cfg, run_dir, super::ranks::comm()).map_err(|e| e.to_string())?;
        if self.out.is_some() {
            outdir::copy_tokenizer_config(model_dir, dir)?;
        }
        Ok(s)
    }

    /// One line on what trains on what; the pad id of the batches.
    fn announce<B: Backend>(&self, stage: Stage, model: &Model<B>) -> Result<u32, String> {
        let mask = model.trainable_mask(self.cfg.unfrozen_layers).map_err(|e| e.to_string())?;
        let n_train = mask.iter().zip(&model.info).filter(|(m, _)| **m).map(|(_, p)| p.numel()).sum::<usize>();
        eprintln!("{}: {} on {}: {} train / {} validation prompts; {n_train} of {} parameters train", stage.name(), model.cfg.path.display(), model.be.name(), self.train.len(), self.val.len(), model.n_params());
        Ok(model.cfg.pad_token_id.unwrap_or(self.eos))
    }
}

pub fn run_reward(mut a: RewardArgs) -> Result<(), String> {
    check_flags_and_data(&a.train, Stage::Reward, &mut a.data)?;
    super::on_backend!(a.train.backend, a.train.precision, |be| run_reward_on(be, &a))
}

fn run_reward_on<B: Backend>(be: B, a: &RewardArgs) -> Result<(), String> {
    if !a.margin.is_finite() {
        return Err(format!("--margin {}: expected a finite number", a.margin));
    }
    let mut r = prepare(&be, Stage::Reward, &a.train, &a.model, &a.data, &a.out, &[("--margin", a.margin.into())])?;
    let mut model = Model::load_reward(be, &a.model, r.cfg.seed).map_err(|e| e.to_string())?;
    a.train.lora.apply(&mut model, r.cfg.seed)?;
    a.train.memory.apply_to(&mut model, r.cfg.unfrozen_layers)?;
    if model.cfg.pad_token_id.is_none_or(|p| p == r.eos) {
        // transformers scores the last non-pad token: with pad == EOS it would skip the EOS
        match r.tok.token_to_id("<pad>").filter(|&p| p != r.eos) {
            Some(p) => model.set_pad_token(p),
            None => eprintln!("reward: warning: no pad token distinct from EOS; transformers will score the token before the EOS"),
        }
    }
    let pad = r.announce(Stage::Reward, &model)?;
    let args = args_json("reward", &r.cfg, serde_json::json!({ "model": a.model, "data": a.data, "out": a.out, "margin": a.margin, "langs": a.train.langs, "template": a.train.template, "memory": a.train.memory.json(), "lora": a.train.lora.json(), "tensorboard": a.train.tensorboard }));
    let (train, val) = (std::mem::take(&mut r.train), std::mem::take(&mut r.val));
    let mut obj = RewardObjective::new(&model, train, val, r.cfg.batch_size, pad, a.margin);
    let s = r.train(model, &mut obj, args, (&a.model, &a.out), a.train.tensorboard.as_deref())?;
    eprintln!(
        "reward: {}, accuracy {}{}; reward model saved in {}",
        losses(&s),
        s.last_extra.get("accuracy").map(|v| v.to_string()).unwrap_or_default(),
        s.val.as_ref().and_then(|v| v.get("val_accuracy")).map(|v| format!(", validation accuracy {v}")).unwrap_or_default(),
        a.out.display()
    );
    Ok(())
}

pub fn run_dpo(mut a: DpoArgs) -> Result<(), String> {
    check_flags_and_data(&a.train, Stage::Dpo, &mut a.data)?;
    super::on_backend!(a.train.backend, a.train.precision, |be| run_dpo_on(be, &a))
}

fn run_dpo_on<B: Backend>(be: B, a: &DpoArgs) -> Result<(), String> {
    if !(a.beta.is_finite() && a.beta > 0.0) {
        return Err(format!("--beta {}: expected a positive number", a.beta));
    }
    let mut r = prepare(&be, Stage::Dpo, &a.train, &a.model, &a.data, &a.out, &[("--beta", a.beta.into())])?;
    let mut model = Model::load(be, &a.model).map_err(|e| e.to_string())?;
    a.train.lora.apply(&mut model, r.cfg.seed)?;
    a.train.memory.apply_to(&mut model, r.cfg.unfrozen_layers)?;
    model.lm_head().map_err(|e| e.to_string())?;
    let pad = r.announce(Stage::Dpo, &model)?;
    eprintln!("dpo: β {}", a.beta);
    let args = args_json("dpo", &r.cfg, serde_json::json!({ "model": a.model, "data": a.data, "out": a.out, "beta": a.beta, "langs": a.train.langs, "template": a.train.template, "memory": a.train.memory.json(), "lora": a.train.lora.json(), "tensorboard": a.train.tensorboard }));
    // the reference is the initial policy; with LoRA, the base with the adapters off (as TRL)
    let (train, val) = (std::mem::take(&mut r.train), std::mem::take(&mut r.val));
    let mut obj = model.with_adapters_off(|base| DpoObjective::new(base, train, val, r.cfg.batch_size, pad, a.beta)).map_err(|e| e.to_string())?;
    let s = r.train(model, &mut obj, args, (&a.model, &a.out), a.train.tensorboard.as_deref())?;
    eprintln!("dpo: {}, reward accuracy {}; policy saved in {}", losses(&s), s.last_extra.get("reward_accuracy").map(|v| v.to_string()).unwrap_or_default(), a.out.display());
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    /// Reward model directory (ForSequenceClassification, one label), or the base of --adapter
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT LoRA adapter of a reward model (with its score head) applied to --model
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Records to score: ranking records (every response) or instruction records (the output)
    #[arg(long)]
    pub data: PathBuf,
    /// JSONL, one line per record: {"rewards": [one per response]} (stdout without)
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 768)]
    pub max_len: usize,
    #[arg(long, default_value = "auto")]
    pub backend: okapi_runtime::BackendKind,
    /// f32 (exact) or bf16 (matmul and attention on bf16 operands, fp32 accumulation; GPU backends)
    #[arg(long, default_value = "f32")]
    pub precision: okapi_runtime::Precision,
}

pub fn run_score(a: ScoreArgs) -> Result<(), String> {
    super::on_backend!(a.backend, a.precision, |be| run_score_on(be, &a))
}

fn run_score_on<B: Backend>(be: B, a: &ScoreArgs) -> Result<(), String> {
    if let Some(out) = &a.output {
        outdir::check_output_file("--output", out, &[&a.data], &[("--model", &a.model)])?;
    }
    if a.batch_size == 0 || a.max_len < 2 {
        return Err(format!("--batch-size {} / --max-len {}: expected at least 1 / at least 2", a.batch_size, a.max_len));
    }
    let records = okapi_data::ranking::load_scoring_records(&a.data).map_err(|e| e.to_string())?;
    let tok = Tokenizer::load(&a.model).map_err(|e| e.to_string())?;
    let model_cfg = ModelConfig::load(&a.model).map_err(|e| e.to_string())?;
    tok.check_fits(model_cfg.vocab_size, &model_cfg.path).map_err(|e| e.to_string())?;
    let model = super::lora_flags::load_with_adapter(be, &a.model, a.adapter.as_deref())?;
    let mut meter = okapi_rlhf::progress::Meter::new("score", "records", records.len() as u64);
    let rewards = score_records_metered(&model, &tok, &records, a.max_len, a.batch_size, super::ranks::comm(), &mut meter).map_err(|e| e.to_string())?;
    let lines: String = rewards.iter().map(|r| format!("{}\n", serde_json::json!({ "rewards": r }))).collect();
    // every rank has every record's rewards; rank 0 writes them
    match &a.output {
        Some(_) if !super::ranks::writes() => Ok(()),
        Some(p) => outdir::write_output(p, &lines),
        None => {
            print!("{lines}");
            Ok(())
        }
    }
}
