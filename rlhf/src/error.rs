//! The errors of training and evaluation: each variant says what went wrong and where (file,
//! tensor, step, setting), in one line a user can act on.

use std::path::PathBuf;

/// A training, scoring or evaluation failure.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] okapi_model::ModelError),
    #[error(transparent)]
    Data(#[from] okapi_data::DataError),
    /// A data record that cannot be encoded (its file and record, then why).
    #[error("{origin}: {source}")]
    Record { origin: String, source: okapi_data::DataError },
    /// Reading or writing a file of the run failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// Nothing to train on: every item was filtered out (language, length, bad records).
    #[error("no {what} left after filtering{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    NoData { what: &'static str, detail: Option<String> },
    /// A setting that cannot work (named as the CLI flag that sets it).
    #[error("{setting}: {problem}")]
    Setting { setting: &'static str, problem: String },
    /// A checkpoint or state file that is not what this run wrote (missing or mis-shaped tensor,
    /// unreadable metadata).
    #[error("{path}: {problem}")]
    Checkpoint { path: PathBuf, problem: String },
    /// `resume` points at a checkpoint this run cannot continue.
    #[error("--resume {dir}: {mismatch}")]
    Resume { dir: PathBuf, mismatch: ResumeMismatch },
    /// The loss, a gradient or a parameter stopped being finite: the run stops without saving
    /// (the last checkpoint, if any, is intact).
    #[error("{at}: {what}: stopping (lower the learning rate?){}", checkpoint.as_ref().map(|c| format!("; the last checkpoint in {} is intact", c.display())).unwrap_or_default())]
    NotFinite { at: String, what: String, checkpoint: Option<PathBuf> },
    /// Serialising a tensor file failed (an internal size mismatch).
    #[error("{what}: {problem}")]
    Serialize { what: &'static str, problem: String },
    /// A stop was requested (SIGINT / SIGTERM, see [`crate::stop`]): the run stopped at a step
    /// boundary after writing a checkpoint (when it has an output directory) and its metrics.
    #[error("interrupted after {unit} {done} of {total}{}", match checkpoint { Some(c) => format!(": checkpoint saved in {}; continue with --resume {}", c.display(), c.parent().unwrap_or(c).display()), None => "; nothing saved".into() })]
    Interrupted { unit: &'static str, done: u64, total: u64, checkpoint: Option<PathBuf> },
    /// The test hook `stop_after_step` stopped the run (feature `test-hooks`).
    #[error("stopped after step {step} (test hook)")]
    Stopped { step: u64 },
    /// A collective of data-parallel training failed (another rank failed or never came).
    #[error(transparent)]
    Comm(#[from] okapi_runtime::CommError),
}

/// Why a checkpoint cannot be resumed by this run.
#[derive(Debug, thiserror::Error)]
pub enum ResumeMismatch {
    #[error("no checkpoint there (expected checkpoint/trainer_state.json; is this an output directory with --save-every?)")]
    NoCheckpoint,
    #[error("checkpoint of `{saved}`, not of {expected}")]
    Command { saved: String, expected: &'static str },
    #[error("checkpoint of another model ({saved}), this run's is {given}")]
    Model { saved: String, given: String },
    #[error("checkpoint of {what} (fingerprint {saved} vs {given}): use the same {settings}")]
    Data { what: &'static str, saved: String, given: String, settings: &'static str },
    #[error("the run had {saved} {unit} in total, these settings give {given}")]
    Total { saved: u64, given: u64, unit: &'static str },
    #[error("the checkpoint's model has another parameter layout ({detail})")]
    Layout { detail: String },
    #[error("the run used --critic {used}")]
    Critic { used: &'static str },
    #[error("trainer_state.json has no `{field}`")]
    State { field: &'static str },
    #[error("the run used {flag} {saved}, this one {flag} {given}; a resume keeps every setting that decides the run's course (only --save-every, --eval-every, --log-every, --samples-every and --save-dtype may change)")]
    Setting { flag: String, saved: String, given: String },
}

/// `map_err` for I/O on `path`.
pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}
