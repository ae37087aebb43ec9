//! The run-directory policy of the training commands (`sft`, `reward`, `dpo`, `ppo`), on top of
//! okapi-rlhf's `rundir`: `--out` is checked before anything is loaded ([`claim`]) — never an
//! input model's directory, and a directory holding another run only with `--resume` (the same
//! run) or `--overwrite`; the old run's files are cleared, and `args.json` written, only once
//! every input has been read ([`OutDir::write_args`]).

use okapi_rlhf::checkpoint;
use okapi_rlhf::rundir::{self, OutMode};
use serde_json::Value;
use std::path::Path;

/// The output directory of a training command, claimed.
pub struct OutDir<'a> {
    pub path: &'a Path,
    pub mode: OutMode,
}

/// Checks `--out` for a run that reads the model directories `inputs` and, with `resume`,
/// continues the checkpoint there. Writes nothing.
pub fn claim<'a>(out: &'a Path, inputs: &[(&'static str, &Path)], resume: Option<&Path>, overwrite: bool) -> Result<OutDir<'a>, String> {
    let mode = match (resume, overwrite) {
        (Some(_), true) => return Err("--resume and --overwrite: a run either continues or replaces the one in --out, not both".into()),
        (Some(_), false) => OutMode::Resume,
        (None, true) => OutMode::Overwrite,
        (None, false) => OutMode::Fresh,
    };
    rundir::claim(out, "--out", inputs, mode).map_err(|e| e.to_string())?;
    if let Some(dir) = resume {
        let ckpt = checkpoint::resolve(dir).map_err(|e| e.to_string())?;
        // the run directory of the checkpoint: OUT of OUT/checkpoint (or OUT/checkpoint.old)
        let run = if ckpt.file_name().is_some_and(|n| n.to_string_lossy().starts_with("checkpoint")) { ckpt.parent().unwrap_or(&ckpt) } else { &ckpt };
        let holds_run = !rundir::run_files(out).is_empty();
        if holds_run && rundir::resolved(run) != rundir::resolved(out) {
            return Err(format!("--out {} holds another run than the one --resume {} continues: resume into the run's own directory ({}) or into a new one", out.display(), dir.display(), run.display()));
        }
    }
    Ok(OutDir { path: out, mode })
}

impl OutDir<'_> {
    /// The run's first write, once its inputs are read: with `--overwrite` the old run's files
    /// go first; a resume keeps the run's `args.json` (its settings cannot change) and appends
    /// this command line to its `resumed`; otherwise `args` is written.
    pub fn write_args(&self, args: Value) -> Result<(), String> {
        std::fs::create_dir_all(self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
        if self.mode == OutMode::Overwrite {
            rundir::clear_run(self.path).map_err(|e| e.to_string())?;
        }
        let path = self.path.join("args.json");
        let existing = (self.mode == OutMode::Resume).then(|| std::fs::read_to_string(&path).ok()).flatten().and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let v = match existing {
            Some(mut v) if v.is_object() => {
                let resumed = v.as_object_mut().expect("an object").entry("resumed").or_insert_with(|| Value::Array(vec![]));
                if let Some(list) = resumed.as_array_mut() {
                    list.push(serde_json::json!({ "argv": std::env::args().collect::<Vec<_>>() }));
                }
                v
            }
            _ => args,
        };
        write_json(&path, &v)
    }
}

/// Writes a JSON file durably (temporary file, sync, rename).
pub fn write_json(path: &Path, v: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(v).expect("a JSON value serialises");
    rundir::write_durable(path, text.as_bytes()).map_err(|e| e.to_string())
}

/// Refuses an output file (`flag`) that would replace one of the command's inputs: one of the
/// input `files`, or a file inside one of the input model directories `dirs`.
pub fn check_output_file(flag: &str, output: &Path, files: &[&Path], dirs: &[(&'static str, &Path)]) -> Result<(), String> {
    let out = rundir::resolved(output);
    if let Some(f) = files.iter().find(|f| rundir::resolved(f) == out) {
        return Err(format!("{flag} {}: that is an input file ({}); write the output elsewhere", output.display(), f.display()));
    }
    if let Some((dir_flag, dir)) = dirs.iter().find(|(_, d)| out.starts_with(rundir::resolved(d))) {
        return Err(format!("{flag} {}: inside the {dir_flag} directory {}; a command never writes into its input models", output.display(), dir.display()));
    }
    if output.is_dir() {
        return Err(format!("{flag} {}: is a directory; expected a file path", output.display()));
    }
    Ok(())
}

/// Writes a command's output file durably: a temporary beside it, synced, renamed into place.
pub fn write_output(path: &Path, text: &str) -> Result<(), String> {
    rundir::write_durable(path, text.as_bytes()).map_err(|e| e.to_string())
}

/// The tokenizer's config beside a saved model (`tokenizer_config.json`, and with it the chat
/// template and special tokens; `chat_template.jinja`): the model saves `tokenizer.json` only,
/// and a model trained on chat-formatted data must keep its template.
pub fn copy_tokenizer_config(model: &Path, out: &Path) -> Result<(), String> {
    for name in ["tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"] {
        let (src, dst) = (model.join(name), out.join(name));
        if src.is_file() && rundir::resolved(&src) != rundir::resolved(&dst) {
            std::fs::copy(&src, &dst).map_err(|e| format!("{}: {e}", dst.display()))?;
        }
    }
    Ok(())
}
