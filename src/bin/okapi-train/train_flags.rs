//! The train flags of `sft`, `reward` and `dpo`. Every setting flag is optional: unset, it
//! takes the value of the command's recipe — okapi-train's defaults, or Okapi's published
//! settings with `--recipe okapi` (okapi-rlhf's `TrainConfig::okapi_sft`, …). `--help` prints
//! each default and, where it differs, Okapi's value ([`annotate`]).

use okapi_data::{parse_langs, ChatTemplate, PromptTemplate, RecordFormat};
use okapi_model::DType;
use okapi_rlhf::{AdamWConfig, ScheduleKind, TrainConfig};
use okapi_runtime::{BackendKind, Precision};
use std::path::{Path, PathBuf};

/// Which settings unset flags take.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recipe {
    /// okapi-train's defaults
    #[default]
    Default,
    /// the settings Okapi published for this stage (its scripts, on 8 GPUs)
    Okapi,
}

/// The training stage a set of train flags belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Sft,
    Reward,
    Dpo,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Sft => "sft",
            Stage::Reward => "reward",
            Stage::Dpo => "dpo",
        }
    }

    /// The stage's settings under `recipe`.
    pub fn config(self, recipe: Recipe) -> Result<TrainConfig, String> {
        Ok(match (self, recipe) {
            (Stage::Sft, Recipe::Default) => TrainConfig::sft(),
            (Stage::Sft, Recipe::Okapi) => TrainConfig::okapi_sft(),
            (Stage::Reward, Recipe::Default) => TrainConfig::reward(),
            (Stage::Reward, Recipe::Okapi) => TrainConfig::okapi_reward(),
            (Stage::Dpo, Recipe::Default) => TrainConfig::dpo(),
            (Stage::Dpo, Recipe::Okapi) => return Err("--recipe okapi: Okapi has no DPO stage (its recipes are sft, reward and ppo); dpo's defaults are TRL's".into()),
        })
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct TrainFlags {
    /// Compute backend: auto, cpu, wgpu or cuda
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
    /// f32 (exact) or bf16 (matmul and attention on bf16 operands, fp32 accumulation; GPU backends)
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Settings of the flags left unset: default (okapi-train's) or okapi (Okapi's published recipe)
    #[arg(long, value_enum, default_value_t = Recipe::Default)]
    pub recipe: Recipe,
    /// Passes over the training data
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Stop after this many optimizer steps (overrides --epochs)
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Examples (ranking data: prompts) per micro-batch
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Peak learning rate
    #[arg(long)]
    pub lr: Option<f64>,
    /// constant, linear or cosine (transformers' schedules, with warmup)
    #[arg(long)]
    pub lr_schedule: Option<ScheduleKind>,
    /// Linear warmup steps
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Decoupled weight decay, on tensors with ≥ 2 dims only
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// AdamW's B1,B2
    #[arg(long)]
    pub adam_betas: Option<String>,
    /// AdamW's epsilon
    #[arg(long)]
    pub adam_eps: Option<f32>,
    /// Clip the global gradient norm (0 = no clipping)
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// Tokens per example (prompt + response + EOS), cut from the right
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Seed of the shuffles, the validation split and fresh heads
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep file order instead of a seeded shuffle each epoch
    #[arg(long)]
    pub no_shuffle: bool,
    /// Loss on the whole sequence (Okapi's original SFT) instead of the response only
    #[arg(long, conflicts_with = "mask_prompt")]
    pub no_mask_prompt: bool,
    /// Loss on the response only (overrides a recipe's whole-sequence loss)
    #[arg(long)]
    pub mask_prompt: bool,
    /// Train only the top N blocks, the final norm and the heads
    #[arg(long)]
    pub unfrozen_layers: Option<usize>,
    /// Only these languages, e.g. vi,ar,hi (a record's `lang`, else its file name `{lang}.json`)
    #[arg(long)]
    pub langs: Option<String>,
    /// How records become text: `chat` (the model's chat template, for every record), `okapi`
    /// (Okapi's template), or a prompt template file (alpaca-lora JSON: prompt_input,
    /// prompt_no_input). Unset: Okapi's template, and conversations in the model's chat template
    #[arg(long)]
    pub template: Option<PathBuf>,
    /// Fraction of the examples held out for validation
    #[arg(long)]
    pub val_fraction: Option<f64>,
    /// Validation loss every N steps
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Checkpoint (model + optimizer + data position) every N steps into OUT/checkpoint
    #[arg(long)]
    pub save_every: Option<u64>,
    /// dtype of the saved model: f32, bf16 or f16 (default: the input checkpoint's)
    #[arg(long)]
    pub save_dtype: Option<String>,
    /// Continue a run from OUT (or OUT/checkpoint) exactly where it stopped
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Replace the run already in OUT (its files are removed once this run's inputs are read)
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Run even when the memory plan says the run does not fit (printed as a warning)
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub memory: MemoryFlags,
    #[command(flatten)]
    pub lora: super::lora_flags::LoraFlags,
    /// Without a terminal, print a progress line every N steps
    #[arg(long)]
    pub log_every: Option<u64>,
    /// Also write each step's metrics as TensorBoard scalars (event files) into DIR
    #[arg(long, value_name = "DIR")]
    pub tensorboard: Option<PathBuf>,
    /// Data-parallel runs: 1 shards the AdamW moments over the ranks (each steps its share of
    /// the tensors; the same numbers as 0, every rank holding the whole state); 2 also shards
    /// the blocks' gradients, reduced to their owners as the backward runs (every micro-batch
    /// must give each rank an item)
    #[arg(long, default_value_t = 0)]
    pub zero: u8,
}

/// `--adam-betas B1,B2`, each in [0, 1).
pub fn parse_betas(s: &str) -> Result<(f32, f32), String> {
    let parse = |x: &str| x.trim().parse::<f32>().ok().filter(|b| (0.0..1.0).contains(b));
    match s.split(',').collect::<Vec<_>>().as_slice() {
        [a, b] => match (parse(a), parse(b)) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => Err(format!("--adam-betas {s}: expected B1,B2 with each in [0, 1)")),
        },
        _ => Err(format!("--adam-betas {s}: expected two numbers B1,B2")),
    }
}

impl TrainFlags {
    pub fn langs(&self) -> Result<Option<Vec<String>>, String> {
        self.langs.as_deref().map(parse_langs).transpose()
    }

    /// How the records become text for `model` (`--template`, see [`record_format`]).
    pub fn record_format(&self, model: &Path) -> Result<RecordFormat, String> {
        record_format(self.template.as_deref(), model)
    }

    /// The stage's recipe with every flag that is set applied over it, each validated.
    pub fn resolve(&self, stage: Stage) -> Result<TrainConfig, String> {
        self.check_head_chunk(stage)?;
        let r = stage.config(self.recipe)?;
        let (beta1, beta2) = match &self.adam_betas {
            None => (r.adam.beta1, r.adam.beta2),
            Some(s) => parse_betas(s)?,
        };
        let save_dtype = match &self.save_dtype {
            None => None,
            Some(s) => Some(DType::parse(s).ok_or_else(|| format!("--save-dtype {s}: expected f32, bf16 or f16"))?),
        };
        let cfg = TrainConfig {
            epochs: self.epochs.unwrap_or(r.epochs),
            max_steps: self.max_steps.or(r.max_steps),
            batch_size: self.batch_size.unwrap_or(r.batch_size),
            grad_accum: self.grad_accum.unwrap_or(r.grad_accum),
            lr: self.lr.unwrap_or(r.lr),
            schedule: self.lr_schedule.unwrap_or(r.schedule),
            warmup_steps: self.warmup_steps.unwrap_or(r.warmup_steps),
            adam: AdamWConfig { beta1, beta2, eps: self.adam_eps.unwrap_or(r.adam.eps), weight_decay: self.weight_decay.unwrap_or(r.adam.weight_decay) },
            max_grad_norm: self.max_grad_norm.unwrap_or(r.max_grad_norm),
            max_len: self.max_len.unwrap_or(r.max_len),
            mask_prompt: if self.no_mask_prompt { false } else { self.mask_prompt || r.mask_prompt },
            val_fraction: self.val_fraction.unwrap_or(r.val_fraction),
            // with LoRA the recipe's layer freezing gives way to the adapters (the flag does not)
            unfrozen_layers: self.unfrozen_layers.or(r.unfrozen_layers.filter(|_| !self.lora.requested())),
            seed: self.seed.unwrap_or(r.seed),
            shuffle: !self.no_shuffle && r.shuffle,
            eval_every: self.eval_every.or(r.eval_every),
            save_every: self.save_every.or(r.save_every),
            save_dtype,
            log_every: self.log_every.unwrap_or(r.log_every),
            resume: self.resume.clone(),
            zero: self.zero,
        };
        validate(&cfg)?;
        if cfg.zero > 0 && self.memory.offload_optimizer {
            return Err(format!("--zero {} with --offload-optimizer: choose one (the offload keeps the whole AdamW state in host memory)", cfg.zero));
        }
        Ok(cfg)
    }
}

/// The memory techniques of the training commands (sft, reward, dpo, ppo) and of `plan`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MemoryFlags {
    /// Activation checkpointing: keep each block's input only and recompute the block in the
    /// backward (the same gradients, bit for bit on the CPU; one more forward per step)
    #[arg(long)]
    pub grad_checkpointing: bool,
    /// Compute the LM head and the loss N rows (tokens) at a time, so the batch's (tokens ×
    /// vocabulary) logits never exist whole (the same numbers to float rounding; not reward)
    #[arg(long)]
    pub lm_head_chunk: Option<usize>,
    /// Keep the linear weights of the frozen blocks (below --unfrozen-layers; in PPO also every
    /// block of the reference and the reward model) in bf16: half their memory; the run then
    /// computes with, and saves, their bf16-rounded values
    #[arg(long)]
    pub frozen_bf16: bool,
    /// Keep the fp32 master weights and AdamW moments in host memory and run the AdamW step on
    /// the CPU (what lets a full 7B SFT fit one 80 GB GPU); the same parameters on the CPU backend
    #[arg(long)]
    pub offload_optimizer: bool,
}

