//! Faults at the worst moments: a kill at every step of two consecutive checkpoint saves (the
//! first run's, then the resumed run's), and SIGINT / SIGTERM in the middle of a run. Each time
//! a complete checkpoint stays on disk, and resuming ends bit-identical to a run never
//! interrupted.
//!
//! The kills come from the fault-injection hook `OKAPI_TEST_CRASH_AT=S:N` (okapi-rlhf's
//! `hooks.rs`, built into `cargo test`'s okapi-train): the process aborts, as under kill -9, at
//! the N-th crash point of its S-th checkpoint save — every rename and deletion of the swap.

mod common;

use common::{fixture, Scratch, SHORT_SFT_RECORDS, SHORT_TEMPLATE};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_okapi-train");

struct Setup {
    _s: Scratch,
    root: PathBuf,
    data: PathBuf,
    template: PathBuf,
}

fn setup(tag: &str) -> Setup {
    let s = Scratch::new(tag);
    let root = s.root.clone();
    std::fs::write(root.join("vi.jsonl"), SHORT_SFT_RECORDS).unwrap();
    std::fs::write(root.join("template.json"), SHORT_TEMPLATE).unwrap();
    Setup { data: root.join("vi.jsonl"), template: root.join("template.json"), root, _s: s }
}

/// `okapi-train sft` on the setup's data into `out`, `steps` steps with a checkpoint every
/// `every`.
fn sft_command(st: &Setup, out: &Path, steps: u32, every: u32) -> Command {
    let mut c = Command::new(BIN);
    c.args(["sft", "--model"]).arg(fixture("llama_gqa")).arg("--data").arg(&st.data).arg("--template").arg(&st.template).arg("--out").arg(out);
    c.args(["--max-steps", &steps.to_string(), "--save-every", &every.to_string()]);
    c.args(["--batch-size", "2", "--lr", "1e-3", "--warmup-steps", "1", "--max-len", "60", "--log-every", "1"]);
    c
}

/// `okapi-train sft` of 6 steps with a checkpoint every 2, into `out`.
fn sft(st: &Setup, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    sft_command(st, out, 6, 2).args(extra).envs(env.iter().copied()).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The step of the checkpoint a resume would read (`checkpoint/`, else `checkpoint.old/`),
/// after checking it is complete: its state parses and its files are there.
fn checkpoint_step(out: &Path) -> Option<u64> {
    let ckpt = ["checkpoint", "checkpoint.old"].iter().map(|c| out.join(c)).find(|c| c.join("trainer_state.json").exists())?;
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ckpt.join("trainer_state.json")).unwrap()).expect("a complete trainer_state.json");
    for f in ["optimizer.safetensors", "model/config.json", "model/model.safetensors"] {
        assert!(ckpt.join(f).exists(), "{}: {f} missing from a checkpoint whose state is written", ckpt.display());
    }
    state["step"].as_u64()
}

/// The fields of metrics.jsonl that must match an uninterrupted run's.
fn trajectory(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{} {} {} {} {}", v["step"], v["epoch"], v["loss"], v["lr"], v["grad_norm"])
        })
        .collect()
}

fn resume_args(out: &Path) -> Vec<String> {
    vec!["--resume".into(), out.display().to_string()]
}

/// The outcome of one kill sequence: whether the kill point existed (else the run completed).
enum Kill {
    Done,
    Beyond,
}

/// A kill at point `first` of the first run's second save (step 4), a resume killed at point
/// `second` of its first save, then a resume to the end: the result must be the uninterrupted
/// run's. `Beyond` when the first run's save has fewer points (it then completed).
fn two_kills(st: &Setup, full: &Path, first: u64, second: u64) -> Result<Kill, String> {
    let out = st.root.join(format!("run-{first}-{second}"));
    let ctx = |what: &str| format!("kill at point {first} of save 2, then at point {second} of the resumed run's first save: {what}");
    let o = sft(st, &out, &[], &[("OKAPI_TEST_CRASH_AT", &format!("2:{first}"))]);
    if o.status.success() {
        return Ok(Kill::Beyond);
    }
    let step = checkpoint_step(&out).ok_or_else(|| ctx("no complete checkpoint after the first kill"))?;
    if step != 2 && step != 4 {
        return Err(ctx(&format!("checkpoint of step {step} after a kill during the step-4 save")));
    }
    let ra = resume_args(&out);
    let ra: Vec<&str> = ra.iter().map(String::as_str).collect();
    let o = sft(st, &out, &ra, &[("OKAPI_TEST_CRASH_AT", &format!("1:{second}"))]);
    let second_hit = !o.status.success();
    if second_hit {
        checkpoint_step(&out).ok_or_else(|| ctx("no complete checkpoint after the second kill"))?;
        let o = sft(st, &out, &ra, &[]);
        if !o.status.success() {
            return Err(ctx(&format!("the last resume failed: {}", stderr(&o))));
        }
    }
    if trajectory(&out) != trajectory(full) {
        return Err(ctx(&format!("metrics differ from the uninterrupted run:\n{:?}\nvs\n{:?}", trajectory(&out), trajectory(full))));
    }
    if std::fs::read(out.join("model.safetensors")).unwrap() != std::fs::read(full.join("model.safetensors")).unwrap() {
        return Err(ctx("final weights differ from the uninterrupted run"));
    }
    let _ = std::fs::remove_dir_all(&out);
    Ok(if second_hit { Kill::Done } else { Kill::Beyond })
}

