//! The LoRA flags of the training commands: train PEFT-style low-rank adapters instead of the
//! weights, or continue training an adapter PEFT (or okapi) saved.

use okapi_model::lora::{read_adapter, read_adapter_config, LoraConfig, Targets};
use okapi_model::{Arch, Model};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct LoraFlags {
    /// Train LoRA adapters of rank R on the base's linear layers instead of the weights (PEFT's
    /// LoRA; the output is adapter_config.json + adapter_model.safetensors)
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// LoRA's α: the adapter's output is scaled by α/r (PEFT's default 8)
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// Dropout on the adapter's input (PEFT's default 0)
    #[arg(long)]
    pub lora_dropout: Option<f64>,
    /// Modules to adapt: Hugging Face names (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
    /// for LLaMA; query_key_value,dense,dense_h_to_4h,dense_4h_to_h for BLOOM) or all-linear
    /// (default: PEFT's, q_proj,v_proj for LLaMA and query_key_value for BLOOM)
    #[arg(long)]
    pub lora_targets: Option<String>,
    /// Scale the adapter by α/√r (rank-stabilised LoRA) instead of α/r
    #[arg(long)]
    pub use_rslora: bool,
    /// Continue training this PEFT LoRA adapter (a directory with adapter_config.json and
    /// adapter_model.safetensors; its settings replace the --lora-* flags)
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

impl LoraFlags {
    /// Whether any LoRA flag is given.
    pub fn requested(&self) -> bool {
        self.lora_r.is_some() || self.lora_alpha.is_some() || self.lora_dropout.is_some() || self.lora_targets.is_some() || self.use_rslora || self.adapter.is_some()
    }

    /// The adapter settings for a model of `arch`: `--adapter`'s, or the flags' (PEFT's defaults
    /// where unset); `None` without LoRA flags.
    pub fn config(&self, arch: Arch) -> Result<Option<LoraConfig>, String> {
        if let Some(dir) = &self.adapter {
            if self.lora_r.is_some() || self.lora_alpha.is_some() || self.lora_dropout.is_some() || self.lora_targets.is_some() || self.use_rslora {
                return Err(format!("--adapter {}: its adapter_config.json sets the LoRA settings; drop the --lora-* flags", dir.display()));
            }
            return read_adapter_config(dir).map(Some).map_err(|e| e.to_string());
        }
        let Some(r) = self.lora_r else {
            return match self.requested() {
                true => Err("--lora-alpha, --lora-dropout, --lora-targets and --use-rslora need --lora-r (or --adapter)".into()),
                false => Ok(None),
            };
        };
        let targets = match self.lora_targets.as_deref() {
            Some(t) => LoraConfig::parse_targets(t),
            // PEFT's default targets for the architecture
            None => Targets::Names(arch.names().lora_default.iter().map(|t| t.to_string()).collect()),
        };
        let cfg = LoraConfig { r, alpha: self.lora_alpha.unwrap_or(8.0), dropout: self.lora_dropout.unwrap_or(0.0), targets, rslora: self.use_rslora };
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(Some(cfg))
    }

    /// Puts the adapters on a loaded base, A drawn from the run's `seed` (before the memory
    /// flags, which then keep the frozen base in bf16 when asked; a resume then reads the
    /// checkpoint's adapter values into these adapters).
    pub fn apply<B: okapi_runtime::Backend>(&self, model: &mut Model<B>, seed: u64) -> Result<(), String> {
        let Some(lora) = self.config(model.cfg.arch)? else { return Ok(()) };
        match &self.adapter {
            Some(dir) => model.load_adapter(dir).map_err(|e| e.to_string()),
            None => model.add_lora(&lora, seed).map_err(|e| format!("--lora-targets: {e}")),
        }
    }

    /// The flags for args.json.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "lora_r": self.lora_r, "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout, "lora_targets": self.lora_targets, "use_rslora": self.use_rslora, "adapter": self.adapter })
    }
}

/// The model of `dir` with the PEFT LoRA adapter `adapter` on it when given: an adapter of a
/// reward model (task SEQ_CLS) makes a causal-LM base a reward model with the adapter's score
/// head, as PEFT does.
pub fn load_with_adapter<B: okapi_runtime::Backend>(be: B, dir: &Path, adapter: Option<&Path>) -> Result<Model<B>, String> {
    let err = |e: okapi_model::ModelError| e.to_string();
    let Some(adapter) = adapter else { return Model::load(be, dir).map_err(err) };
    let (_, seq_cls) = read_adapter(adapter).map_err(err)?;
    let mut model = if seq_cls { Model::load_reward(be, dir, 0).map_err(err)? } else { Model::load(be, dir).map_err(err)? };
    model.load_adapter(adapter).map_err(err)?;
    Ok(model)
}
