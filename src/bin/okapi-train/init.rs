use okapi_data::tokenizer::{BOS_NAMES, EOS_NAMES, PAD_NAMES};
use okapi_data::Tokenizer;
use okapi_model::{preset_config, Arch, DType, Model};
use okapi_rlhf::rundir::OutMode;
use okapi_runtime::CpuBackend;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// llama, bloom, qwen2, qwen3, mistral or gemma2
    #[arg(long)]
    pub arch: String,
    /// Model shape: tiny, bench-5m, bench-33m, gpt2-124m-llama, llama-1b, llama-7b, bloom-560m, bloom-7b1, qwen2-0.5b, qwen3-0.6b
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
    /// max_position_embeddings of a RoPE model's config (BLOOM has none)
    #[arg(long, default_value_t = 2048)]
    pub max_positions: usize,
    /// Replace the model already in OUT
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: InitArgs) -> Result<(), String> {
    let arch: Arch = a.arch.parse().map_err(|e| format!("--arch: {e}"))?;
    if a.max_positions == 0 {
        return Err("--max-positions 0: must be at least 1".into());
    }
    let out = a.out.as_path();
    let found = okapi_rlhf::rundir::run_files(out);
    if !found.is_empty() && !a.overwrite {
        return Err(format!("--out {} already holds a model or a run ({}): pass --overwrite to replace it", out.display(), found.join(", ")));
    }
    okapi_rlhf::rundir::claim(out, "--out", &[], OutMode::Overwrite).map_err(|e| e.to_string())?;
    let tok = Tokenizer::load(&a.tokenizer).map_err(|e| e.to_string())?;
    let mut cfg = preset_config(arch, &a.preset, Some(tok.vocab_size()), a.max_positions).map_err(|e| format!("--preset: {e}"))?;
    // special token ids from the tokenizer: EOS is needed (it ends every response); BOS and
    // padding when the tokenizer has them
    let (eos_name, eos) = tok.find_token(&EOS_NAMES).ok_or_else(|| format!("{}: no end-of-sequence token (looked for {}); okapi needs one to end responses (okapi-train tokenizer makes <unk> <s> </s> <pad>)", tok.path.display(), EOS_NAMES.join(" ")))?;
    cfg.raw["eos_token_id"] = eos.into();
    for (key, names) in [("bos_token_id", &BOS_NAMES[..]), ("pad_token_id", &PAD_NAMES[..])] {
        cfg.raw[key] = tok.find_token(names).map(|(_, id)| id).into();
    }
    let cfg = okapi_model::ModelConfig::from_value(cfg.raw.clone(), cfg.path.clone()).map_err(|e| e.to_string())?;
    let w = okapi_model::memory::weights_bytes(&cfg);
    // the parameters, then their HF tensors and the encoded file while saving
    let hint = "use a smaller --preset";
    okapi_model::memory::Need::new(format!("init --preset {}", a.preset), hint).device("parameters", w).host("tensors being saved", w).host("encoded file", w.min(okapi_model::DEFAULT_MAX_SHARD_BYTES as u64)).check(&CpuBackend).map_err(|e| e.to_string())?;
    if a.overwrite {
        okapi_rlhf::rundir::clear_run(out).map_err(|e| e.to_string())?;
    }
    eprintln!("init: end of sequence is {eos_name} (id {eos})");
    let model = Model::init(CpuBackend, cfg, a.seed);
    model.save(&a.out, DType::F32, okapi_model::DEFAULT_MAX_SHARD_BYTES, Some(&tok.path)).map_err(|e| e.to_string())?;
    eprintln!("init: {} {} ({} params, vocab {}) saved in {}", a.arch, a.preset, model.n_params(), model.cfg.vocab_size, a.out.display());
    Ok(())
}
