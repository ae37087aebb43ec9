//! okapi-rlhf: what runs on top of a model, usable as a library without the CLI — supervised
//! fine-tuning, the reward model, PPO (and GRPO / RLOO) and DPO on one shared trainer (AdamW, schedules,
//! clipping, accumulation, checkpoints with exact resume), generation with the KV cache,
//! log-likelihood scoring and the multilingual benchmarks as lm-evaluation-harness scores them.
//!
//! Settings come as named recipes: okapi-train's defaults ([`TrainConfig::sft`],
//! [`TrainConfig::reward`], [`TrainConfig::dpo`], [`PpoConfig::defaults`], [`PpoConfig::grpo`],
//! [`PpoConfig::rloo`]) and Okapi's published
//! ones ([`TrainConfig::okapi_sft`], [`TrainConfig::okapi_reward`], [`PpoConfig::okapi`]).
//! Every run returns its model and a summary; an output directory is optional.
//!
//! ```
//! use okapi_data::Example;
//! use okapi_model::{preset_config, Arch, Model};
//! use okapi_rlhf::{run_sft, TrainConfig};
//! use okapi_runtime::CpuBackend;
//!
//! // a small random LLaMA (the `tiny` preset with a 64-token vocabulary)
//! let cfg = preset_config(Arch::Llama, "tiny", Some(64), 64).unwrap();
//! let model = Model::init(CpuBackend, cfg, 0);
//! // two examples: a 3-token prompt (no loss) and a response ending in EOS (id 2)
//! let ex = |r: u32| Example { ids: vec![1, 5, 6, r, r + 1, 2], labels: vec![-100, -100, -100, r as i64, (r + 1) as i64, 2], prompt_len: 3 };
//! let train = vec![ex(10), ex(20)];
//! let cfg = TrainConfig { max_steps: Some(3), batch_size: 2, lr: 1e-2, warmup_steps: 0, ..TrainConfig::sft() };
//! let (_model, summary) = run_sft(model, train, vec![], &cfg, None).unwrap();
//! assert_eq!(summary.steps, 3);
//! assert!(summary.last_loss.unwrap() < summary.first_loss.unwrap());
//! ```

pub mod checkpoint;
pub mod dpo;
pub mod error;
pub mod eval;
pub mod generate;
pub mod grad_shards;
mod hooks;
pub mod lm_loss;
pub mod loglik;
pub mod optim;
pub mod pairwise;
pub mod ppo;
pub mod rewards;
pub mod progress;
mod recipes;
pub mod reward;
pub mod rundir;
pub mod schedule;
pub mod sft;
pub mod stop;
pub mod tensorboard;
pub mod trainer;

pub use dpo::DpoObjective;
pub use error::{ResumeMismatch, TrainError};
pub use generate::{generate, Generation, Sampling};
pub use lm_loss::{lm_loss_and_grad, lm_loss_blocks, shift_labels, LossBufs};
pub use loglik::{score_loglik, LoglikResult};
pub use optim::{clip_coef, AdamWConfig, Optimizer};
pub use ppo::{run_ppo, PpoConfig, PpoModels, PpoSummary};
pub use reward::RewardObjective;
pub use schedule::{LrSchedule, ScheduleKind};
pub use sft::{load_sft_data, load_sft_examples, run_sft, SftData};
pub use trainer::{split_val, train, RunDir, TrainConfig, TrainSummary};
