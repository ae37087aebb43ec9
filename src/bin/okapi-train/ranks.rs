//! The ranks of a data-parallel run. Under an MPI launcher (`mpirun -np N okapi-train …`, or
//! `okapi-train launch`) this process is one rank of N: sft, reward, dpo, ppo, grpo and rloo train
//! data-parallel (every rank loads the models and the data and takes its share of each batch —
//! PPO, GRPO, RLOO: of the rollouts, their scoring and each minibatch; rank 0 writes the run); eval, loglik and score split their items across the ranks (every rank gets every
//! result; rank 0 writes them). Otherwise it is the only rank and nothing changes.

use okapi_runtime::{Collective, SingleProcess};
use std::sync::OnceLock;

/// The commands that run data-parallel.
const DATA_PARALLEL: [&str; 9] = ["sft", "reward", "dpo", "ppo", "grpo", "rloo", "eval", "loglik", "score"];

static COMM: OnceLock<Box<dyn Collective + Send + Sync>> = OnceLock::new();

/// The world size an MPI launcher gave this process (Open MPI's `mpirun`, or a PMI launcher:
/// MPICH's Hydra, Slurm), if any.
pub fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"].iter().find_map(|k| std::env::var(k).ok()).and_then(|v| v.trim().parse().ok())
}

/// Joins the launcher's world when there is one of more than one rank (`command`: the
/// subcommand, which must be one that runs data-parallel).
pub fn init(command: &str) -> Result<(), String> {
    let Some(n) = launched_size().filter(|&n| n > 1) else { return Ok(()) };
    if !DATA_PARALLEL.contains(&command) {
        return Err(format!("okapi-train {command} was started as one of {n} ranks: data-parallel runs are built for {}; run {command} as one process", DATA_PARALLEL.join(", ")));
    }
    let comm = join(n)?;
    let _ = COMM.set(comm);
    Ok(())
}

#[cfg(feature = "mpi")]
fn join(_: usize) -> Result<Box<dyn Collective + Send + Sync>, String> {
    let world = okapi::mpi_world::MpiWorld::init().map_err(|e| format!("MPI: {e}"))?;
    world.quiet_other_ranks();
    Ok(Box::new(world))
}

#[cfg(not(feature = "mpi"))]
fn join(n: usize) -> Result<Box<dyn Collective + Send + Sync>, String> {
    Err(format!("this process was started as one of {n} ranks (an MPI launcher's environment), but this okapi-train was built without MPI: build it with `cargo build --release --features mpi` (Debian: libopenmpi-dev and libclang-dev)"))
}

/// This process's collective (one process: [`SingleProcess`]).
pub fn comm() -> &'static dyn Collective {
    match COMM.get() {
        Some(c) => c.as_ref(),
        None => &SingleProcess,
    }
}

/// Whether this rank writes the run (rank 0, or the only process).
pub fn writes() -> bool {
    comm().rank() == 0
}

/// Rank 0's `flag`, on every rank (a decision only rank 0 can make: it alone reads the run's
/// files).
pub fn agree(flag: bool) -> Result<bool, String> {
    let mut v = [f32::from(u8::from(flag))];
    comm().broadcast(&mut v, 0).map_err(|e| e.to_string())?;
    Ok(v[0] != 0.0)
}

/// Leaves the world (MPI: `MPI_Finalize`) at the end of a run that did not fail.
pub fn finish() {
    comm().finish();
}

/// Ends a failed rank: its error line (naming the rank) and, with other ranks, the end of the
/// whole job (they would wait for it in their next collective otherwise).
pub fn fail(e: &str) -> ! {
    let c = comm();
    if c.world() > 1 {
        c.abort(e);
    }
    eprintln!("error: {e}");
    std::process::exit(1)
}