impl MemoryFlags {
    /// `--lm-head-chunk 0` is refused (one line).
    pub fn validate(&self) -> Result<(), String> {
        match self.lm_head_chunk {
            Some(0) => Err("--lm-head-chunk 0: must be at least 1".into()),
            _ => Ok(()),
        }
    }

    /// The flags for args.json.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "grad_checkpointing": self.grad_checkpointing, "lm_head_chunk": self.lm_head_chunk, "frozen_bf16": self.frozen_bf16, "offload_optimizer": self.offload_optimizer })
    }

    /// The memory techniques these flags ask for, on `model` with `unfrozen` top layers training.
    pub fn techniques(&self, model: &okapi_model::ModelConfig, unfrozen: Option<usize>) -> okapi_model::memory::Techniques {
        let bf16_blocks = if self.frozen_bf16 { model.n_layers - unfrozen.unwrap_or(model.n_layers).min(model.n_layers) } else { 0 };
        okapi_model::memory::Techniques { checkpointed: self.grad_checkpointing, head_chunk: self.lm_head_chunk, bf16_blocks, offload: self.offload_optimizer, adapters: 0, zero_ranks: 0, zero_grads: false }
    }

    /// The model settings these flags choose: checkpointing, the chunked head, the offload.
    pub fn configure<B: okapi_runtime::Backend>(&self, model: &mut okapi_model::Model<B>) {
        model.grad_checkpointing = self.grad_checkpointing;
        model.head_chunk = self.lm_head_chunk;
        model.offload_optimizer = self.offload_optimizer;
    }

    /// Sets a loaded model up as the memory flags say: [`MemoryFlags::configure`], and the frozen
    /// blocks in bf16.
    pub fn apply_to<B: okapi_runtime::Backend>(&self, model: &mut okapi_model::Model<B>, unfrozen: Option<usize>) -> Result<(), String> {
        self.configure(model);
        if self.frozen_bf16 {
            let mask = model.trainable_mask(unfrozen).map_err(|e| e.to_string())?;
            model.freeze_in_bf16(&mask);
        }
        Ok(())
    }

}

