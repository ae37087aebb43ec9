//! `okapi-train sft`: supervised fine-tuning on Okapi instruction files.

use super::train_flags::{args_json, Stage, TrainFlags};
use okapi_data::Tokenizer;
use okapi_model::Model;
use okapi_rlhf::{load_sft_data, run_sft, split_val, RunDir};
use okapi_runtime::Backend;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct SftArgs {
    /// Starting model: Hugging Face directory (config.json, safetensors, tokenizer.json)
    #[arg(long)]
    pub model: PathBuf,
    /// Okapi instruction files: JSON array or JSONL of {"instruction","input","output"}
    #[arg(long, num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    /// Output directory: model, metrics.jsonl, args.json, checkpoint/
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub train: TrainFlags,
}

pub fn run(a: SftArgs) -> Result<(), String> {
    super::on_backend!(a.train.backend, a.train.precision, |be| run_on(be, &a))
}

fn run_on<B: Backend>(be: B, a: &SftArgs) -> Result<(), String> {
    let cfg = a.train.resolve(Stage::Sft)?;
    let tok = Tokenizer::load(&a.model).map_err(|e| e.to_string())?;
    let device = be.name();
    let model = Model::load(be, &a.model).map_err(|e| e.to_string())?;
    let eos = model.cfg.eos_token_id.ok_or_else(|| format!("{}: field `eos_token_id` is needed to end responses", model.cfg.path.display()))?;
    let data = load_sft_data(&a.data, a.train.langs()?.as_deref(), &a.train.template()?, &tok, eos, &cfg).map_err(|e| e.to_string())?;
    eprintln!("sft: {}", data.summary);
    let (train, val) = split_val(data.examples, cfg.val_fraction, cfg.seed);
    eprintln!("sft: {} ({} params) on {device}: {} train / {} validation examples", a.model.display(), model.n_params(), train.len(), val.len());
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let extra = serde_json::json!({ "model": a.model, "data": a.data, "out": a.out, "recipe": format!("{:?}", a.train.recipe).to_lowercase(), "langs": a.train.langs, "template": a.train.template });
    write_json(&a.out.join("args.json"), &args_json("sft", &cfg, extra))?;
    let out = RunDir { dir: &a.out, tokenizer: Some(&tok.path) };
    let (_, summary) = run_sft(model, train, val, &cfg, Some(out)).map_err(|e| e.to_string())?;
    eprintln!(
        "sft: {} steps, loss {:.4} → {:.4}{}; model saved in {}",
        summary.steps,
        summary.first_loss.unwrap_or(f64::NAN),
        summary.last_loss.unwrap_or(f64::NAN),
        summary.val.as_ref().and_then(|v| v.get("val_loss")).and_then(|v| v.as_f64()).map(|v| format!(", val_loss {v:.4}")).unwrap_or_default(),
        a.out.display()
    );
    Ok(())
}

pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), String> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(v).expect("a JSON value serialises")).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}
