//! The MPI engine of [`okapi_runtime::Collective`] (feature `mpi`: rsmpi over the system's
//! MPI, e.g. Debian's `libopenmpi-dev`). Ranks are the processes `mpirun -np N okapi-train …`
//! starts; buffers are host `f32`/`f64` slices (CPU and wgpu processes).
//!
//! MPI is initialised with `MPI_THREAD_SERIALIZED` and every call goes through one lock, so the
//! engine may be used from any thread of the process, one at a time. MPI sums in the same order
//! on every rank for a given world size (each rank gets the same bits, runs are reproducible).
//! A rank that fails calls [`MpiWorld::abort`]: its error line, then `MPI_Abort`, which makes
//! `mpirun` end every other rank instead of leaving them waiting in a collective.

use mpi::collective::SystemOperation;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::{CommunicatorCollectives, Root};
use okapi_runtime::collective::check_parts;
use okapi_runtime::{Collective, CommError};
use std::sync::Mutex;

/// This process's place in `MPI_COMM_WORLD`.
pub struct MpiWorld {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    lock: Mutex<()>,
    /// finalises MPI when dropped (after `world`)
    _universe: mpi::environment::Universe,
}

/// The standard error of this process before [`MpiWorld::quiet_other_ranks`] muted it (ranks
/// other than 0), for the one line a failing rank prints.
static ERROR_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(2);

/// Writes one line to the process's original standard error (even on a muted rank).
pub fn say(line: &str) {
    let text = format!("{line}\n");
    let fd = ERROR_FD.load(std::sync::atomic::Ordering::SeqCst);
    // SAFETY: write(2) on a file descriptor this process owns, with a valid buffer and length.
    unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) };
}

impl MpiWorld {
    /// Mutes the standard output and error of every rank but 0: the ranks run the same checks
    /// on the same data and end with the same results, so rank 0's messages, progress and
    /// printed results stand for all; a failing rank still prints its error line through
    /// [`say`].
    pub fn quiet_other_ranks(&self) {
        if self.rank == 0 {
            return;
        }
        // SAFETY: dup/open/dup2 on the process's own descriptors; the saved copy stays open for
        // the process's lifetime.
        unsafe {
            let saved = libc::dup(2);
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
            if saved >= 0 && null >= 0 {
                ERROR_FD.store(saved, std::sync::atomic::Ordering::SeqCst);
                libc::dup2(null, 1);
                libc::dup2(null, 2);
                libc::close(null);
            }
        }
    }

    /// Initialises MPI (once per process).
    pub fn init() -> Result<MpiWorld, CommError> {
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Serialized).ok_or_else(|| CommError::Engine("MPI was already initialised in this process".into()))?;
        if threading < mpi::Threading::Serialized {
            return Err(CommError::Engine(format!("this MPI library offers {threading:?} threading; okapi needs Serialized")));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(MpiWorld { world, rank, size, lock: Mutex::new(()), _universe: universe })
    }

    fn serial<T>(&self, f: impl FnOnce(&SimpleCommunicator) -> T) -> T {
        let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        f(&self.world)
    }
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.size
    }
    fn engine(&self) -> &'static str {
        "mpi"
    }
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), CommError> {
        let send = data.to_vec();
        self.serial(|w| w.all_reduce_into(&send[..], data, SystemOperation::sum()));
        Ok(())
    }
    fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<(), CommError> {
        let send = data.to_vec();
        self.serial(|w| w.all_reduce_into(&send[..], data, SystemOperation::sum()));
        Ok(())
    }
    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        if root >= self.size {
            return Err(CommError::Shape(format!("broadcast from rank {root} of {}", self.size)));
        }
        self.serial(|w| w.process_at_rank(root as i32).broadcast_into(data));
        Ok(())
    }
    fn reduce_sum(&self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        if root >= self.size {
            return Err(CommError::Shape(format!("reduce to rank {root} of {}", self.size)));
        }
        if root == self.rank {
            let send = data.to_vec();
            self.serial(|w| w.process_at_rank(root as i32).reduce_into_root(&send[..], data, SystemOperation::sum()));
        } else {
            self.serial(|w| w.process_at_rank(root as i32).reduce_into(&data[..], SystemOperation::sum()));
        }
        Ok(())
    }
    fn reduce_scatter_sum(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        check_parts(send.len(), recv.len(), self.size, "reduce-scatter")?;
        self.serial(|w| w.reduce_scatter_block_into(send, recv, SystemOperation::sum()));
        Ok(())
    }
    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        check_parts(recv.len(), send.len(), self.size, "all-gather")?;
        self.serial(|w| w.all_gather_into(send, recv));
        Ok(())
    }
    fn barrier(&self) -> Result<(), CommError> {
        self.serial(|w| w.barrier());
        Ok(())
    }
    /// Prints this rank's error line (stderr) and ends the whole MPI job.
    fn abort(&self, why: &str) {
        say(&format!("error: rank {} of {} failed: {why}", self.rank, self.size));
        self.world.abort(1)
    }
    fn finish(&self) {
        let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: MPI_Finalize once, after this process's last MPI call (the engine lives in a
        // static that is never dropped, so the universe's own finalisation never runs).
        unsafe { mpi::ffi::MPI_Finalize() };
    }
}

// SAFETY: every MPI call of the engine goes through `lock` and MPI runs with
// MPI_THREAD_SERIALIZED, which allows calls from any thread one at a time; the communicator is
// a handle to MPI's own process-wide object.
unsafe impl Send for MpiWorld {}
unsafe impl Sync for MpiWorld {}
