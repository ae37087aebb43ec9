use super::train_flags::{args_json, TrainFlags, SFT_RECIPE};
use okapi_data::{encode_example, load_instructions, Example, SftEncoding, Tokenizer};
use okapi_model::Model;
use okapi_rlhf::{run_sft, split_val};
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

/// Tokenized SFT data with the counts the user sees in one line.
pub struct SftData {
    pub examples: Vec<Example>,
    pub summary: String,
}

/// Loads, filters and tokenizes instruction files as DESIGN.md §4 says.
pub fn load_sft_data(files: &[PathBuf], flags: &TrainFlags, tok: &Tokenizer, eos: u32) -> Result<SftData, String> {
    let langs = flags.langs()?;
    let tpl = flags.template()?;
    let enc = SftEncoding { max_len: flags.max_len(&SFT_RECIPE)?, mask_prompt: !flags.no_mask_prompt, eos };
    let (records, stats) = load_instructions(files, langs.as_deref(), true).map_err(|e| e.to_string())?;
    let mut examples = Vec::with_capacity(records.len());
    let mut too_long = 0;
    for r in &records {
        match encode_example(tok, &tpl, r, &enc).map_err(|e| format!("{}: {e}", r.origin))? {
            Some(e) => examples.push(e),
            None => too_long += 1,
        }
    }
    let summary = format!("{}; {} prompts do not fit --max-len {} (skipped); {} examples", stats.summary(), too_long, enc.max_len, examples.len());
    if examples.is_empty() {
        return Err(format!("no training examples after filtering ({summary})"));
    }
    Ok(SftData { examples, summary })
}

pub fn run(a: SftArgs) -> Result<(), String> {
    super::on_backend!(a.train.backend, a.train.precision, |be| run_on(be, &a))
}

fn run_on<B: Backend>(be: B, a: &SftArgs) -> Result<(), String> {
    let cfg = a.train.resolve(&SFT_RECIPE)?;
    let tok = Tokenizer::load(&a.model).map_err(|e| e.to_string())?;
    let device = be.name();
    let model = Model::load(be, &a.model).map_err(|e| e.to_string())?;
    let eos = model.cfg.eos_token_id.ok_or_else(|| format!("{}: field `eos_token_id` is needed to end responses", model.cfg.path.display()))?;
    let pad = model.cfg.pad_token_id.unwrap_or(eos);
    let data = load_sft_data(&a.data, &a.train, &tok, eos)?;
    eprintln!("sft: {}", data.summary);
    let (train, val) = split_val(data.examples, a.train.val_fraction, cfg.seed);
    eprintln!("sft: {} ({} params) on {device}: {} train / {} validation examples", a.model.display(), model.n_params(), train.len(), val.len());
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let extra = serde_json::json!({ "model": a.model, "data": a.data, "out": a.out, "max_len": a.train.max_len(&SFT_RECIPE)?, "mask_prompt": !a.train.no_mask_prompt, "langs": a.train.langs, "template": a.train.template, "val_fraction": a.train.val_fraction });
    write_json(&a.out.join("args.json"), &args_json("sft", &cfg, extra))?;
    let summary = run_sft(model, &tok.path, train, val, &cfg, &a.out, pad).map_err(|e| e.to_string())?;
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
    std::fs::write(&tmp, serde_json::to_string_pretty(v).unwrap()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}
