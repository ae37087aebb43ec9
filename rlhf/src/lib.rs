//! okapi-rlhf: what runs on top of a model — the causal-LM loss, AdamW and schedules, SFT with
//! checkpoints and resume, log-likelihood scoring of lm-evaluation-harness requests. The reward
//! model, PPO, DPO and the benchmarks build here.

pub mod checkpoint;
pub mod eval;
pub mod dpo;
pub mod generate;
pub mod lm_loss;
pub mod loglik;
pub mod optim;
pub mod pairwise;
pub mod ppo;
pub mod progress;
pub mod reward;
pub mod schedule;
pub mod sft;
pub mod trainer;

pub use generate::{generate, Generation, Sampling};
pub use lm_loss::{lm_loss_and_grad, shift_labels, LossBufs};
pub use loglik::{score_loglik, LoglikResult};
pub use optim::{clip_coef, AdamWConfig, Optimizer};
pub use schedule::{LrSchedule, ScheduleKind};
pub use dpo::DpoObjective;
pub use reward::RewardObjective;
pub use sft::run_sft;
pub use trainer::{split_val, TrainConfig, TrainSummary};

/// A training command's failure: one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] okapi_model::ModelError),
    #[error(transparent)]
    Data(#[from] okapi_data::DataError),
    #[error("{0}")]
    Msg(String),
}
