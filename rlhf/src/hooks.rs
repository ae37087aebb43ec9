//! Fault-injection hooks for the crash and resume tests, compiled in only with the feature
//! `test-hooks` (the `okapi` package enables it for its own tests through a dev-dependency, so
//! `cargo test` builds `okapi-train` with them and `cargo build` does not). Without the feature
//! every hook is a no-op and the library reads no environment variable.

/// `OKAPI_TEST_EXIT_AFTER_STEP=N`: the trainer stops with an error right after step N.
#[cfg(feature = "test-hooks")]
pub fn stop_after_step(step: u64) -> bool {
    std::env::var("OKAPI_TEST_EXIT_AFTER_STEP").ok().and_then(|s| s.parse::<u64>().ok()) == Some(step)
}

/// `OKAPI_TEST_CRASH_AT=POINT:N`: the process aborts (a kill -9) the N-th time it reaches the
/// named point of a checkpoint save (`partial`, `written`, `rotated`, `swapped`, `trashing`; see
/// `checkpoint::save_with`).
#[cfg(feature = "test-hooks")]
pub fn crash_point(point: &str) {
    use std::sync::Mutex;
    static PASSED: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());
    let Ok(spec) = std::env::var("OKAPI_TEST_CRASH_AT") else { return };
    let Some((want, n)) = spec.split_once(':') else { return };
    if want != point {
        return;
    }
    let mut passed = PASSED.lock().unwrap_or_else(|e| e.into_inner());
    let count = match passed.iter_mut().find(|(p, _)| p == point) {
        Some((_, c)) => {
            *c += 1;
            *c
        }
        None => {
            passed.push((point.to_string(), 1));
            1
        }
    };
    if n.parse::<u64>().ok() == Some(count) {
        std::process::abort();
    }
}

/// `OKAPI_TEST_STEP_DELAY_MS=N`: each training step (PPO iteration) sleeps N ms, so a test can
/// signal a run in the middle.
#[cfg(feature = "test-hooks")]
pub fn step_delay() {
    if let Some(ms) = std::env::var("OKAPI_TEST_STEP_DELAY_MS").ok().and_then(|s| s.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

#[cfg(not(feature = "test-hooks"))]
pub fn stop_after_step(_step: u64) -> bool {
    false
}

#[cfg(not(feature = "test-hooks"))]
pub fn crash_point(_point: &str) {}

#[cfg(not(feature = "test-hooks"))]
pub fn step_delay() {}
