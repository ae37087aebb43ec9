//! `okapi-train`: the command-line front end of okapi — parse, pick the backend, call the
//! library (okapi-rlhf and below), print one line per error. One file per command.

/// Runs `$body` with `$be` bound to the backend `--backend` resolves to. The commands are
/// generic over `B: Backend`, so the body is monomorphised once per backend built in.
/// `$precision` (`--precision`, an `okapi_runtime::Precision`) is f32 when omitted; bf16 needs a
/// GPU backend.
macro_rules! on_backend {
    ($kind:expr, |$be:ident| $body:expr) => {
        $crate::on_backend!($kind, okapi_runtime::Precision::F32, |$be| $body)
    };
    ($kind:expr, $precision:expr, |$be:ident| $body:expr) => {{
        let precision: okapi_runtime::Precision = $precision;
        let kind: okapi_runtime::BackendKind = $kind;
        if matches!(kind, okapi_runtime::BackendKind::Auto | okapi_runtime::BackendKind::Cuda) {
            // NVRTC where the user installed it (OKAPI_NVRTC_LIB, pip site-packages), before
            // `auto` asks whether CUDA is usable
            okapi_runtime::cuda::nvrtc::load(&okapi_runtime::cuda::nvrtc::NvrtcSearch::from_env());
        }
        match kind.resolve().map_err(|e| e.to_string())? {
            okapi_runtime::BackendKind::Cpu => {
                if precision != okapi_runtime::Precision::F32 {
                    return Err(format!("--precision {precision}: the CPU backend computes in f32 only (bf16 runs on --backend cuda)"));
                }
                let $be = okapi_runtime::CpuBackend;
                $body
            }
            okapi_runtime::BackendKind::Wgpu => {
                if precision != okapi_runtime::Precision::F32 {
                    return Err(format!("--precision {precision}: the wgpu backend computes in f32 only (bf16 runs on --backend cuda)"));
                }
                let $be = okapi_runtime::WgpuBackend::with_options(&okapi_runtime::WgpuOptions::from_env()).map_err(|e| e.to_string())?;
                eprintln!("wgpu adapter: {}", $be.adapter_name());
                $body
            }
            okapi_runtime::BackendKind::Cuda => {
                let $be = okapi_runtime::CudaBackend::with_options(&okapi_runtime::CudaOptions::from_env(precision)).map_err(|e| e.to_string())?;
                $body
            }
            other => Err(format!("backend {other:?} is not built into this binary")),
        }
    }};
}
pub(crate) use on_backend;

mod bench;
mod config;
mod demo;
mod eval;
mod eval_suite;
mod generate;
mod group;
mod init;
mod launch;
mod loglik;
mod lora_flags;
mod merge;
mod outdir;
mod pairs;
mod plan;
mod ppo;
mod ranks;
mod report;
mod rl_flags;
mod sft;
mod signals;
mod svg;
mod tokenizer;
mod train_flags;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "okapi-train", version, about = "Instruction-tune LLaMA and BLOOM models in 26 languages: SFT, reward model, PPO, multilingual evaluation")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The whole pipeline on the bundled multilingual data (the README's main command).
    Demo(demo::DemoArgs),
    /// Supervised fine-tuning on Okapi instruction files.
    Sft(sft::SftArgs),
    /// Reward model from ranked responses (pairs or ranked lists).
    Reward(pairs::RewardArgs),
    /// Rewards of records under a reward model.
    Score(pairs::ScoreArgs),
    /// PPO against a reward model with an adaptive KL penalty (Okapi's RLHF).
    Ppo(Box<ppo::PpoArgs>),
    /// GRPO: G completions per prompt, advantages against the group's mean (no critic).
    Grpo(Box<group::GroupArgs>),
    /// RLOO: G completions per prompt, each against the mean of the group's others (no critic).
    Rloo(Box<group::GroupArgs>),
    /// Direct preference optimisation on ranking data.
    Dpo(pairs::DpoArgs),
    /// Train a byte-level BPE tokenizer on Okapi instruction files.
    Tokenizer(tokenizer::TokenizerArgs),
    /// A seeded random model of a preset shape, in Hugging Face layout.
    Init(init::InitArgs),
    /// Log-likelihood of continuations (lm-evaluation-harness `loglikelihood` requests).
    Loglik(loglik::LoglikArgs),
    /// Generate a response to an instruction (Okapi's prompt template; sampling, no beams).
    Generate(generate::GenerateArgs),
    /// Multilingual benchmarks (m_arc, m_hellaswag, m_mmlu, TruthfulQA mc) as lm-evaluation-harness scores them.
    Eval(eval::EvalArgs),
    /// A base model and a LoRA adapter merged into one Hugging Face model.
    Merge(merge::MergeArgs),
    /// The memory a command will need, by part, against the device's free memory (table, then a JSON line).
    Plan(plan::PlanArgs),
    /// Time a training step or generation on a randomly initialised preset model (JSON line on stdout).
    Bench(bench::BenchArgs),
    /// One self-contained HTML page of runs: every metric's curve, eval tables and charts, samples, settings.
    Report(report::ReportArgs),
    /// One figure (SVG or PNG) of some metrics of some runs.
    Plot(report::PlotArgs),
    /// A data-parallel run of N ranks on this machine through mpirun (sft, reward, dpo, ppo, grpo, rloo; eval, loglik, score).
    Launch(launch::LaunchArgs),
}

/// The most worker threads `--threads` may ask for (far above any machine's cores; a typo
/// beyond it would spawn threads until the system refuses).
const MAX_THREADS: usize = 1024;