/// Every kill point of the resumed run's first save after a kill at point `first` of save 2;
/// the number of combinations run (0 when save 2 has no point `first`).
fn kills_after(st: &Setup, full: &Path, first: u64) -> Result<usize, String> {
    let mut n = 0;
    for second in 1.. {
        match two_kills(st, full, first, second)? {
            Kill::Done => n += 1,
            Kill::Beyond => return Ok(n),
        }
    }
    unreachable!()
}

#[test]
fn kills_at_every_point_of_two_consecutive_saves_lose_nothing() {
    let st = setup("two-kills");
    let full = st.root.join("full");
    let o = sft(&st, &full, &[], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(trajectory(&full).len(), 6);
    // save 2 passes at most 6 points; each first kill point in its own thread
    let results: Vec<Result<usize, String>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (1..=7).map(|first| sc.spawn({
            let (st, full) = (&st, &full);
            move || kills_after(st, full, first)
        })).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failures.is_empty(), "{} kill sequences failed:\n{}", failures.len(), failures.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"));
    let counts: Vec<usize> = results.iter().map(|r| *r.as_ref().unwrap()).collect();
    let points = counts.iter().filter(|&&c| c > 0).count();
    assert!(points >= 4, "save 2 passed only {points} kill points: {counts:?}");
    assert_eq!(counts[6], 0, "save 2 has fewer than 7 points (the test covers them all)");
    eprintln!("{} kill combinations over {points} points of save 2: every resume bit-identical", counts.iter().sum::<usize>());
}

#[cfg(unix)]
/// Starts a slowed-down run (100 ms per step), waits for its third metrics line, sends
/// `signals` (spaced by 20 ms) and returns its output.
fn signal_run(st: &Setup, out: &Path, signals: &[&str]) -> Output {
    let child = sft_command(st, out, 30, 8)
        .env("OKAPI_TEST_STEP_DELAY_MS", "100")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let metrics = out.join("metrics.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map(|t| t.lines().count()).unwrap_or(0) < 3 {
        assert!(t0.elapsed().as_secs() < 60, "the run did not start");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for sig in signals {
        common::send_signal(&child, sig);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[cfg(unix)]
#[test]
fn sigint_and_sigterm_stop_at_a_step_boundary_with_a_checkpoint() {
    let st = setup("signals");
    let full = st.root.join("full");
    let o = sft_command(&st, &full, 30, 8).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for sig in ["INT", "TERM"] {
        let out = st.root.join(format!("stopped-{sig}"));
        let o = signal_run(&st, &out, &[sig]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(130), "SIG{sig}: exit status 130; {err}");
        let last = err.lines().last().unwrap();
        let done = trajectory(&out).len() as u64;
        assert!((3..30).contains(&done), "SIG{sig}: stopped after {done} steps");
        let want = format!("error: interrupted after step {done} of 30: checkpoint saved in {}; continue with --resume {}", out.join("checkpoint").display(), out.display());
        assert_eq!(last, want, "SIG{sig}: {err}");
        assert_eq!(checkpoint_step(&out), Some(done), "SIG{sig}: the checkpoint holds every step the metrics show");
        assert!(!out.join("model.safetensors").exists(), "SIG{sig}: an interrupted run saves no final model");
        let ra = resume_args(&out);
        let o = sft_command(&st, &out, 30, 8).args(&ra).output().unwrap();
        assert!(o.status.success(), "SIG{sig}: resume: {}", stderr(&o));
        assert_eq!(trajectory(&out), trajectory(&full), "SIG{sig}: metrics after the resume");
        assert!(std::fs::read(out.join("model.safetensors")).unwrap() == std::fs::read(full.join("model.safetensors")).unwrap(), "SIG{sig}: final weights");
        let args: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("args.json")).unwrap()).unwrap();
        assert_eq!(args["resumed"].as_array().map(Vec::len), Some(1), "args.json records the resume");
    }
}

#[cfg(unix)]
#[test]
fn a_second_signal_stops_at_once_and_keeps_the_last_checkpoint() {
    let st = setup("two-signals");
    let out = st.root.join("out");
    let o = signal_run(&st, &out, &["INT", "INT"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.lines().last().unwrap().contains("interrupted again: stopped at once"), "{err}");
    // whatever the moment, a checkpoint on disk is complete, or none was written yet
    if let Some(step) = checkpoint_step(&out) {
        assert!(step <= trajectory(&out).len() as u64);
    }
    assert!(!out.join("model.safetensors").exists());
}
