//! Training progress: an indicatif bar (loss, lr, tok/s, ETA) on a terminal, a plain line every
//! `log_every` steps otherwise (logs, CI).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

pub struct Progress {
    bar: Option<ProgressBar>,
    log_every: u64,
    total: u64,
}

impl Progress {
    pub fn new(total: u64, start_step: u64, log_every: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]").unwrap());
            bar.set_position(start_step);
            bar
        });
        Progress { bar, log_every: log_every.max(1), total }
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
                    eprintln!("step {step}/{}: {msg}", self.total);
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
