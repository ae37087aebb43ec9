//! Fault-injection hooks for the crash and resume tests, compiled in only with the feature
//! `test-hooks` (the `okapi` package enables it for its own tests through a dev-dependency, so
//! `cargo test` builds `okapi-train` with them and `cargo build` does not). Without the feature
//! every hook is a no-op and the library reads no environment variable.

/// `OKAPI_TEST_EXIT_AFTER_STEP=N`: the trainer stops with an error right after step N.
#[cfg(feature = "test-hooks")]
pub fn stop_after_step(step: u64) -> bool {
    std::env::var("OKAPI_TEST_EXIT_AFTER_STEP").ok().and_then(|s| s.parse::<u64>().ok()) == Some(step)
}

/// Counts of the crash hooks: checkpoint saves begun, and crash points passed in the current one.
#[cfg(feature = "test-hooks")]
static SAVES: std::sync::Mutex<(u64, u64)> = std::sync::Mutex::new((0, 0));

/// A checkpoint save begins (numbered from 1 in each process).
#[cfg(feature = "test-hooks")]
pub fn save_started() {
    let mut c = SAVES.lock().unwrap_or_else(|e| e.into_inner());
    *c = (c.0 + 1, 0);
}

/// `OKAPI_TEST_CRASH_AT=S:N`: the process aborts (a kill -9) at the N-th crash point of its
/// S-th checkpoint save. The points of a save, in order (see `checkpoint::save_with`):
/// `trashing` (a leftover temporary renamed away, when there is one), `partial` (the model
/// written, not the optimizer), `written` (the temporary complete), `rotated` (the current
/// checkpoint renamed to `.old`, when there is one), `swapped` (the temporary renamed into
/// place), `trashing` (the old one renamed away, when there is one). `_point` names it for a
/// reader of the code.
#[cfg(feature = "test-hooks")]
pub fn crash_point(_point: &str) {
    let Some((save, nth)) = std::env::var("OKAPI_TEST_CRASH_AT").ok().and_then(|s| s.split_once(':').and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))) else { return };
    let mut c = SAVES.lock().unwrap_or_else(|e| e.into_inner());
    c.1 += 1;
    if *c == (save, nth) {
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

/// Items an eval suite appended in this process.
#[cfg(feature = "test-hooks")]
static EVAL_ITEMS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `OKAPI_TEST_EVAL_EXIT_AFTER_ITEMS=N`: the process aborts (a kill -9) once the eval suite has
/// appended N or more items to its per-item files.
#[cfg(feature = "test-hooks")]
pub fn eval_items_appended(n: usize) {
    let total = EVAL_ITEMS.fetch_add(n, std::sync::atomic::Ordering::SeqCst) + n;
    if std::env::var("OKAPI_TEST_EVAL_EXIT_AFTER_ITEMS").ok().and_then(|s| s.parse::<usize>().ok()).is_some_and(|limit| total >= limit) {
        std::process::abort();
    }
}

#[cfg(not(feature = "test-hooks"))]
pub fn stop_after_step(_step: u64) -> bool {
    false
}

#[cfg(not(feature = "test-hooks"))]
pub fn crash_point(_point: &str) {}

#[cfg(not(feature = "test-hooks"))]
pub fn save_started() {}

#[cfg(not(feature = "test-hooks"))]
pub fn step_delay() {}

#[cfg(not(feature = "test-hooks"))]
pub fn eval_items_appended(_n: usize) {}
