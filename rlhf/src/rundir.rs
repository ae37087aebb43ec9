//! The run-directory policy and the file operations that make a run's output durable.
//!
//! Policy ([`claim`]): an output directory that already holds a run (its `args.json`,
//! `metrics.jsonl`, a checkpoint or a saved model) is refused unless the run resumes it
//! (`--resume`) or replaces it (`--overwrite`); an output directory is never an input model's
//! directory nor inside one. With `--overwrite`, the old run's files are cleared
//! ([`clear_run`]) only when the new run writes its first file, after every input was read.
//!
//! Durability: files are written to a temporary name, synced and renamed ([`write_durable`]);
//! directories are deleted by first renaming them out of the way ([`trash_dir`]), so a kill
//! during a deletion never leaves a half-deleted directory under a name that is read later.
//! Logs (`metrics.jsonl`, `samples.jsonl`) are append-only; a resume cuts them back to the
//! checkpoint's step by writing the kept lines to a temporary file and renaming it over the log
//! ([`reopen_log`]), so a kill at any moment leaves either the old or the cut log.

use crate::error::io;
use crate::TrainError;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What makes a directory hold a run: files and directories a run (or a saved model) writes.
pub const RUN_FILES: &[&str] = &[
    "args.json",
    "metrics.jsonl",
    "samples.jsonl",
    "checkpoint",
    "checkpoint.old",
    "checkpoint.tmp",
    "checkpoint.trash",
    "checkpoint.old.trash",
    "checkpoint.tmp.trash",
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "value_head.safetensors",
    "critic",
];

/// Whether `name` (a file name in a run directory) belongs to a run: one of [`RUN_FILES`], a
/// weight shard, the copied tokenizer or a temporary of any of them.
fn is_run_file(name: &str) -> bool {
    let base = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")).unwrap_or(name);
    RUN_FILES.contains(&base) || base == "tokenizer.json" || (base.starts_with("model-") && base.ends_with(".safetensors")) || base.ends_with(".json.tmp")
}

/// The run files present in `dir` (sorted), empty when it holds no run or does not exist.
pub fn run_files(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| RUN_FILES.contains(&n.as_str())).collect())
        .unwrap_or_default();
    found.sort();
    found
}

/// How a run may use an output directory that already holds a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutMode {
    /// only an empty (or new) directory, or one without run files
    Fresh,
    /// continue the run whose checkpoint is read (`--resume`)
    Resume,
    /// replace the run there (`--overwrite`)
    Overwrite,
}

/// `path` made absolute, `.` and `..` removed (lexically), and symlinks resolved as far as it
/// exists (a directory that does not exist yet resolves through its nearest existing ancestor).
pub fn resolved(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().map(|d| d.join(path)).unwrap_or_else(|_| path.to_path_buf()) };
    let mut normal = PathBuf::new();
    for part in abs.components() {
        match part {
            std::path::Component::ParentDir => {
                normal.pop();
            }
            std::path::Component::CurDir => {}
            other => normal.push(other),
        }
    }
    let mut tail: Vec<std::ffi::OsString> = Vec::new();
    let mut cur = normal.as_path();
    loop {
        if let Ok(c) = cur.canonicalize() {
            return tail.iter().rev().fold(c, |acc, part| acc.join(part));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_os_string());
                cur = parent;
            }
            _ => return normal,
        }
    }
}

/// Checks `out` for a run in `mode`: refuses an output that is, or is inside, one of `inputs`
/// (model directories this run reads) and an output holding another run in [`OutMode::Fresh`].
/// `flag` names the output flag in messages (`--out`). Writes nothing.
pub fn claim(out: &Path, flag: &'static str, inputs: &[(&'static str, &Path)], mode: OutMode) -> Result<(), TrainError> {
    let out_abs = resolved(out);
    for (input_flag, input) in inputs {
        let input_abs = resolved(input);
        if out_abs.starts_with(&input_abs) {
            let problem = if out_abs == input_abs { format!("{} is the {input_flag} directory", out.display()) } else { format!("{} is inside the {input_flag} directory {}", out.display(), input.display()) };
            return Err(TrainError::Setting { setting: flag, problem: format!("{problem}: a run never writes into its inputs; choose another output directory") });
        }
    }
    if out.exists() && !out.is_dir() {
        return Err(TrainError::Setting { setting: flag, problem: format!("{} exists and is not a directory", out.display()) });
    }
    let found = run_files(out);
    if mode == OutMode::Fresh && !found.is_empty() {
        let problem = format!("{} already holds a run ({}): pass --resume {} to continue it or --overwrite to replace it", out.display(), found.join(", "), out.display());
        return Err(TrainError::Setting { setting: flag, problem });
    }
    Ok(())
}

/// Removes every run file of `dir` (the [`RUN_FILES`], weight shards, the copied tokenizer and
/// temporaries); other files stay. For `--overwrite`, called when the new run writes its first
/// file.
pub fn clear_run(dir: &Path) -> Result<(), TrainError> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !is_run_file(&name) {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            trash_dir(&p)?;
        } else {
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
    }
    sync_dir(dir)
}

