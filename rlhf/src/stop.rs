//! A graceful stop, requested from outside the training loop: `okapi-train`'s SIGINT / SIGTERM
//! handler calls [`request`] (an atomic store, safe inside a signal handler); the trainer and
//! PPO check [`requested`] at every step boundary, write a checkpoint (when the run has an
//! output directory) and the metrics, and return [`crate::TrainError::Interrupted`]. A library
//! user stops a run from another thread the same way.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks the running training loop to stop at its next step boundary.
pub fn request() {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether a stop was requested (and not cleared since).
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Whether to stop at this step boundary, agreed by every rank of `comm`: a request reaching
/// any rank stops them all at the same step (and a rank the signal did not reach records it,
/// so its caller sees the same stop).
pub fn agreed(comm: &dyn okapi_runtime::Collective) -> Result<bool, okapi_runtime::CommError> {
    let mut flag = [if requested() { 1.0 } else { 0.0 }];
    comm.all_reduce_sum_f64(&mut flag)?;
    if flag[0] > 0.0 {
        request();
    }
    Ok(flag[0] > 0.0)
}

/// Forgets a request (before starting another run in the same process).
pub fn clear() {
    STOP.store(false, Ordering::SeqCst);
}
