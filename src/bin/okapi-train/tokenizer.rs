use okapi_data::bpe::{save_tokenizer, train_bpe};
use okapi_data::load_instructions;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct TokenizerArgs {
    /// Okapi instruction files (or directories, globs) whose instruction, input and output texts
    /// train the tokenizer
    #[arg(long, num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    /// Vocabulary size (special tokens and the 256 byte symbols included)
    #[arg(long)]
    pub vocab_size: usize,
    /// Where to write tokenizer.json
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(mut a: TokenizerArgs) -> Result<(), String> {
    a.data = okapi_data::expand_data_paths("--data", &a.data)?;
    super::outdir::check_output_file("--out", &a.out, &a.data.iter().map(PathBuf::as_path).collect::<Vec<_>>(), &[])?;
    let (records, stats) = load_instructions(&a.data, None, false).map_err(|e| e.to_string())?;
    let texts: Vec<String> = records.into_iter().flat_map(|r| [r.instruction, r.input, r.output]).filter(|t| !t.is_empty()).collect();
    if texts.is_empty() {
        return Err("no text to train on".into());
    }
    let tok = train_bpe(&texts, a.vocab_size).map_err(|e| e.to_string())?;
    if let Some(dir) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    save_tokenizer(&tok, &a.out).map_err(|e| e.to_string())?;
    eprintln!("tokenizer: {} ({}), vocabulary {} saved to {}", stats.summary(), texts.len(), tok.get_vocab_size(true), a.out.display());
    Ok(())
}
