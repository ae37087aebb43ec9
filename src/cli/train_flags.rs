//! The train flags shared by every training command (DESIGN.md §6). Each command supplies its
//! own defaults (Okapi's recipes), so the flags are optional here.

use okapi_data::{parse_langs, PromptTemplate};
use okapi_model::DType;
use okapi_rlhf::{AdamWConfig, ScheduleKind, TrainConfig};
use okapi_runtime::{BackendKind, Precision};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct TrainFlags {
    /// Compute backend: auto, cpu, wgpu or cuda
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
    /// f32 (exact) or bf16 (matmul and attention on bf16 operands, fp32 accumulation; GPU backends)
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Stop after this many optimizer steps (overrides --epochs)
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Examples per micro-batch
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long)]
    pub lr: Option<f64>,
    /// constant, linear or cosine (transformers' schedules, with warmup)
    #[arg(long)]
    pub lr_schedule: Option<ScheduleKind>,
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Decoupled weight decay, on tensors with ≥ 2 dims only
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// B1,B2
    #[arg(long)]
    pub adam_betas: Option<String>,
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f32,
    /// Clip the global gradient norm (0 = no clipping)
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// Tokens per example (prompt + response + EOS), cut from the right
    #[arg(long)]
    pub max_len: Option<usize>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Keep file order instead of a seeded shuffle each epoch
    #[arg(long)]
    pub no_shuffle: bool,
    /// Loss on the whole sequence (Okapi's original SFT) instead of the response only
    #[arg(long)]
    pub no_mask_prompt: bool,
    /// Only these languages, e.g. vi,ar,hi (a record's `lang`, else its file name `{lang}.json`)
    #[arg(long)]
    pub langs: Option<String>,
    /// Prompt template file (alpaca-lora JSON format: prompt_input, prompt_no_input)
    #[arg(long)]
    pub template: Option<PathBuf>,
    /// Fraction of the examples held out for validation
    #[arg(long, default_value_t = 0.0)]
    pub val_fraction: f64,
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
    /// Without a terminal, print a progress line every N steps
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
}

/// A command's defaults for the optional flags.
pub struct Recipe {
    pub epochs: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: u64,
    pub weight_decay: f32,
    pub betas: (f32, f32),
    pub max_grad_norm: f64,
    pub max_len: usize,
}

/// Okapi's SFT recipe.
pub const SFT_RECIPE: Recipe = Recipe {
    epochs: 3,
    batch_size: 8,
    lr: 1e-5,
    schedule: ScheduleKind::Cosine,
    warmup_steps: 300,
    weight_decay: 0.05,
    betas: (0.9, 0.95),
    max_grad_norm: 1.0,
    max_len: 512,
};

/// Okapi's reward-model recipe (the HF Trainer's Adam betas).
pub const RM_RECIPE: Recipe = Recipe {
    epochs: 1,
    batch_size: 8,
    lr: 3e-5,
    schedule: ScheduleKind::Cosine,
    warmup_steps: 50,
    weight_decay: 1e-4,
    betas: (0.9, 0.999),
    max_grad_norm: 1.0,
    max_len: 768,
};

/// DPO (not in Okapi): TRL's defaults.
pub const DPO_RECIPE: Recipe = Recipe {
    epochs: 1,
    batch_size: 8,
    lr: 1e-6,
    schedule: ScheduleKind::Linear,
    warmup_steps: 0,
    weight_decay: 0.0,
    betas: (0.9, 0.999),
    max_grad_norm: 1.0,
    max_len: 768,
};

impl TrainFlags {
    pub fn langs(&self) -> Result<Option<Vec<String>>, String> {
        self.langs.as_deref().map(parse_langs).transpose()
    }

    pub fn template(&self) -> Result<PromptTemplate, String> {
        match &self.template {
            None => Ok(PromptTemplate::okapi()),
            Some(p) => PromptTemplate::load(p).map_err(|e| e.to_string()),
        }
    }

    pub fn max_len(&self, r: &Recipe) -> Result<usize, String> {
        let m = self.max_len.unwrap_or(r.max_len);
        if m < 2 {
            return Err(format!("--max-len {m}: must be at least 2"));
        }
        Ok(m)
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

    /// Resolves the flags over a recipe, validating each.
    pub fn resolve(&self, r: &Recipe) -> Result<TrainConfig, String> {
        let betas = match &self.adam_betas {
            None => r.betas,
            Some(s) => Self::parse_betas(s)?,
        };
        let batch_size = self.batch_size.unwrap_or(r.batch_size);
        if batch_size == 0 || self.grad_accum == 0 {
            return Err("--batch-size and --grad-accum must be at least 1".into());
        }
        let lr = self.lr.unwrap_or(r.lr);
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(format!("--lr {lr}: expected a non-negative number"));
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return Err(format!("--val-fraction {}: expected a fraction in [0, 1)", self.val_fraction));
        }
        let save_dtype = match &self.save_dtype {
            None => None,
            Some(s) => Some(DType::parse(s).ok_or_else(|| format!("--save-dtype {s}: expected f32, bf16 or f16"))?),
        };
        if self.max_steps == Some(0) || self.epochs == Some(0) {
            return Err("--max-steps and --epochs must be at least 1".into());
        }
        Ok(TrainConfig {
            epochs: self.epochs.unwrap_or(r.epochs),
            max_steps: self.max_steps,
            batch_size,
            grad_accum: self.grad_accum,
            lr,
            schedule: self.lr_schedule.unwrap_or(r.schedule),
            warmup_steps: self.warmup_steps.unwrap_or(r.warmup_steps),
            adam: AdamWConfig { beta1: betas.0, beta2: betas.1, eps: self.adam_eps, weight_decay: self.weight_decay.unwrap_or(r.weight_decay) },
            max_grad_norm: self.max_grad_norm.unwrap_or(r.max_grad_norm),
            seed: self.seed,
            shuffle: !self.no_shuffle,
            eval_every: self.eval_every,
            save_every: self.save_every,
            save_dtype,
            log_every: self.log_every,
            resume: self.resume.clone(),
        })
    }
}

/// `args.json`: the command line and every resolved setting.
pub fn args_json(command: &str, cfg: &TrainConfig, extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({
        "command": command,
        "argv": std::env::args().collect::<Vec<_>>(),
        "epochs": cfg.epochs, "max_steps": cfg.max_steps, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
        "lr": cfg.lr, "lr_schedule": cfg.schedule, "warmup_steps": cfg.warmup_steps,
        "adam_betas": [cfg.adam.beta1, cfg.adam.beta2], "adam_eps": cfg.adam.eps, "weight_decay": cfg.adam.weight_decay,
        "max_grad_norm": cfg.max_grad_norm, "seed": cfg.seed, "shuffle": cfg.shuffle,
        "eval_every": cfg.eval_every, "save_every": cfg.save_every, "save_dtype": cfg.save_dtype.map(|d| d.hf_name()),
        "resume": cfg.resume,
    });
    if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}
