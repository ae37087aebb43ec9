//! okapi-rlhf: what runs on top of a model — the causal-LM loss and the log-likelihood scoring
//! of lm-evaluation-harness requests today; SFT, the reward model, PPO, DPO and the benchmarks
//! build here.

pub mod lm_loss;
pub mod loglik;

pub use lm_loss::{lm_loss_and_grad, shift_labels, LossBufs};
pub use loglik::{score_loglik, LoglikResult};
