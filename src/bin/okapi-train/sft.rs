//! `okapi-train sft`: supervised fine-tuning on Okapi instruction files.

use super::outdir;
use super::train_flags::{args_json, check_flags_and_data, check_training_memory, eos_of, precheck_resume, Stage, TrainFlags};
use okapi_data::Tokenizer;
use okapi_model::{Model, ModelConfig};
use okapi_rlhf::trainer::check_resume;
use okapi_rlhf::sft::run_sft_data_parallel;
use okapi_rlhf::{load_sft_examples, split_val, RunDir, TrainSummary};
use okapi_runtime::Backend;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct SftArgs {
    /// Starting model: Hugging Face directory (config.json, safetensors, tokenizer.json)
    #[arg(long)]
    pub model: PathBuf,
    /// Data files, directories (their .json / .jsonl files) or globs: Okapi's records
    /// {"instruction","input","output"} or conversations {"messages": [{"role","content"}…]}
    #[arg(long, num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    /// Output directory: model, metrics.jsonl, args.json, checkpoint/
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub train: TrainFlags,
}

pub fn run(mut a: SftArgs) -> Result<(), String> {
    check_flags_and_data(&a.train, Stage::Sft, &mut a.data)?;
    super::on_backend!(a.train.backend, a.train.precision, |be| run_on(be, &a))
}

fn run_on<B: Backend>(be: B, a: &SftArgs) -> Result<(), String> {
    let cfg = a.train.resolve(Stage::Sft)?;
    // rank 0 writes the run (the only rank of a single process)
    let out = if super::ranks::writes() { Some(outdir::claim(&a.out, &[("--model", &a.model)], cfg.resume.as_deref(), a.train.overwrite)?) } else { None };
    precheck_resume(&cfg, "sft", &[])?;
    let tok = Tokenizer::load(&a.model).map_err(|e| e.to_string())?;
    let model_cfg = ModelConfig::load(&a.model).map_err(|e| e.to_string())?;
    tok.check_fits(model_cfg.vocab_size, &model_cfg.path).map_err(|e| e.to_string())?;
    model_cfg.trainable_count(cfg.unfrozen_layers).map_err(|e| e.to_string())?;
    let format = a.train.record_format(&a.model)?;
    let data = load_sft_examples(&a.data, a.train.langs()?.as_deref(), &format, &tok, eos_of(&model_cfg)?, &cfg).map_err(|e| e.to_string())?;
    eprintln!("sft: {}", data.summary);
    let longest = data.examples.iter().map(|e| e.ids.len()).max().unwrap_or(1);
    // as the objective sizes its buffers: a batch holds at most every example
    check_training_memory(&be, &model_cfg, &cfg, cfg.batch_size.min(data.examples.len()).saturating_mul(longest), &a.train)?;
    let (train, val) = split_val(data.examples, cfg.val_fraction, cfg.seed);
    super::train_flags::check_zero_shares(&cfg, train.len())?;
    check_resume(&cfg, "sft", &model_cfg, okapi_rlhf::sft::data_fingerprint(&train, &val), train.len(), Default::default()).map_err(|e| e.to_string())?;
    let device = be.name();
    let mut model = Model::load(be, &a.model).map_err(|e| e.to_string())?;
    a.train.lora.apply(&mut model, cfg.seed)?;
    a.train.memory.apply_to(&mut model, cfg.unfrozen_layers)?;
    eprintln!("sft: {} ({} params) on {device}: {} train / {} validation examples", a.model.display(), model.n_params(), train.len(), val.len());
    let extra = serde_json::json!({ "model": a.model, "data": a.data, "out": a.out, "recipe": format!("{:?}", a.train.recipe).to_lowercase(), "langs": a.train.langs, "template": a.train.template, "memory": a.train.memory.json(), "lora": a.train.lora.json(), "tensorboard": a.train.tensorboard });
    let run_dir = match &out {
        Some(out) => {
            out.write_args(args_json("sft", &cfg, extra))?;
            Some(RunDir { dir: &a.out, tokenizer: Some(&tok.path), tensorboard: a.train.tensorboard.as_deref() })
        }
        None => None,
    };
    let (_, summary) = run_sft_data_parallel(model, train, val, &cfg, run_dir, super::ranks::comm()).map_err(|e| e.to_string())?;
    if out.is_some() {
        outdir::copy_tokenizer_config(&a.model, &a.out)?;
    }
    eprintln!("sft: {}{}; model saved in {}", losses(&summary), summary.val.as_ref().and_then(|v| v.get("val_loss")).and_then(|v| v.as_f64()).map(|v| format!(", val_loss {v:.4}")).unwrap_or_default(), a.out.display());
    Ok(())
}

/// "N steps, loss A → B" of this process's steps, or that none were left.
pub fn losses(s: &TrainSummary) -> String {
    match (s.first_loss, s.last_loss) {
        (Some(first), Some(last)) => format!("{} steps, loss {first:.4} → {last:.4}", s.steps),
        _ => format!("{} steps, none left to train", s.steps),
    }
}
