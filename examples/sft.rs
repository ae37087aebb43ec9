//! okapi as a library: load a Hugging Face model directory, fine-tune it for a few steps with
//! Okapi's SFT recipe on the bundled multilingual data, and answer an instruction.
//!
//!   cargo run --release --example sft                 # a tiny LLaMA made on the spot
//!   cargo run --release --example sft -- MODEL_DIR    # any LLaMA / BLOOM directory with tokenizer.json
//!
//! Exits non-zero when the loss does not fall.

#[path = "common/mod.rs"]
mod common;

use okapi::data::assets;
use okapi::data::{PromptTemplate, Tokenizer};
use okapi::model::Model;
use okapi::rlhf::{generate, load_sft_data, run_sft, split_val, Sampling, TrainConfig};
use okapi::runtime::CpuBackend;
use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    common::exit(sft())
}

fn sft() -> Result<(), Box<dyn Error>> {
    let work = common::work_dir("sft")?;
    let model_dir = match std::env::args().nth(1) {
        Some(d) => PathBuf::from(d),
        None => {
            common::make_model(&work.join("model"))?;
            work.join("model")
        }
    };
    // load
    let tok = Tokenizer::load(&model_dir)?;
    let model = Model::load(CpuBackend, &model_dir)?;
    let eos = model.cfg.eos_token_id.ok_or("config.json has no eos_token_id")?;
    // Okapi's SFT recipe, shortened: 8 steps of 8 examples, a learning rate for a random model
    let cfg = TrainConfig { max_steps: Some(8), batch_size: 8, lr: 3e-3, warmup_steps: 0, max_len: 192, eval_every: Some(4), ..TrainConfig::okapi_sft() };
    let files = common::write_assets(&work, assets::SFT, &["en", "vi", "ru", "zh", "ar"])?;
    let data = load_sft_data(&files, None, &PromptTemplate::okapi(), &tok, eos, &cfg)?;
    println!("data: {}", data.summary);
    let (train, val) = split_val(data.examples, cfg.val_fraction, cfg.seed);
    // train (no output directory: nothing is written)
    let (model, summary) = run_sft(model, train, val, &cfg, None)?;
    let (first, last) = (summary.first_loss.unwrap_or(f64::NAN), summary.last_loss.unwrap_or(f64::NAN));
    println!("sft: {} steps, loss {first:.3} → {last:.3}, validation {:?}", summary.steps, summary.val);
    // generate
    let prompt = tok.encode(&PromptTemplate::okapi().prompt("Xin chào! Bạn khỏe không?", ""), true)?;
    let out = generate(&model, &[prompt], &Sampling { max_new_tokens: 24, ..Sampling::default() }, Some(eos))?;
    println!("response: {:?}", tok.decode(&out[0].tokens, true)?);
    let _ = std::fs::remove_dir_all(&work);
    if last.partial_cmp(&first) != Some(std::cmp::Ordering::Less) {
        return Err(format!("the loss did not fall ({first} → {last})").into());
    }
    Ok(())
}
