//! Fault-injection hooks for the crash and resume tests, compiled in only with the feature
//! `test-hooks` (the `okapi` package enables it for its own tests through a dev-dependency, so
//! `cargo test` builds `okapi-train` with them and `cargo build` does not). Without the feature
//! every hook is a no-op and the library reads no environment variable.

/// `OKAPI_TEST_EXIT_AFTER_STEP=N`: the trainer stops with an error right after step N.
#[cfg(feature = "test-hooks")]
pub fn stop_after_step(step: u64) -> bool {
    std::env::var("OKAPI_TEST_EXIT_AFTER_STEP").ok().and_then(|s| s.parse::<u64>().ok()) == Some(step)
}

/// `OKAPI_TEST_ABORT_DURING_SAVE=N`: the process aborts in the middle of writing the
/// checkpoint of step N (a kill -9 at the worst moment).
#[cfg(feature = "test-hooks")]
pub fn abort_during_save(step: u64) {
    if std::env::var("OKAPI_TEST_ABORT_DURING_SAVE").ok().and_then(|s| s.parse::<u64>().ok()) == Some(step) {
        std::process::abort();
    }
}

#[cfg(not(feature = "test-hooks"))]
pub fn stop_after_step(_step: u64) -> bool {
    false
}

#[cfg(not(feature = "test-hooks"))]
pub fn abort_during_save(_step: u64) {}
