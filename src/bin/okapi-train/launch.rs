//! `okapi-train launch --nproc N -- COMMAND…`: a data-parallel run of N ranks on this machine,
//! started by Open MPI's `mpirun` (the engine the ranks talk through). mpirun starts the ranks,
//! forwards Ctrl-C, and ends every rank when one fails; launch passes the ranks' output through
//! without mpirun's banners and ends with one line naming a rank that died without saying why.
//! Several machines: call `mpirun` directly with its host file (README, "Data-parallel runs").

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[derive(clap::Args, Debug)]
pub struct LaunchArgs {
    /// Ranks (processes) to start on this machine
    #[arg(long)]
    pub nproc: usize,
    /// The mpirun to start them with (default: `mpirun` on PATH)
    #[arg(long, value_name = "PATH")]
    pub mpirun: Option<PathBuf>,
    /// The okapi-train command each rank runs (after `--`), e.g. `-- sft --model M --data D --out O`
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

pub fn run(a: LaunchArgs) -> Result<(), String> {
    if a.nproc == 0 {
        return Err("--nproc 0: expected at least 1 rank".into());
    }
    if !cfg!(feature = "mpi") && a.nproc > 1 {
        return Err("launch: this okapi-train was built without MPI: build it with `cargo build --release --features mpi` (Debian: libopenmpi-dev and libclang-dev)".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("launch: cannot find this program: {e}"))?;
    let mpirun = a.mpirun.clone().unwrap_or_else(|| PathBuf::from("mpirun"));
    let mut cmd = Command::new(&mpirun);
    cmd.arg("-np").arg(a.nproc.to_string());
    // more ranks than cores is allowed (each rank then shares cores); root may run ranks (CI, containers)
    cmd.arg("--oversubscribe");
    if running_as_root() {
        cmd.arg("--allow-run-as-root");
    }
    cmd.arg(exe).args(&a.command).stdin(Stdio::null()).stdout(Stdio::inherit()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("launch: cannot start {}: {e} (install Open MPI: Debian's openmpi-bin, or give --mpirun PATH)", mpirun.display()))?;
    // Ctrl-C reaches mpirun (same process group), which stops the ranks at a step boundary
    ignore_interrupts();
    let stderr = child.stderr.take().expect("stderr is piped");
    let seen = pass_through(BufReader::new(stderr));
    let status = child.wait().map_err(|e| format!("launch: waiting for mpirun: {e}"))?;
    if status.success() {
        return Ok(());
    }
    match (seen.rank_error, seen.died) {
        // the failing rank said why (its own error line went through)
        (true, _) => std::process::exit(status.code().unwrap_or(1)),
        (false, Some((rank, how))) => Err(format!("rank {rank} of {} died ({how}); mpirun stopped the other ranks", a.nproc)),
        (false, None) => Err(format!("mpirun ended with {status}")),
    }
}

/// What launch saw on the ranks' and mpirun's standard error.
#[derive(Default)]
struct Seen {
    /// a rank printed its own `error:` line
    rank_error: bool,
    /// the rank mpirun reported dead, and how (`exited on signal 9 (Killed)`)
    died: Option<(String, String)>,
}

/// Copies the ranks' lines to stderr, leaving out mpirun's boxed banners (noting the rank they
/// name) and the transport's complaints of the survivors when a rank dies.
fn pass_through(r: impl BufRead) -> Seen {
    let mut seen = Seen::default();
    let mut in_banner = false;
    for line in r.lines().map_while(Result::ok) {
        if line.starts_with("----------") {
            in_banner = !in_banner;
            continue;
        }
        if in_banner {
            // "mpirun noticed that process rank 1 with PID 0 on node vm exited on signal 9 (Killed)."
            if let Some(rest) = line.split("process rank ").nth(1) {
                let rank = rest.split_whitespace().next().unwrap_or("?").to_string();
                let how = rest.split(" exited ").nth(1).map_or("it exited".to_string(), |h| format!("exited {}", h.trim_end_matches('.')));
                seen.died = Some((rank, how));
            }
            continue;
        }
        if is_transport_noise(&line) {
            continue;
        }
        seen.rank_error |= line.starts_with("error:");
        eprintln!("{line}");
    }
    seen
}

/// Open MPI's shared-memory transport reporting a peer gone: `[host:pid] Read -1, expected …`.
fn is_transport_noise(line: &str) -> bool {
    line.starts_with('[') && line.contains("] Read -1, expected")
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn ignore_interrupts() {
    // SAFETY: setting SIGINT's disposition to ignore; no handler runs.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banners_are_left_out_and_the_dead_rank_noted() {
        let text = "step 1/3: loss 1\n[vm:15199] Read -1, expected 238208, errno = 3\n----------\nPrimary job  terminated normally, but 1 process returned\n----------\n----------\nmpirun noticed that process rank 1 with PID 0 on node vm exited on signal 9 (Killed).\n----------\n";
        let seen = pass_through(BufReader::new(text.as_bytes()));
        assert_eq!(seen.died, Some(("1".to_string(), "exited on signal 9 (Killed)".to_string())));
        assert!(!seen.rank_error);
        let seen = pass_through(BufReader::new("error: rank 1 of 2 failed: no training data\n".as_bytes()));
        assert!(seen.rank_error);
    }
}
