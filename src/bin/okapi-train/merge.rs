//! `okapi-train merge`: a base model and a PEFT LoRA adapter folded into one Hugging Face model
//! (W + s·B·A), as PEFT's `merge_and_unload()` saves it.

use okapi_model::DType;
use okapi_runtime::{Backend, BackendKind};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The base model the adapter was trained on
    #[arg(long)]
    pub model: PathBuf,
    /// The adapter: adapter_config.json + adapter_model.safetensors (okapi's or PEFT's)
    #[arg(long)]
    pub adapter: PathBuf,
    /// Where the merged model goes (Hugging Face layout, with the base's tokenizer.json)
    #[arg(long)]
    pub out: PathBuf,
    /// dtype of the saved weights: f32, bf16 or f16 (default: the base's)
    #[arg(long)]
    pub save_dtype: Option<String>,
    #[arg(long, default_value = "cpu")]
    pub backend: BackendKind,
}

pub fn run(a: MergeArgs) -> Result<(), String> {
    super::on_backend!(a.backend, okapi_runtime::Precision::F32, |be| run_on(be, &a))
}

fn run_on<B: Backend>(be: B, a: &MergeArgs) -> Result<(), String> {
    let err = |e: okapi_model::ModelError| e.to_string();
    let dtype = a.save_dtype.as_deref().map(|s| DType::parse(s).ok_or_else(|| format!("--save-dtype {s}: expected f32, bf16 or f16"))).transpose()?;
    for (flag, p) in [("--model", &a.model), ("--adapter", &a.adapter)] {
        if a.out.exists() && std::fs::canonicalize(&a.out).ok() == std::fs::canonicalize(p).ok() {
            return Err(format!("--out {}: is the {flag} directory; write the merged model elsewhere", a.out.display()));
        }
    }
    let mut model = super::lora_flags::load_with_adapter(be, &a.model, Some(&a.adapter))?;
    let n = model.lora_params().iter().map(|&i| model.info[i].numel()).sum::<usize>();
    model.merge_lora().map_err(err)?;
    let tok = a.model.join("tokenizer.json");
    model.save(&a.out, dtype.unwrap_or(model.cfg.dtype), okapi_model::DEFAULT_MAX_SHARD_BYTES, tok.exists().then_some(tok.as_path())).map_err(err)?;
    eprintln!("merge: {} adapter parameters folded into {}; saved in {}", n, a.model.display(), a.out.display());
    Ok(())
}