/// Flushes a directory's entries (renames, creations) to disk. Best effort where directories
/// cannot be opened (not on Unix).
pub fn sync_dir(dir: &Path) -> Result<(), TrainError> {
    #[cfg(unix)]
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Writes `bytes` to `path`, synced to disk, through a temporary name and a rename: after a
/// kill, `path` holds either its old or its new contents.
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(parent_dir(path))
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Writes `bytes` to a new file `path` and syncs it (no rename: for files inside a directory
/// that is itself swapped in by a rename).
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io(path))
}

/// Deletes directory `dir`: renamed to `<dir>.trash` first (replacing an older trash), then
/// removed, so no reader ever sees it half deleted under its own name.
pub fn trash_dir(dir: &Path) -> Result<(), TrainError> {
    if !dir.exists() {
        return Ok(());
    }
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let trash = dir.with_file_name(format!("{name}.trash"));
    if trash.exists() {
        std::fs::remove_dir_all(&trash).map_err(io(&trash))?;
    }
    std::fs::rename(dir, &trash).map_err(io(dir))?;
    crate::hooks::crash_point("trashing");
    std::fs::remove_dir_all(&trash).map_err(io(&trash))
}

/// Opens the JSONL log `path` for appending. With `keep_up_to` (a resume), first cuts it to the
/// lines whose `key` is at most that step — written to a temporary file and renamed over the
/// log, so a kill in between leaves the old log whole; a partial last line is dropped too.
/// Without, starts an empty log.
pub fn reopen_log(path: &Path, keep_up_to: Option<u64>, key: &str) -> Result<File, TrainError> {
    let kept = match keep_up_to {
        Some(step) if path.exists() => std::fs::read_to_string(path)
            .map_err(io(path))?
            .lines()
            .filter(|l| serde_json::from_str::<Value>(l).ok().and_then(|v| v.get(key).and_then(|s| s.as_u64())).is_some_and(|s| s <= step))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
        _ => String::new(),
    };
    write_durable(path, kept.as_bytes())?;
    OpenOptions::new().append(true).open(path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("okapi-rundir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn claim_refuses_inputs_and_runs_and_allows_the_rest() {
        let d = scratch("claim");
        let model = d.join("model");
        std::fs::create_dir_all(&model).unwrap();
        let inputs = [("--model", model.as_path())];
        let err = claim(&model, "--out", &inputs, OutMode::Overwrite).unwrap_err().to_string();
        assert!(err.starts_with("--out: ") && err.contains("is the --model directory"), "{err}");
        let err = claim(&model.join("sub/run"), "--out", &inputs, OutMode::Fresh).unwrap_err().to_string();
        assert!(err.contains("is inside the --model directory"), "{err}");
        // through `..`, still the model directory
        let err = claim(&d.join("x/../model"), "--out", &inputs, OutMode::Resume).unwrap_err().to_string();
        assert!(err.contains("is the --model directory"), "{err}");
        let out = d.join("out");
        claim(&out, "--out", &inputs, OutMode::Fresh).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        claim(&out, "--out", &inputs, OutMode::Fresh).unwrap();
        std::fs::write(out.join("metrics.jsonl"), "").unwrap();
        let err = claim(&out, "--out", &inputs, OutMode::Fresh).unwrap_err().to_string();
        assert!(err.contains("already holds a run (metrics.jsonl)") && err.contains("--resume") && err.contains("--overwrite"), "{err}");
        claim(&out, "--out", &inputs, OutMode::Resume).unwrap();
        claim(&out, "--out", &inputs, OutMode::Overwrite).unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn clear_run_removes_run_files_only() {
        let d = scratch("clear");
        for f in ["args.json", "metrics.jsonl", "model-00001-of-00002.safetensors", "tokenizer.json", ".config.json.tmp", "notes.txt", "data.jsonl"] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        std::fs::create_dir_all(d.join("checkpoint/model")).unwrap();
        std::fs::create_dir_all(d.join("mine")).unwrap();
        clear_run(&d).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["data.jsonl", "mine", "notes.txt"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn reopen_log_cuts_to_the_step_and_appends() {
        let d = scratch("log");
        let p = d.join("metrics.jsonl");
        std::fs::write(&p, "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n{\"step\":4").unwrap();
        let mut f = reopen_log(&p, Some(2), "step").unwrap();
        writeln!(f, "{{\"step\":3,\"again\":true}}").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"step\":1}\n{\"step\":2}\n{\"step\":3,\"again\":true}\n");
        assert!(!d.join(".metrics.jsonl.tmp").exists());
        drop(f);
        reopen_log(&p, None, "step").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "");
        assert_eq!(parent_dir(Path::new("metrics.jsonl")), Path::new("."));
        let _ = std::fs::remove_dir_all(&d);
    }
}
