//! Model errors: each names the file and the field or tensor at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid JSON: {msg}")]
    Json { path: PathBuf, msg: String },
    #[error("{path}: field `{field}`: {msg}")]
    Config { path: PathBuf, field: String, msg: String },
    #[error("{path}: not a valid safetensors file ({msg})")]
    Safetensors { path: PathBuf, msg: String },
    #[error("{path}: tensor `{name}`: {msg}")]
    Tensor { path: PathBuf, name: String, msg: String },
    #[error("{dir}: no weights found (expected model.safetensors or model.safetensors.index.json{extra})")]
    NoWeights { dir: PathBuf, extra: String },
    #[error("{dir}: tensor `{name}` is missing from the checkpoint (config needs it: {why})")]
    MissingTensor { dir: PathBuf, name: String, why: String },
    /// The memory check refused: what, how much of which memory, what is available.
    #[error("not enough memory for {what}: {detail}")]
    OutOfMemory { what: String, detail: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, ModelError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ModelError {
    let path = path.into();
    move |source| ModelError::Io { path, source }
}

/// `msg` on one line: libraries quote some input verbatim in their messages (serde an unknown
/// variant, safetensors a tensor's name), line breaks included.
pub(crate) fn one_line(msg: String) -> String {
    if msg.contains(['\n', '\r']) {
        msg.replace('\n', "\\n").replace('\r', "\\r")
    } else {
        msg
    }
}
