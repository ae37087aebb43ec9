//! okapi as a library: score responses with a reward model — the bundled ranking data of a few
//! languages, each response encoded as at training (Okapi's template, EOS appended) and scored
//! at its last token — and report how often the preferred response scores higher.
//!
//!   cargo run --release --example score                  # a fresh reward model on a tiny LLaMA
//!   cargo run --release --example score -- RM_DIR        # any *ForSequenceClassification directory

#[path = "common/mod.rs"]
mod common;

use okapi::data::{assets, load_rankings, Tokenizer};
use okapi::model::Model;
use okapi::rlhf::reward::score_records;
use okapi::runtime::CpuBackend;
use std::error::Error;
use std::process::ExitCode;

fn main() -> ExitCode {
    common::exit(score())
}

fn score() -> Result<(), Box<dyn Error>> {
    let work = common::work_dir("score")?;
    let (tok, rm) = match std::env::args().nth(1) {
        Some(d) => (Tokenizer::load(d.as_ref())?, Model::load(CpuBackend, d.as_ref())?),
        None => {
            // a causal LM loaded as a reward model gets a fresh, seeded score head (as
            // transformers' AutoModelForSequenceClassification does)
            common::make_model(&work.join("model"))?;
            (Tokenizer::load(&work.join("model"))?, Model::load_reward(CpuBackend, &work.join("model"), 3)?)
        }
    };
    let files = common::write_assets(&work, assets::RANKING, &["en", "de", "hi", "zh"])?;
    let (records, stats) = load_rankings(&files, None)?;
    println!("data: {}", stats.summary());
    let rewards = score_records(&rm, &tok, &records, 768, 4)?;
    let (mut ordered, mut pairs) = (0, 0);
    for (r, s) in records.iter().zip(&rewards) {
        let shown: Vec<String> = s.iter().map(|x| format!("{x:+.4}")).collect();
        println!("{}: [{}] (best first)", r.origin, shown.join(", "));
        for i in 0..s.len() {
            for j in i + 1..s.len() {
                pairs += 1;
                ordered += (s[i] > s[j]) as usize;
            }
        }
    }
    println!("{ordered} of {pairs} pairs ordered as ranked (an untrained reward model is near half)");
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
