//! Data-parallel runs through MPI (`cargo test --features mpi --test mpi`; needs Open MPI's
//! `mpirun`, which `.ci/run` installs): `okapi-train launch --nproc 2` and `mpirun -np 2` train
//! sft, reward and dpo (`--zero 0`, `1` and `2`) to the single process's losses and gradient norms
//! (≤ 1e-6 relative per step) and parameters (≤ 5e-5 of each tensor's scale: see
//! tests/data_parallel.rs for why AdamW lets the order of the sums move them more than 1e-6), and
//! ppo to its samples, metrics and parameters; eval, loglik and score write the single process's
//! files; rank 0 writes the run, and a killed rank ends the job with one line naming it.
#![cfg(feature = "mpi")]

mod common;

use common::{fixture, metrics, one_error_line, tiny_ppo_inputs, Scratch, SHORT_SFT_RECORDS, SHORT_TEMPLATE};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_okapi-train");

/// Parameters after the steps, relative to each tensor's largest value (a rank training on its
/// own share only, or a tensor left out of the all-reduce, moves them by ~lr = 1e-3).
const PARAM_TOL: f32 = 5e-5;

/// PPO's parameters after 8 AdamW steps (2 iterations × 2 epochs × 2 minibatches, against SFT's
/// 3): each step's reordered sums move them a little more. A share left out of a minibatch, or
/// normalised by the share instead of the whole, moves them by ~lr = 1e-3 — and the second
/// iteration's metrics, which read the parameters after 4 steps, are held to 1e-6.
const PPO_PARAM_TOL: f32 = 2e-4;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn ok(o: Output, what: &str) -> Output {
    assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

fn single(args: &[String]) -> Output {
    ok(Command::new(BIN).args(args).output().unwrap(), "one process")
}

fn launch(n: usize, args: &[String]) -> Output {
    ok(Command::new(BIN).args(["launch", "--nproc", &n.to_string(), "--"]).args(args).output().unwrap(), "launch")
}

fn mpirun(n: usize, args: &[String]) -> Output {
    let mut c = Command::new("mpirun");
    c.args(["-np", &n.to_string(), "--oversubscribe"]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        c.arg("--allow-run-as-root");
    }
    ok(c.arg(BIN).args(args).output().unwrap(), "mpirun")
}

/// Every tensor of a run's model.safetensors by name.
fn params(out: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    names.into_iter().map(|n| (n.clone(), common::f32s(&st, &n))).collect()
}

fn worst_param_diff(a: &Path, b: &Path) -> f32 {
    let (pa, pb) = (params(a), params(b));
    assert_eq!(pa.iter().map(|(n, _)| n).collect::<Vec<_>>(), pb.iter().map(|(n, _)| n).collect::<Vec<_>>());
    common::worst_rel_diff(pa.iter().map(|(_, v)| v.as_slice()), pb.iter().map(|(_, v)| v.as_slice()))
}

/// Runs `args` (with `--out OUT` appended) as one process, as one process in micro-batches of one
/// item, and as `ways` of 2 ranks; checks each data-parallel run against the single one.
fn check_command(dir: &Path, name: &str, args: &[String], batch: usize) {
    let with_out = |out: &PathBuf, one_item: bool| -> Vec<String> {
        let mut v: Vec<String> = args.iter().cloned().chain(["--out".into(), p(out).into()]).collect();
        if one_item {
            let at = v.iter().position(|a| a == "--batch-size").unwrap();
            v[at + 1] = "1".into();
            v.extend(["--grad-accum".into(), batch.to_string()]);
        }
        v
    };
    let one = dir.join(format!("{name}-1"));
    single(&with_out(&one, false));
    let reordered = dir.join(format!("{name}-reordered"));
    single(&with_out(&reordered, true));
    eprintln!("{name}: reordering the sums in one process moves the parameters by {:.2e}", worst_param_diff(&reordered, &one));
    let (l, m) = (dir.join(format!("{name}-launch")), dir.join(format!("{name}-mpirun")));
    launch(2, &with_out(&l, false));
    mpirun(2, &with_out(&m, false));
    let want = metrics(&one);
    for out in [&l, &m] {
        let got = metrics(out);
        assert_eq!(got.len(), want.len(), "{}: steps", out.display());
        for (g, w) in got.iter().zip(&want) {
            for key in ["loss", "grad_norm"] {
                let (a, b) = (g[key].as_f64().unwrap(), w[key].as_f64().unwrap());
                assert!((a - b).abs() <= 1e-6 * b.abs(), "{} step {}: {key} {a} vs {b}", out.display(), w["step"]);
            }
            assert_eq!(g["tokens"], w["tokens"]);
        }
        let worst = worst_param_diff(out, &one);
        eprintln!("{name}: 2 ranks within {worst:.2e} of one process");
        assert!(worst <= PARAM_TOL, "{}: parameters {worst:e} from one process", out.display());
        assert!(out.join("args.json").exists() && out.join("tokenizer.json").exists(), "rank 0 writes the run");
    }
}

fn sft_args(dir: &Path) -> Vec<String> {
    let (data, tpl) = (dir.join("sft.jsonl"), dir.join("template.json"));
    let more = "{\"instruction\": \"Đếm đến năm.\", \"input\": \"\", \"output\": \"một hai ba bốn năm\"}\n{\"instruction\": \"Скажи привет\", \"input\": \"\", \"output\": \"Привет!\"}\n";
    std::fs::write(&data, format!("{SHORT_SFT_RECORDS}{more}")).unwrap();
    std::fs::write(&tpl, SHORT_TEMPLATE).unwrap();
    ["sft", "--model", p(&fixture("llama_gqa")), "--data", p(&data), "--template", p(&tpl), "--max-len", "60", "--max-steps", "3", "--batch-size", "3", "--lr", "1e-3", "--warmup-steps", "0", "--no-shuffle"].iter().map(|s| s.to_string()).collect()
}

#[test]
fn sft_reward_and_dpo_on_two_ranks_equal_one_process() {
    let scratch = Scratch::new("mpi");
    let dir = &scratch.root;
    check_command(dir, "sft", &sft_args(dir), 3);
    let (policy, _, _, _) = tiny_ppo_inputs(dir, &["--max-steps", "1"], &["Hi."]);
    let pairs = |cmd: &str| -> Vec<String> { [cmd, "--model", p(&policy), "--data", p(&fixture("ranking_data.json")), "--max-steps", "2", "--batch-size", "2", "--lr", "1e-3", "--warmup-steps", "0", "--seed", "4"].iter().map(|s| s.to_string()).collect() };
    check_command(dir, "reward", &pairs("reward"), 2);
    check_command(dir, "dpo", &pairs("dpo"), 2);
}

/// The pids of the processes whose command line holds `needle` (from /proc).
fn pids_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.starts_with(BIN) && text.contains(needle) && !text.contains(" launch ") {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// A 2-rank SFT of 100 000 steps (20 ms each) under `launch` into `out`, once both ranks run and
/// `ready(out, lines of metrics.jsonl)`: the launch process and the ranks' pids.
// the caller waits for the returned child
#[allow(clippy::zombie_processes)]
fn long_job(dir: &Path, out: &Path, extra: &[&str], ready: impl Fn(&Path, usize) -> bool) -> (std::process::Child, Vec<u32>) {
    let mut args = sft_args(dir);
    let at = args.iter().position(|a| a == "--max-steps").unwrap();
    args[at + 1] = "100000".into();
    args.extend(["--out", p(out)].iter().chain(extra).map(|s| s.to_string()));
    let mut child = Command::new(BIN).args(["launch", "--nproc", "2", "--"]).args(&args).env("OKAPI_TEST_STEP_DELAY_MS", "20").stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    loop {
        let pids = pids_with(p(out));
        let steps = std::fs::read_to_string(out.join("metrics.jsonl")).map(|t| t.lines().count()).unwrap_or(0);
        if pids.len() == 2 && ready(out, steps) {
            return (child, pids);
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("the ranks did not start: {pids:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A rank killed mid-run: launch ends within seconds (no hang), non-zero, with one line naming
/// the rank; the run's last checkpoint is whole.
#[test]
fn a_killed_rank_ends_the_job_with_one_line() {
    let scratch = Scratch::new("mpi-kill");
    let out = scratch.root.join("killed-run");
    let (child, ranks) = long_job(&scratch.root, &out, &["--save-every", "20"], |out, _| out.join("checkpoint").exists());
    // SAFETY: kill(2) on a rank this test started (through launch and mpirun).
    assert_eq!(unsafe { libc::kill(ranks[1] as libc::pid_t, libc::SIGKILL) }, 0);
    let killed_at = Instant::now();
    let o = child.wait_with_output().unwrap();
    assert!(killed_at.elapsed() < Duration::from_secs(30), "the job took {:?} to end", killed_at.elapsed());
    let line = one_error_line(&o, &["of 2 died (exited on signal 9 (Killed)); mpirun stopped the other ranks"]);
    assert!(line.starts_with("error: rank 0 of 2") || line.starts_with("error: rank 1 of 2"), "{line}");
    assert!(pids_with(p(&out)).is_empty(), "every rank ended");
    // the checkpoint on disk is a whole one (written last: its trainer_state.json)
    let ckpt: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint/trainer_state.json")).unwrap()).unwrap();
    assert!(ckpt["step"].as_u64().unwrap() >= 20);
}

/// A 2-rank run stopped after a checkpoint resumes on 2 ranks to the uninterrupted run's model,
/// bit for bit, and on one process (the state is replicated: any world size continues it) to the
/// same losses and, up to the order of the sums, the same parameters.
#[test]
fn a_two_rank_run_resumes_bit_for_bit_and_on_one_process() {
    let scratch = Scratch::new("mpi-resume");
    let dir = &scratch.root;
    let mut args = sft_args(dir);
    let at = args.iter().position(|a| a == "--max-steps").unwrap();
    args[at + 1] = "4".into();
    args.extend(["--save-every".into(), "2".into()]);
    let with = |out: &Path, more: &[&str]| -> Vec<String> { args.iter().cloned().chain(["--out".into(), p(out).into()]).chain(more.iter().map(|s| s.to_string())).collect() };
    let full = dir.join("full");
    launch(2, &with(&full, &[]));
    let part = dir.join("part");
    let stopped = Command::new(BIN).args(["launch", "--nproc", "2", "--"]).args(with(&part, &[])).env("OKAPI_TEST_EXIT_AFTER_STEP", "2").output().unwrap();
    assert!(!stopped.status.success() && part.join("checkpoint").exists(), "{}", String::from_utf8_lossy(&stopped.stderr));
    let part1 = dir.join("part-one-process");
    copy_dir(&part, &part1);
    launch(2, &with(&part, &["--resume", p(&part)]));
    assert_eq!(std::fs::read(part.join("model.safetensors")).unwrap(), std::fs::read(full.join("model.safetensors")).unwrap(), "resumed on 2 ranks: the same model");
    single(&with(&part1, &["--resume", p(&part1)]));
    let (got, want) = (metrics(&part1), metrics(&full));
    assert_eq!(got.len(), 4);
    for (g, w) in got.iter().zip(&want) {
        let (a, b) = (g["loss"].as_f64().unwrap(), w["loss"].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-6 * b.abs(), "step {}: {a} vs {b}", w["step"]);
    }
    assert!(worst_param_diff(&part1, &full) <= PARAM_TOL);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// Ctrl-C reaching one rank only (SIGINT to rank 1) stops every rank at the same step: rank 0
/// writes a checkpoint of the steps done and says where, status 130.
#[test]
fn an_interrupt_to_one_rank_stops_all_at_a_checkpoint() {
    let scratch = Scratch::new("mpi-int");
    let out = scratch.root.join("interrupted-run");
    let (child, ranks) = long_job(&scratch.root, &out, &[], |_, steps| steps >= 3);
    // SAFETY: kill(2) on a rank this test started (through launch and mpirun).
    assert_eq!(unsafe { libc::kill(ranks[1] as libc::pid_t, libc::SIGINT) }, 0);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", String::from_utf8_lossy(&o.stderr));
    one_error_line(&o, &["interrupted after step", "checkpoint saved in", "continue with --resume"]);
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint/trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["step"].as_u64().unwrap() as usize, metrics(&out).len(), "the checkpoint holds every step of metrics.jsonl");
}

/// `--zero 1` on 2 ranks: the same model and the same (gathered) checkpoint, bytes for bytes, as
/// `--zero 0`; the ZeRO-1 checkpoint resumes on one process.
#[test]
fn zero_1_on_two_ranks_is_zero_0_bit_for_bit() {
    let scratch = Scratch::new("mpi-zero");
    let dir = &scratch.root;
    let mut args = sft_args(dir);
    args.extend(["--save-every".into(), "3".into()]);
    let with = |out: &Path, more: &[&str]| -> Vec<String> { args.iter().cloned().chain(["--out".into(), p(out).into()]).chain(more.iter().map(|s| s.to_string())).collect() };
    let (z0, z1) = (dir.join("zero0"), dir.join("zero1"));
    launch(2, &with(&z0, &[]));
    launch(2, &with(&z1, &["--zero", "1"]));
    for f in ["model.safetensors", "checkpoint/optimizer.safetensors", "checkpoint/model/model.safetensors"] {
        assert_eq!(std::fs::read(z1.join(f)).unwrap(), std::fs::read(z0.join(f)).unwrap(), "{f}");
    }
    // one process continues the ZeRO-1 run's checkpoint (a finished run: its model again)
    let o = single(&with(&z1, &["--resume", p(&z1)]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("the run had finished"));
}

/// `--zero 2` on 2 ranks (launch and mpirun): the blocks' gradients reduced to their owners as
/// the backward runs, the run equal to one process's as `--zero 0` is (losses 1e-6, parameters
/// `PARAM_TOL`); its checkpoint resumes on one process; a micro-batch that would leave a rank
/// without items is refused in one line.
#[test]
fn zero_2_on_two_ranks_equals_one_process() {
    let scratch = Scratch::new("mpi-zero2");
    let dir = &scratch.root;
    let mut args = sft_args(dir);
    // 7 examples in micro-batches of 4: shares of 2 + 2 and 2 + 1
    let at = args.iter().position(|a| a == "--batch-size").unwrap();
    args[at + 1] = "4".into();
    args.extend(["--zero".into(), "2".into(), "--save-every".into(), "3".into()]);
    check_command(dir, "sft-zero2", &args, 4);
    let o = single(&args.iter().cloned().chain(["--out".into(), p(&dir.join("sft-zero2-mpirun")).into(), "--resume".into(), p(&dir.join("sft-zero2-mpirun")).into()]).collect::<Vec<_>>());
    assert!(String::from_utf8_lossy(&o.stderr).contains("the run had finished"));
    args[at + 1] = "3".into();
    let out = dir.join("refused");
    let o = Command::new(BIN).args(["launch", "--nproc", "2", "--"]).args(&args).args(["--out", p(&out)]).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--zero: 2 on 2 ranks needs every micro-batch to give each rank an item: the last micro-batch of an epoch has 1 of the 7 training items"), "{err}");
    assert!(!out.join("args.json").exists(), "nothing written");
}

/// Reward and DPO with `--zero 1` and `--zero 2` on 2 ranks equal one process as `--zero 0`
/// does (the 3 ranked prompts in one micro-batch of 3: shares of 2 and 1).
#[test]
fn reward_and_dpo_with_zero_1_and_2_on_two_ranks_equal_one_process() {
    let scratch = Scratch::new("mpi-pairs-zero");
    let dir = &scratch.root;
    let (policy, _, _, _) = tiny_ppo_inputs(dir, &["--max-steps", "1"], &["Hi."]);
    let rankings = fixture("ranking_data.json");
    for cmd in ["reward", "dpo"] {
        for zero in ["1", "2"] {
            let args = strings(&[cmd, "--model", p(&policy), "--data", p(&rankings), "--max-steps", "2", "--batch-size", "3", "--lr", "1e-3", "--warmup-steps", "0", "--seed", "4", "--zero", zero]);
            check_command(dir, &format!("{cmd}-zero{zero}"), &args, 3);
        }
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The per-item files of a suite run (name → bytes).
fn items_files(out: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for model in std::fs::read_dir(out.join("items")).unwrap() {
        let model = model.unwrap().path();
        for f in std::fs::read_dir(&model).unwrap() {
            let f = f.unwrap().path();
            files.push((format!("{}/{}", model.file_name().unwrap().to_str().unwrap(), f.file_name().unwrap().to_str().unwrap()), std::fs::read(&f).unwrap()));
        }
    }
    files.sort();
    files
}

/// eval (one task, and the suite), loglik and score split their items across 2 ranks and write
/// the single process's files byte for byte; rank 0 alone prints the results.
#[test]
fn eval_loglik_and_score_on_two_ranks_write_the_single_process_files() {
    let scratch = Scratch::new("mpi-eval");
    let dir = &scratch.root;
    let llama = fixture("llama_gqa");
    let with = |args: &[&str], flag: &str, out: &Path| -> Vec<String> { strings(args).into_iter().chain([flag.to_string(), p(out).to_string()]).collect() };
    // (what, command line without its output, output flag)
    let (arc, requests, rankings) = (fixture("eval/arc_vi.json"), llama.join("loglik.jsonl"), fixture("ranking_data.json"));
    let eval = ["eval", "--model", p(&llama), "--task", "arc", "--data", p(&arc), "--batch-size", "2"];
    let loglik = ["loglik", "--model", p(&llama), "--data", p(&requests), "--batch-size", "3"];
    let (_, rm, _, _) = tiny_ppo_inputs(dir, &["--max-steps", "1"], &["Hi."]);
    let score = ["score", "--model", p(&rm), "--data", p(&rankings), "--batch-size", "1"];
    for (what, args) in [("eval", &eval[..]), ("loglik", &loglik[..]), ("score", &score[..])] {
        let (one, two) = (dir.join(format!("{what}-1.jsonl")), dir.join(format!("{what}-2.jsonl")));
        let o1 = single(&with(args, "--output", &one));
        let o2 = mpirun(2, &with(args, "--output", &two));
        let (a, b) = (std::fs::read(&one).unwrap(), std::fs::read(&two).unwrap());
        assert!(!a.is_empty() && a == b, "{what}: 2 ranks wrote\n{}\none process wrote\n{}", String::from_utf8_lossy(&b), String::from_utf8_lossy(&a));
        let json_lines = |o: &Output| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with('{')).count();
        assert_eq!(json_lines(&o2), json_lines(&o1), "{what}: rank 0 alone prints:\n{}", String::from_utf8_lossy(&o2.stdout));
    }
    // the suite: 6 ARC and 6 HellaSwag items in Vietnamese, groups of 4, batches of 2
    let suite = |out: &Path| -> Vec<String> { strings(&["eval", "--suite", "okapi", "--data-dir", "bundled", "--model", p(&llama), "--langs", "vi", "--tasks", "arc,hellaswag", "--limit", "6", "--batch-size", "2", "--save-every", "4", "--out", p(out)]) };
    let (one, two) = (dir.join("suite-1"), dir.join("suite-2"));
    single(&suite(&one));
    let o = launch(2, &suite(&two));
    let files = items_files(&one);
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(items_files(&two), files, "the suite's per-item files");
    assert_eq!(std::fs::read(two.join("results.json")).unwrap(), std::fs::read(one.join("results.json")).unwrap());
    assert_eq!(String::from_utf8_lossy(&o.stdout).matches("| ARC · llama_gqa |").count(), 1, "rank 0 alone prints the table: {}", String::from_utf8_lossy(&o.stdout));
    // a second run on 2 ranks finds every item done and scores nothing
    let again = launch(2, &suite(&two));
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 items scored"), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(items_files(&two), files);
}

/// PPO on 2 ranks (mpirun and launch): the same rollouts and samples (each chunk is sampled
/// with its own seed on whichever rank takes it), the metrics of one process (≤ 1e-6 relative in
/// the first iteration, 1e-5 after: the minibatch's shares are summed over the ranks) and its
/// parameters; with the value head on the policy, and with a separate critic on a hydra
/// reference; `--zero 1` gives the `--zero 0` run and checkpoint bit for bit, `--zero 2` the
/// one-process run as `--zero 0` does.
#[test]
fn ppo_on_two_ranks_equals_one_process() {
    let scratch = Scratch::new("mpi-ppo");
    let dir = &scratch.root;
    let (policy, rm, prompts, _) = tiny_ppo_inputs(dir, &["--max-steps", "1"], &["Hi.", "Đếm đến ba.", "Скажи привет", "Name a colour.", "数到三", "Say yes."]);
    let base = strings(&["ppo", "--policy", p(&policy), "--reward", p(&rm), "--prompts", p(&prompts), "--iterations", "2", "--rollouts", "6", "--chunk-size", "2", "--ppo-batch-size", "3", "--ppo-epochs", "2", "--max-new-tokens", "5", "--temperature", "0.9", "--seed", "5", "--lr", "1e-3", "--save-every", "1"]);
    for (name, extra) in [("value-head", vec![]), ("critic", strings(&["--critic", "separate", "--unfrozen-layers", "1", "--reference", "hydra"]))] {
        let run = |out: &Path| -> Vec<String> { base.iter().cloned().chain(extra.iter().cloned()).chain(["--out".to_string(), p(out).to_string()]).collect() };
        let one = dir.join(format!("ppo-{name}-1"));
        single(&run(&one));
        let (l, m) = (dir.join(format!("ppo-{name}-launch")), dir.join(format!("ppo-{name}-mpirun")));
        launch(2, &run(&l));
        mpirun(2, &run(&m));
        let want = metrics(&one);
        assert_eq!(want.len(), 2);
        for out in [&l, &m] {
            let got = metrics(out);
            assert_eq!(got.len(), want.len(), "{}: iterations", out.display());
            for (g, w) in got.iter().zip(&want) {
                for (key, value) in w.as_object().unwrap() {
                    if key.starts_with("time_") || key == "elapsed_s" || key == "rollout_tokens_per_s" {
                        continue;
                    }
                    // iteration 1 reads the initial parameters; later ones read parameters
                    // that the reordered sums moved (see PPO_PARAM_TOL)
                    let tol = if w["iteration"] == 1 { 1e-6 } else { 1e-5 };
                    let (a, b) = (g[key].as_f64().unwrap(), value.as_f64().unwrap());
                    assert!((a - b).abs() <= tol * a.abs().max(b.abs()) + 1e-12, "{name} {} iteration {}: {key} {a} vs {b}", out.display(), w["iteration"]);
                }
            }
            assert!(std::fs::read(out.join("samples.jsonl")).unwrap() == std::fs::read(one.join("samples.jsonl")).unwrap(), "{name}: samples differ from one process's");
            let worst = worst_param_diff(out, &one);
            eprintln!("ppo {name}: 2 ranks within {worst:.2e} of one process");
            assert!(worst <= PPO_PARAM_TOL, "{name} {}: parameters {worst:e} from one process", out.display());
            assert!(out.join("args.json").exists() && out.join("value_head.safetensors").exists() == (name == "value-head"), "rank 0 writes the run");
        }
        // --zero 1: the policy's (and critic's) AdamW state sharded, the same run bit for bit and
        // the same checkpoint (the whole state gathered into the usual files)
        let z = dir.join(format!("ppo-{name}-zero1"));
        mpirun(2, &run(&z).into_iter().chain(["--zero".to_string(), "1".to_string()]).collect::<Vec<_>>());
        let timeless = |out: &Path| -> Vec<serde_json::Value> {
            metrics(out).into_iter().map(|mut v| {
                v.as_object_mut().unwrap().retain(|k, _| !(k.starts_with("time_") || k == "elapsed_s" || k == "rollout_tokens_per_s"));
                v
            }).collect()
        };
        assert_eq!(timeless(&z), timeless(&m), "{name}: --zero 1 metrics");
        let mut files = vec!["model.safetensors", "checkpoint/optimizer.safetensors"];
        if name == "critic" {
            files.extend(["critic/model.safetensors", "checkpoint/critic_optimizer.safetensors"]);
        }
        for f in files {
            assert!(std::fs::read(z.join(f)).unwrap() == std::fs::read(m.join(f)).unwrap(), "{name}: --zero 1 {f} differs from --zero 0's");
        }
        // --zero 2: the blocks' gradients reduced to their owners during the backward — the
        // same samples, and one process's metrics and parameters as --zero 0 gives them
        let z2 = dir.join(format!("ppo-{name}-zero2"));
        mpirun(2, &run(&z2).into_iter().chain(["--zero".to_string(), "2".to_string()]).collect::<Vec<_>>());
        assert!(std::fs::read(z2.join("samples.jsonl")).unwrap() == std::fs::read(one.join("samples.jsonl")).unwrap(), "{name} --zero 2: samples differ from one process's");
        for (g, w) in timeless(&z2).iter().zip(&timeless(&one)) {
            for (key, value) in w.as_object().unwrap() {
                let tol = if w["iteration"] == 1 { 1e-6 } else { 1e-5 };
                let (a, b) = (g[key].as_f64().unwrap(), value.as_f64().unwrap());
                assert!((a - b).abs() <= tol * a.abs().max(b.abs()) + 1e-12, "{name} --zero 2 iteration {}: {key} {a} vs {b}", w["iteration"]);
            }
        }
        let worst = worst_param_diff(&z2, &one);
        eprintln!("ppo {name} --zero 2: 2 ranks within {worst:.2e} of one process");
        assert!(worst <= PPO_PARAM_TOL, "{name} --zero 2: parameters {worst:e} from one process");
    }
    // a minibatch that would leave a rank without rollouts is refused before anything is written
    let out = dir.join("ppo-refused");
    let o = Command::new(BIN).args(["launch", "--nproc", "2", "--"]).args(base.iter().map(|a| if a == "3" { "5" } else { a.as_str() })).args(["--zero", "2", "--out", p(&out)]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--zero: 2 on 2 ranks needs every micro-batch to give each rank an item: the last micro-batch of an epoch has 1 of the 6 rollouts of an iteration"), "{err}");
    assert!(!out.exists(), "nothing written");
}

#[test]
fn grpo_and_rloo_on_two_ranks_equal_one_process() {
    let scratch = Scratch::new("mpi-grpo");
    let dir = &scratch.root;
    let (policy, rm, prompts, _) = tiny_ppo_inputs(dir, &["--max-steps", "1"], &["Hi.", "Đếm đến ba.", "Скажи привет", "Name a colour."]);
    for (cmd, extra) in [("grpo", strings(&["--reward", "rm=1,lang=0.5,length=-0.01", "--reward-model", p(&rm), "--num-iterations", "2"])), ("rloo", strings(&["--reward", "lang=1,length=-0.1", "--beta", "0", "--loss-type", "grpo"]))] {
        let base = strings(&[cmd, "--policy", p(&policy), "--prompts", p(&prompts), "--iterations", "2", "--rollouts", "6", "--num-generations", "3", "--chunk-size", "2", "--batch-size", "3", "--max-new-tokens", "5", "--seed", "5", "--lr", "1e-3"]);
        let run = |out: &Path, more: &[&str]| -> Vec<String> { base.iter().cloned().chain(extra.iter().cloned()).chain(strings(more)).chain(["--out".to_string(), p(out).to_string()]).collect() };
        let one = dir.join(format!("{cmd}-1"));
        single(&run(&one, &[]));
        for (name, more) in [("mpirun", vec![]), ("zero2", vec!["--zero", "2"])] {
            let out = dir.join(format!("{cmd}-{name}"));
            mpirun(2, &run(&out, &more));
            assert!(std::fs::read(out.join("samples.jsonl")).unwrap() == std::fs::read(one.join("samples.jsonl")).unwrap(), "{cmd} {name}: samples differ from one process's");
            for (g, w) in metrics(&out).iter().zip(&metrics(&one)) {
                for (key, value) in w.as_object().unwrap() {
                    if key.starts_with("time_") || key == "elapsed_s" || key == "rollout_tokens_per_s" {
                        continue;
                    }
                    let tol = if w["iteration"] == 1 { 1e-6 } else { 1e-5 };
                    let (a, b) = (g[key].as_f64().unwrap(), value.as_f64().unwrap());
                    assert!((a - b).abs() <= tol * a.abs().max(b.abs()) + 1e-12, "{cmd} {name} iteration {}: {key} {a} vs {b}", w["iteration"]);
                }
            }
            // 8 AdamW steps at lr 1e-3 move ~all elements by ~8e-3; rounding of the reordered
            // sums shifts a few elements with tiny gradients by a fraction of a step (measured: 1
            // element of 0.9M by 2.3e-5, 2.9e-4 of its tensor's scale). A share left out or wrongly
            // normalised moves most elements by ~lr.
            let worst = worst_param_diff(&out, &one);
            let off: usize = params(&out).iter().zip(params(&one)).map(|((_, a), (_, b))| a.iter().zip(&b).filter(|(x, y)| (*x - *y).abs() > 1e-5).count()).sum();
            eprintln!("{cmd} {name}: 2 ranks within {worst:.2e} of one process, {off} elements off by > 1e-5");
            assert!(worst <= 1e-3 && off <= 8, "{cmd} {name}: parameters {worst:e} from one process, {off} elements off by > 1e-5");
        }
    }
}
