//! Progress on stderr: an indicatif bar on a terminal, plain lines with the rate and ETA
//! otherwise (logs, CI). [`Progress`] counts training steps (a line every `log_every` steps);
//! [`Meter`] counts any other work — items scored, records, requests, rollouts — with a line at
//! most every [`Meter::PLAIN_EVERY_S`] seconds (`OKAPI_PROGRESS_EVERY_S` overrides it).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

pub struct Progress {
    bar: Option<ProgressBar>,
    log_every: u64,
    total: u64,
    /// the step this process started from, and when
    start_step: u64,
    t0: std::time::Instant,
    quiet: bool,
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
        Progress { bar, log_every: log_every.max(1), total, start_step, t0: std::time::Instant::now(), quiet: false }
    }

    /// Progress that shows nothing (data-parallel ranks other than 0).
    pub fn silent() -> Progress {
        Progress { bar: None, log_every: u64::MAX, total: 0, start_step: 0, t0: std::time::Instant::now(), quiet: true }
    }

    pub fn step(&self, step: u64, loss: f64, lr: f64, tokens_per_s: f64) {
        if self.quiet {
            return;
        }
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
        if self.quiet {
            return;
        }
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

/// A counter of work with its rate and ETA: a bar on a terminal, else a plain line
/// (`eval arc: 120/400 items, 3.52 items/s, ETA 1m20s`) at most every
/// [`Meter::PLAIN_EVERY_S`] seconds, none for work that ends sooner. [`Meter::silent`] shows nothing
/// (what library callers get by default).
pub struct Meter {
    label: String,
    unit: &'static str,
    total: u64,
    done: u64,
    t0: std::time::Instant,
    last_line: std::time::Instant,
    every: Option<std::time::Duration>,
    bar: Option<ProgressBar>,
}

impl Meter {
    /// Seconds between plain lines by default.
    pub const PLAIN_EVERY_S: f64 = 10.0;

    pub fn new(label: &str, unit: &'static str, total: u64) -> Meter {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let template = format!("{label} {{bar:30}} {{pos}}/{{len}} {unit} {{per_sec}} [{{elapsed_precise}} < {{eta_precise}}]");
            bar.set_style(ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()));
            bar
        });
        let every = std::env::var("OKAPI_PROGRESS_EVERY_S").ok().and_then(|v| v.parse::<f64>().ok()).filter(|s| s.is_finite() && *s >= 0.0).unwrap_or(Self::PLAIN_EVERY_S);
        let now = std::time::Instant::now();
        Meter { label: label.to_string(), unit, total, done: 0, t0: now, last_line: now, every: Some(std::time::Duration::from_secs_f64(every)), bar }
    }

    /// A meter that shows nothing.
    pub fn silent() -> Meter {
        let now = std::time::Instant::now();
        Meter { label: String::new(), unit: "", total: 0, done: 0, t0: now, last_line: now, every: None, bar: None }
    }

    /// `n` more units done.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
            return;
        }
        let Some(every) = self.every else { return };
        if self.last_line.elapsed() >= every && self.done > 0 {
            self.last_line = std::time::Instant::now();
            let (rate, left) = rate_eta(self.t0, 0, self.done, self.total);
            eprintln!("{}: {}/{} {}, {rate:.2} {}/s, ETA {}", self.label, self.done, self.total, self.unit, self.unit, eta(left));
        }
    }

    /// Clears the bar (plain mode has nothing to close).
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_is_short() {
        assert_eq!((eta(65.4), eta(7385.0), eta(f64::NAN)), ("1m05s".to_string(), "2h03m".to_string(), "?".to_string()));
    }

    #[test]
    fn a_silent_meter_counts_without_output() {
        let mut m = Meter::silent();
        m.advance(3);
        m.advance(2);
        assert_eq!(m.done, 5);
    }
}
