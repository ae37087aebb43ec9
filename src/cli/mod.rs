//! The `okapi-train` commands: parse → call. Each command returns a one-line error.

pub mod loglik;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "okapi-train", version, about = "Instruction-tune LLaMA and BLOOM models in 26 languages: SFT, reward model, PPO, multilingual evaluation")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Log-likelihood of continuations (lm-evaluation-harness `loglikelihood` requests).
    Loglik(loglik::LoglikArgs),
}

/// Runs a parsed command; `Err` is the one line printed before exiting with status 1.
pub fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Loglik(a) => loglik::run(a),
    }
}
