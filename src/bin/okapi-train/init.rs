use okapi_data::Tokenizer;
use okapi_model::{preset_config, preset_names, Arch, DType, Model};
use okapi_runtime::CpuBackend;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// llama or bloom
    #[arg(long)]
    pub arch: String,
    /// Model shape: tiny, bench-5m, bench-33m, gpt2-124m-llama, llama-7b, bloom-560m, bloom-7b1
    #[arg(long)]
    pub preset: String,
    /// tokenizer.json: sets the vocabulary size and the special token ids, and is copied
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Output directory (Hugging Face layout)
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// max_position_embeddings of a LLaMA config
    #[arg(long, default_value_t = 2048)]
    pub max_positions: usize,
}

pub fn run(a: InitArgs) -> Result<(), String> {
    let arch: Arch = a.arch.parse().map_err(|e| format!("--arch: {e}"))?;
    let tok = Tokenizer::load(&a.tokenizer).map_err(|e| e.to_string())?;
    let mut cfg = preset_config(arch, &a.preset, Some(tok.vocab_size()), a.max_positions).map_err(|e| format!("--preset: {e} ({})", preset_names()))?;
    // special token ids from the tokenizer
    for (key, token) in [("bos_token_id", "<s>"), ("eos_token_id", "</s>"), ("pad_token_id", "<pad>")] {
        let id = tok.token_to_id(token).ok_or_else(|| format!("{}: the tokenizer has no `{token}` token (okapi-train tokenizer makes <unk> <s> </s> <pad>)", tok.path.display()))?;
        cfg.raw[key] = id.into();
    }
    let cfg = okapi_model::ModelConfig::from_value(cfg.raw.clone(), cfg.path.clone()).map_err(|e| e.to_string())?;
    let model = Model::init(CpuBackend, cfg, a.seed);
    model.save(&a.out, DType::F32, okapi_model::DEFAULT_MAX_SHARD_BYTES, Some(&tok.path)).map_err(|e| e.to_string())?;
    eprintln!("init: {} {} ({} params, vocab {}) saved in {}", a.arch, a.preset, model.n_params(), model.cfg.vocab_size, a.out.display());
    Ok(())
}
