//! The choices where trlx (and so Okapi's run) and okapi's defaults differ, each a flag of
//! `okapi-train ppo`; `--recipe okapi` takes trlx's. docs/trlx-differences.md explains each.

use crate::TrainError;

macro_rules! choice {
    ($(#[$doc:meta])* $name:ident, $flag:literal { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// The flag that sets it.
            pub const FLAG: &'static str = $flag;

            /// The flag's value for this choice.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// One line naming the flag and the values it takes when `s` is none of them.
            pub fn parse(s: &str) -> Result<Self, TrainError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(TrainError::Setting { setting: $flag, problem: format!("{s}: expected {}", [$($text),+].join(" or ")) }),
                }
            }
        }
    };
}

choice! {
    /// The value head on the policy's trunk.
    ValueHeadKind, "--value-head" {
        /// trlx's `make_head`: Linear(C, 2C) → ReLU → Linear(2C, 1), PyTorch's default init
        Mlp = "mlp",
        /// Linear(C, 1), N(0, initializer_range) weights, zero bias
        Linear = "linear",
    }
}

choice! {
    /// Over which advantages each whitening pools its mean and variance.
    WhitenScope, "--whiten" {
        /// once per iteration over every response token of every rollout (variance with
        /// Bessel's correction, as `torch.var_mean`)
        Batch = "batch",
        /// per optimizer-step minibatch, every time it is drawn (biased variance, as trlx's
        /// whitening pooled across ranks)
        Minibatch = "minibatch",
    }
}

choice! {
    /// How a minibatch's per-token losses are averaged.
    LossNorm, "--loss-norm" {
        /// the token mean over the minibatch
        Token = "token",
        /// each sequence's token mean, averaged over the minibatch's sequences (trlx with
        /// microbatches of one sequence)
        Sequence = "sequence",
    }
}

choice! {
    /// What the adaptive KL controller is fed, and how often it moves.
    KlControl, "--kl-control" {
        /// once per iteration (n_steps = rollouts), with the mean over rollouts of the summed
        /// log-ratio log π − log π_ref over the response
        ResponseK1 = "response-k1",
        /// after every PPO epoch (n_steps = --ppo-batch-size), with trlx's estimate: per chunk
        /// the mean over rollouts of k3 = (ρ − 1) − log ρ summed over every real position
        /// (prompt and response), then the chunks' √ averaged and squared
        Trlx = "trlx",
    }
}

choice! {
    /// How RL prompts become token ids.
    PromptEncoding, "--prompt-encoding" {
        /// with the tokenizer's special tokens (LLaMA's BOS); longer than --max-prompt-len:
        /// skipped
        BosSkip = "bos-skip",
        /// without special tokens, longer ones left-truncated to --max-prompt-len (trlx's
        /// PromptPipeline)
        Trlx = "trlx",
    }
}

choice! {
    /// What GRPO divides the centred rewards by (TRL's `scale_rewards`).
    ScaleRewards, "--scale-rewards" {
        /// nothing (Dr. GRPO's unscaled advantages)
        None = "none",
        /// the group's standard deviation (with Bessel's correction) + 1e-4
        Group = "group",
        /// the whole batch's standard deviation (with Bessel's correction) + 1e-4
        Batch = "batch",
    }
}

choice! {
    /// How an optimizer step's per-token losses are aggregated (TRL's `loss_type`).
    LossType, "--loss-type" {
        /// each completion's token mean, averaged over the completions (DeepSeekMath's GRPO)
        Grpo = "grpo",
        /// the token mean over the step's completions
        Bnpo = "bnpo",
        /// the token sum over the step's completions / (completions × --max-new-tokens)
        DrGrpo = "dr_grpo",
    }
}

/// A prompt's ids under `enc`, or `None` when `bos-skip` skips it for being longer than
/// `limit` tokens. Also says whether `trlx` truncated it.
pub fn encode_prompt(tok: &okapi_data::Tokenizer, text: &str, enc: PromptEncoding, limit: usize) -> Result<(Option<Vec<u32>>, bool), TrainError> {
    Ok(fit_prompt(tok.encode(text, enc == PromptEncoding::BosSkip)?, enc, limit))
}

/// As [`encode_prompt`] for ids already tokenized (a chat template's, which carry their own
/// special tokens): skipped or left-truncated beyond `limit` as `enc` says.
pub fn fit_prompt(ids: Vec<u32>, enc: PromptEncoding, limit: usize) -> (Option<Vec<u32>>, bool) {
    match enc {
        _ if ids.len() <= limit => (Some(ids), false),
        PromptEncoding::BosSkip => (None, false),
        PromptEncoding::Trlx => (Some(ids[ids.len() - limit..].to_vec()), true),
    }
}
