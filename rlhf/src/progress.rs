//! Training progress: an indicatif bar (loss, lr, tok/s, ETA) on a terminal, a plain line with
//! the rate and ETA every `log_every` steps otherwise (logs, CI).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

pub struct Progress {
    bar: Option<ProgressBar>,
    log_every: u64,
    total: u64,
    /// the step this process started from, and when
    start_step: u64,
    t0: std::time::Instant,
}

/// A time left, short: `4m05s`, `2h13m` (`?` when unknown).
pub fn eta(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "?".into();
    }
    let s = seconds.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Steps per second since `start` and the time left for `total`, from `t0`, after `step`.
pub fn rate_eta(t0: std::time::Instant, start: u64, step: u64, total: u64) -> (f64, f64) {
    let rate = step.saturating_sub(start) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
    (rate, total.saturating_sub(step) as f64 / rate)
}

impl Progress {
    pub fn new(total: u64, start_step: u64, log_every: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]").unwrap());
            bar.set_position(start_step);
            bar
        });
        Progress { bar, log_every: log_every.max(1), total, start_step, t0: std::time::Instant::now() }
    }

    pub fn step(&self, step: u64, loss: f64, lr: f64, tokens_per_s: f64) {
        let msg = format!("loss {loss:.4} lr {lr:.2e} {tokens_per_s:.0} tok/s");
        match &self.bar {
            Some(bar) => {
                bar.set_position(step);
                bar.set_message(msg);
            }
            None => {
                if step.is_multiple_of(self.log_every) || step == self.total || step == 1 {
                    let (rate, left) = rate_eta(self.t0, self.start_step, step, self.total);
                    eprintln!("step {step}/{}: {msg}, {rate:.2} steps/s, ETA {}", self.total, eta(left));
                }
            }
        }
    }

    /// A line that must show whatever the mode (validation, checkpoints).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