impl TrainFlags {
    /// `--lm-head-chunk`: at least 1, and only where there is an LM head (sft, dpo).
    pub fn check_head_chunk(&self, stage: Stage) -> Result<(), String> {
        self.memory.validate()?;
        match (self.memory.lm_head_chunk, stage) {
            (None, _) | (Some(_), Stage::Sft | Stage::Dpo) => Ok(()),
            (Some(n), other) => Err(format!("--lm-head-chunk {n}: {} has no LM head to chunk (a reward model scores with its score head)", other.name())),
        }
    }
}

/// The checks of a training command before its backend starts: its flags, then its data
/// paths (expanded in place: directories and globs to their files), so a wrong path fails at
/// once and a wrong flag is still named first.
pub fn check_flags_and_data(flags: &TrainFlags, stage: Stage, data: &mut Vec<PathBuf>) -> Result<(), String> {
    flags.resolve(stage)?;
    *data = okapi_data::expand_data_paths("--data", data)?;
    Ok(())
}

/// `--template` for `model`: `chat` puts every record through the model's chat template;
/// `okapi` or a file puts Okapi's records through that prompt template and refuses
/// conversations; unset, Okapi's template for Okapi's records and the model's chat template
/// (when it has one) for conversations.
pub fn record_format(flag: Option<&Path>, model: &Path) -> Result<RecordFormat, String> {
    let chat = || ChatTemplate::load(model).map_err(|e| e.to_string());
    let refused = |why: String| RecordFormat { no_chat: why, ..RecordFormat::prompt_only(PromptTemplate::okapi()) };
    match flag {
        Some(p) if p == Path::new("chat") => match chat()? {
            Some(t) => Ok(RecordFormat::chat(t)),
            None => Err(format!("--template chat: {} has no chat template (no `chat_template` in its tokenizer_config.json, no chat_template.jinja)", model.display())),
        },
        Some(p) if p == Path::new("okapi") => Ok(refused("a conversation needs --template chat (not --template okapi)".into())),
        Some(p) => {
            let prompt = PromptTemplate::load(p).map_err(|e| e.to_string())?;
            Ok(RecordFormat { prompt, ..refused(format!("a conversation needs --template chat (not the prompt template {})", p.display())) })
        }
        // a broken chat template only matters to the conversations that need it
        None => Ok(match chat() {
            Ok(Some(t)) => RecordFormat { chat: Some(t), ..RecordFormat::prompt_only(PromptTemplate::okapi()) },
            Ok(None) => refused(format!("a conversation needs a chat template, and {} has none (`chat_template` in tokenizer_config.json)", model.display())),
            Err(e) => refused(e),
        }),
    }
}

