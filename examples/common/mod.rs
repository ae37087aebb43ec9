//! What the examples share: a tiny model made on the spot, the bundled data as files, and
//! errors printed as one line.
#![allow(dead_code)]

use okapi::data::assets::Asset;
use okapi::data::bpe::{save_tokenizer, train_bpe};
use okapi::data::Tokenizer;
use okapi::model::{preset_config, Arch, DType, Model};
use okapi::runtime::CpuBackend;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A tiny random LLaMA (the `tiny` preset) with a byte-level BPE tokenizer trained on the
/// bundled SFT data, saved in Hugging Face layout in `dir`.
pub fn make_model(dir: &Path) -> Result<(), Box<dyn Error>> {
    let texts: Vec<String> = okapi::data::assets::SFT.iter().map(|a| a.text.to_string()).collect();
    std::fs::create_dir_all(dir)?;
    save_tokenizer(&train_bpe(&texts, 1024)?, &dir.join("tokenizer.json"))?;
    let tok = Tokenizer::load(dir)?;
    let mut cfg = preset_config(Arch::Llama, "tiny", Some(tok.vocab_size()), 512)?;
    for (key, token) in [("bos_token_id", "<s>"), ("eos_token_id", "</s>"), ("pad_token_id", "<pad>")] {
        cfg.raw[key] = tok.token_to_id(token).ok_or("the tokenizer lacks a special token")?.into();
    }
    let cfg = okapi::model::ModelConfig::from_value(cfg.raw.clone(), cfg.path.clone())?;
    Model::init(CpuBackend, cfg, 7).save(dir, DType::F32, okapi::model::DEFAULT_MAX_SHARD_BYTES, Some(&dir.join("tokenizer.json")))?;
    Ok(())
}

/// The bundled files of `langs` written as Okapi's `{lang}.json` in `dir`.
pub fn write_assets(dir: &Path, set: &[Asset], langs: &[&str]) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let mut files = Vec::new();
    for a in set.iter().filter(|a| langs.contains(&a.lang)) {
        let p = dir.join(format!("{}.json", a.lang));
        std::fs::write(&p, a.text)?;
        files.push(p);
    }
    Ok(files)
}

/// A fresh working directory under the system's temporary directory.
pub fn work_dir(name: &str) -> Result<PathBuf, Box<dyn Error>> {
    let d = std::env::temp_dir().join(format!("okapi-example-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Exit status 0, or one `error:` line and status 1.
pub fn exit(r: Result<(), Box<dyn Error>>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