/// Runs a parsed command inside a rayon pool (see `okapi_runtime::run_in_pool`: the kernels
/// then run small ops inline instead of waking the pool for each); `Err` is the one line printed
/// before exiting with status 1.
pub fn run(cli: Cli) -> Result<(), String> {
    let threads = match &cli.command {
        Command::Bench(a) => a.threads.unwrap_or(0),
        _ => 0,
    };
    if let Command::Bench(bench::BenchArgs { threads: Some(n), .. }) = &cli.command {
        if *n == 0 || *n > MAX_THREADS {
            return Err(format!("--threads {n}: expected 1 to {MAX_THREADS}"));
        }
    }
    okapi_runtime::run_in_pool(threads, || dispatch(cli))
}

fn dispatch(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Sft(a) => sft::run(a),
        Command::Tokenizer(a) => tokenizer::run(a),
        Command::Reward(a) => pairs::run_reward(a),
        Command::Score(a) => pairs::run_score(a),
        Command::Dpo(a) => pairs::run_dpo(a),
        Command::Ppo(a) => ppo::run(*a),
        Command::Grpo(a) => group::run(*a, okapi_rlhf::ppo::group::Algo::Grpo),
        Command::Rloo(a) => group::run(*a, okapi_rlhf::ppo::group::Algo::Rloo),
        Command::Init(a) => init::run(a),
        Command::Loglik(a) => loglik::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Plan(a) => plan::run(a),
        Command::Merge(a) => merge::run(a),
        Command::Report(a) => report::run(a),
        Command::Plot(a) => report::plot(a),
        Command::Launch(a) => launch::run(a),
    }
}

/// The command line parsed, with `--config FILE`'s flags under the typed ones; a command-line
/// error in one line (clap's message without its usage block), or clap's own output for --help
/// and --version.
fn parse_args() -> (Cli, String) {
    let cmd = command_definition();
    let split = config::split(std::env::args_os().collect()).unwrap_or_else(|e| exit_with_line(&format!("error: {e}")));
    let sub_name = split.argv.get(1).map(|s| s.to_string_lossy().into_owned());
    let sub = sub_name.as_deref().and_then(|n| cmd.find_subcommand(n)).cloned();
    let config::Merged { argv, from_file } = match (&split.file, &sub) {
        (Some(file), Some(sub)) => config::merge(sub, split.argv, file).unwrap_or_else(|e| exit_with_line(&format!("error: {e}"))),
        _ => config::Merged { argv: split.argv, from_file: vec![] },
    };
    let blame = |e: &clap::Error| split.file.as_deref().and_then(|f| config::blame(e, &from_file, f));
    let matches = match cmd.try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) => exit_with_clap_error(e, blame),
    };
    if let (Some(sub), Some((_, m))) = (&sub, matches.subcommand()) {
        config::record(sub, m, split.file.clone());
    }
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| exit_with_clap_error(e, blame));
    (cli, sub_name.unwrap_or_default())
}

/// The command-line definition: `--help` shows each training flag's default (and Okapi's), every
/// subcommand takes `--config`, and `--weight-decay -1` is a value (refused by the setting's own
/// check), not an unknown flag.
fn command_definition() -> clap::Command {
    let mut cmd = train_flags::annotate(<Cli as clap::CommandFactory>::command());
    let names: Vec<String> = cmd.get_subcommands().map(|c| c.get_name().to_string()).collect();
    for name in names {
        cmd = cmd.mut_subcommand(name, |c| config::add_flag(c.allow_negative_numbers(true)));
    }
    cmd
}

fn exit_with_clap_error(e: clap::Error, blame: impl Fn(&clap::Error) -> Option<String>) -> ! {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
        e.exit();
    }
    let text = e.render().to_string();
    // the message is what precedes the usage block; its lines joined into one
    let message: Vec<&str> = text.lines().take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information")).map(str::trim).filter(|l| !l.is_empty()).collect();
    let line = message.join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    // a value that came from the config file names the file and its key
    let line = match blame(&e) {
        Some(origin) => format!("error: {origin}: {line}"),
        None => format!("error: {line}"),
    };
    eprintln!("{line}");
    std::process::exit(e.exit_code());
}

fn exit_with_line(line: &str) -> ! {
    eprintln!("{line}");
    std::process::exit(2);
}

fn main() -> ExitCode {
    // A bug must still end in one readable line, not a backtrace (RUST_BACKTRACE=1 restores it).
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        std::panic::set_hook(Box::new(|info| {
            // a panic okapi catches (inside the tokenizers crate) becomes an error line of its own
            if okapi_data::tokenizer::panic_is_caught() {
                return;
            }
            let loc = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            let msg = info.payload().downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| info.payload().downcast_ref::<String>().cloned()).unwrap_or_default();
            eprintln!("error: internal error{loc}: {msg} (please report it)");
        }));
    }
    // --help shows each training flag's default and, where it differs, Okapi's value
    let (cli, command) = parse_args();
    signals::install(matches!(cli.command, Command::Sft(_) | Command::Reward(_) | Command::Dpo(_) | Command::Ppo(_) | Command::Grpo(_) | Command::Rloo(_)));
    // under an MPI launcher: this process becomes one rank of the run
    if let Err(e) = ranks::init(&command) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let code = match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // every rank stops at the same step (a signal to any rank stops all): a normal end, status 130
        Err(e) if signals::interrupted() || okapi_rlhf::stop::requested() => {
            eprintln!("error: {e}");
            ExitCode::from(signals::EXIT_INTERRUPTED)
        }
        // with other ranks: this one's line, then the end of the whole job
        Err(e) => ranks::fail(&e),
    };
    ranks::finish();
    code
}