/// Refuses settings that cannot train, naming the flag.
fn validate(c: &TrainConfig) -> Result<(), String> {
    c.validate().map_err(|e| e.to_string())
}

/// `--zero 2` on several ranks: every micro-batch of the `n_train` items must give each rank an
/// item (checked before the run writes anything).
pub fn check_zero_shares(cfg: &TrainConfig, n_train: usize) -> Result<(), String> {
    let world = super::ranks::comm().world();
    if cfg.zero == 2 && world > 1 {
        okapi_rlhf::trainer::check_shares(n_train, "training items", cfg.batch_size, "--batch-size", world).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The memory check of a training run before its model is loaded: `rows` (B·T) is the largest
/// batch of tokens it will see. A run that fits prints its memory plan; one that does not is
/// refused in one line (run anyway with `force`).
pub fn check_training_memory<B: okapi_runtime::Backend>(be: &B, model: &okapi_model::ModelConfig, cfg: &TrainConfig, rows: usize, flags: &TrainFlags) -> Result<(), String> {
    let (trainable, mut techniques) = trained_params(model, cfg.unfrozen_layers, &flags.memory, &flags.lora)?;
    if cfg.zero >= 1 {
        techniques.zero_ranks = super::ranks::comm().world();
        techniques.zero_grads = cfg.zero == 2;
    }
    let need = okapi_model::memory::training_run_need(model, trainable, rows, techniques, "lower --batch-size or --max-len");
    let force = flags.force;
    need.check_or_force(be, force).map_err(|e| e.to_string())?;
    eprint!("{}", need.table(be));
    Ok(())
}

/// The parameters a run trains and its memory techniques: the top `unfrozen` layers (and the
/// heads), or with LoRA the adapters (and a reward model's score head) on a wholly frozen base.
pub fn trained_params(model: &okapi_model::ModelConfig, unfrozen: Option<usize>, memory: &MemoryFlags, lora: &super::lora_flags::LoraFlags) -> Result<(u128, okapi_model::memory::Techniques), String> {
    Ok(match lora.config(model.arch)? {
        Some(lora) => {
            let adapters = lora.param_count(model);
            let score = if model.head == okapi_model::Head::Score { model.hidden_size as u128 } else { 0 };
            (adapters + score, okapi_model::memory::Techniques { adapters, ..memory.techniques(model, Some(0)) })
        }
        None => (model.trainable_count(unfrozen).map_err(|e| e.to_string())?, memory.techniques(model, unfrozen)),
    })
}

/// With `--resume`: the checks that need no model or data (a checkpoint of this command with
/// the same settings), before anything heavy is loaded.
pub fn precheck_resume(cfg: &TrainConfig, command: &'static str, objective: &[(&str, serde_json::Value)]) -> Result<(), String> {
    let Some(dir) = &cfg.resume else { return Ok(()) };
    let mut settings = cfg.trajectory_settings();
    settings.extend(objective.iter().map(|(k, v)| (k.to_string(), v.clone())));
    okapi_rlhf::checkpoint::precheck_resume(dir, command, &settings).map_err(|e| e.to_string())
}

/// The EOS id every response ends with, from config.json.
pub fn eos_of(model: &okapi_model::ModelConfig) -> Result<u32, String> {
    model.eos_token_id.ok_or_else(|| format!("{}: field `eos_token_id` is needed to end responses", model.path.display()))
}

/// An f32 setting as the number it was written as (0.95, not 0.949999988079071).
pub fn f32_value(x: f32) -> serde_json::Value {
    x.to_string().parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// `args.json`: the command line, every resolved setting, and every flag's value (`flags`: a
/// config that repeats the run).
pub fn args_json(command: &str, cfg: &TrainConfig, extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({
        "command": command,
        "argv": std::env::args().collect::<Vec<_>>(),
        "epochs": cfg.epochs, "max_steps": cfg.max_steps, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
        "lr": cfg.lr, "lr_schedule": cfg.schedule, "warmup_steps": cfg.warmup_steps,
        "adam_betas": [f32_value(cfg.adam.beta1), f32_value(cfg.adam.beta2)], "adam_eps": f32_value(cfg.adam.eps), "weight_decay": f32_value(cfg.adam.weight_decay),
        "max_grad_norm": cfg.max_grad_norm, "max_len": cfg.max_len, "mask_prompt": cfg.mask_prompt, "val_fraction": cfg.val_fraction,
        "unfrozen_layers": cfg.unfrozen_layers, "seed": cfg.seed, "shuffle": cfg.shuffle,
        "eval_every": cfg.eval_every, "save_every": cfg.save_every, "save_dtype": cfg.save_dtype.map(|d| d.hf_name()),
        "resume": cfg.resume,
    });
    if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    super::config::add_to_args_json(&mut v);
    v
}

// ---- --help: each default, and Okapi's value where it differs ---------------------------------

/// The values `--help` shows for the train flags, by argument id.
fn shown(c: &TrainConfig) -> Vec<(&'static str, String)> {
    let opt = |x: Option<u64>, none: &str| x.map_or(none.to_string(), |v| v.to_string());
    vec![
        ("epochs", c.epochs.to_string()),
        ("batch_size", c.batch_size.to_string()),
        ("grad_accum", c.grad_accum.to_string()),
        ("lr", format!("{:e}", c.lr)),
        ("lr_schedule", format!("{:?}", c.schedule).to_lowercase()),
        ("warmup_steps", c.warmup_steps.to_string()),
        ("weight_decay", c.adam.weight_decay.to_string()),
        ("adam_betas", format!("{},{}", c.adam.beta1, c.adam.beta2)),
        ("adam_eps", format!("{:e}", c.adam.eps)),
        ("max_grad_norm", c.max_grad_norm.to_string()),
        ("max_len", c.max_len.to_string()),
        ("seed", c.seed.to_string()),
        ("unfrozen_layers", c.unfrozen_layers.map_or("all".into(), |n| n.to_string())),
        ("val_fraction", c.val_fraction.to_string()),
        ("eval_every", opt(c.eval_every, "never")),
        ("mask_prompt", if c.mask_prompt { "on".into() } else { "off".into() }),
        ("log_every", c.log_every.to_string()),
    ]
}

/// Appends "[default: X]" to a flag's help, and "; Okapi's: Y (--recipe okapi)" where `okapi`
/// has another value (`okapi` None: the stage has no Okapi recipe).
pub fn annotate_arg(cmd: clap::Command, id: &'static str, default: &str, okapi: Option<&str>) -> clap::Command {
    cmd.mut_arg(id, |a| {
        let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
        let okapi = match okapi {
            Some(o) if o != default => format!("; Okapi's: {o} (--recipe okapi)"),
            Some(_) => ", as Okapi".to_string(),
            None => String::new(),
        };
        a.help(format!("{help} [default: {default}{okapi}]"))
    })
}

/// The help of a training subcommand's flags, from its two recipes.
fn annotate_stage(mut cmd: clap::Command, stage: Stage) -> clap::Command {
    let default = shown(&stage.config(Recipe::Default).expect("every stage has defaults"));
    let okapi = stage.config(Recipe::Okapi).ok().map(|c| shown(&c));
    for (i, (id, d)) in default.iter().enumerate() {
        cmd = annotate_arg(cmd, id, d, okapi.as_ref().map(|o| o[i].1.as_str()));
    }
    cmd
}

/// Every training subcommand's --help with its defaults and Okapi's.
pub fn annotate(cmd: clap::Command) -> clap::Command {
    let cmd = cmd.mut_subcommand("sft", |c| annotate_stage(c, Stage::Sft));
    let cmd = cmd.mut_subcommand("reward", |c| annotate_stage(c, Stage::Reward));
    let cmd = cmd.mut_subcommand("dpo", |c| annotate_stage(c, Stage::Dpo));
    let cmd = cmd.mut_subcommand("grpo", super::group::annotate(okapi_rlhf::ppo::group::Algo::Grpo));
    let cmd = cmd.mut_subcommand("rloo", super::group::annotate(okapi_rlhf::ppo::group::Algo::Rloo));
    cmd.mut_subcommand("ppo", super::ppo::annotate)
}
