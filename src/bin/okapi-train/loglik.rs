use okapi_data::{read_records, LoglikRequest, Tokenizer};
use okapi_rlhf::loglik::score_loglik_metered;
use okapi_runtime::{Backend, BackendKind};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct LoglikArgs {
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json)
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) applied to the model
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// JSONL of {"context": str, "continuation": str}
    #[arg(long)]
    pub data: PathBuf,
    /// JSONL written in input order: {"loglik": float, "is_greedy": bool}
    #[arg(long)]
    pub output: PathBuf,
    /// Compute backend: auto, cpu, wgpu or cuda
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
    /// f32 (exact) or bf16 (matmul and attention on bf16 operands, fp32 accumulation; GPU backends)
    #[arg(long, default_value = "f32")]
    pub precision: okapi_runtime::Precision,
    /// Requests per forward pass
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Compute the LM head N tokens at a time (no tokens × vocabulary logits tensor; the same
    /// log-likelihoods to float rounding)
    #[arg(long)]
    pub lm_head_chunk: Option<usize>,
}

pub fn run(a: LoglikArgs) -> Result<(), String> {
    super::on_backend!(a.backend, a.precision, |be| run_on(be, &a))
}

fn run_on<B: Backend>(be: B, a: &LoglikArgs) -> Result<(), String> {
    if a.batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }
    if a.lm_head_chunk == Some(0) {
        return Err("--lm-head-chunk 0: must be at least 1".into());
    }
    super::outdir::check_output_file("--output", &a.output, &[&a.data], &[("--model", &a.model)])?;
    let reqs: Vec<LoglikRequest> = read_records(&a.data).map_err(|e| e.to_string())?;
    let tok = Tokenizer::load(&a.model).map_err(|e| e.to_string())?;
    let model_cfg = okapi_model::ModelConfig::load(&a.model).map_err(|e| e.to_string())?;
    tok.check_fits(model_cfg.vocab_size, &model_cfg.path).map_err(|e| e.to_string())?;
    let device = be.name();
    let mut model = super::lora_flags::load_with_adapter(be, &a.model, a.adapter.as_deref())?;
    model.head_chunk = a.lm_head_chunk;
    eprintln!("okapi-train loglik: {} requests, {} ({} params) on {device}", reqs.len(), a.model.display(), model.n_params());
    let mut meter = okapi_rlhf::progress::Meter::new("loglik", "requests", reqs.len() as u64);
    let results = score_loglik_metered(&model, &tok, &reqs, a.batch_size, super::ranks::comm(), &mut meter).map_err(|e| e.to_string())?;
    let mut out = String::new();
    for r in &results {
        out.push_str(&serde_json::to_string(r).unwrap());
        out.push('\n');
    }
    // every rank has every result; rank 0 writes them
    if !super::ranks::writes() {
        return Ok(());
    }
    super::outdir::write_output(&a.output, &out)
}
