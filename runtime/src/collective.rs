//! Collectives of data-parallel training: one small interface ([`Collective`]) and the engines
//! behind it.
//!
//! - [`SingleProcess`]: world size 1, every collective the identity (no engine installed).
//! - [`ThreadGroup`]: ranks as threads of one process, exchanging through shared memory — what the
//!   tests use to check everything above the transport without MPI or GPUs.
//! - MPI (`okapi-runtime` feature `mpi`, in the binary): ranks started by `mpirun`, host buffers.
//!
//! Every engine sums in rank order on every rank, so each rank gets the bit-identical result and
//! a run at a given world size is reproducible. Buffers are host `f32`/`f64` slices: backend
//! buffers go through [`all_reduce_bufs`] (staged through the host, in one message).

use crate::Backend;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A collective that could not complete.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommError {
    /// A rank left (died, was killed, or returned an error) while the others waited for it.
    #[error("rank {rank} of {world} failed{}", if why.is_empty() { String::new() } else { format!(": {why}") })]
    PeerFailed { rank: usize, world: usize, why: String },
    /// No rank left, but one did not arrive in time.
    #[error("rank {rank} of {world} did not reach the collective within {seconds} s")]
    Timeout { rank: usize, world: usize, seconds: u64 },
    /// Buffers of different lengths, or not divisible by the world size where they must be.
    #[error("{0}")]
    Shape(String),
    /// The transport's own error (MPI's error string).
    #[error("{0}")]
    Engine(String),
}

/// The collectives data-parallel training needs, on host buffers. Every rank calls the same
/// collectives in the same order with buffers of the same length.
pub trait Collective {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// `single`, `threads`, `mpi`, `nccl`.
    fn engine(&self) -> &'static str;
    /// Element-wise sum over the ranks, in place; every rank gets the same bits.
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), CommError>;
    /// [`Collective::all_reduce_sum`] in f64 (losses, counts, statistics).
    fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<(), CommError>;
    /// `root`'s `data` copied to every rank.
    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<(), CommError>;
    /// Element-wise sum over the ranks into `root`'s `data` (the others' `data` is left as
    /// it was).
    fn reduce_sum(&self, data: &mut [f32], root: usize) -> Result<(), CommError>;
    /// `send` (world × n) summed over the ranks; rank r keeps part r (n values) in `recv`.
    fn reduce_scatter_sum(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError>;
    /// Every rank's `send` (n values) concatenated in rank order into `recv` (world × n).
    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError>;
    fn barrier(&self) -> Result<(), CommError>;
    /// Tells the other ranks this one is leaving with an error (they fail their next collective
    /// naming this rank instead of waiting for it).
    fn abort(&self, why: &str);
    /// Leaves the world at the end of a run that did not fail (MPI: `MPI_Finalize`).
    fn finish(&self) {}
}

/// Checks `recv.len() == world × send.len()` (all-gather) or the reverse (reduce-scatter): the
/// shape check every engine makes before its transport.
pub fn check_parts(whole: usize, part: usize, world: usize, what: &str) -> Result<(), CommError> {
    if whole == part * world {
        Ok(())
    } else {
        Err(CommError::Shape(format!("{what}: {whole} values for {world} ranks of {part}")))
    }
}

// ---- one process ------------------------------------------------------------------------------

/// World size 1: every collective leaves its data as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn engine(&self) -> &'static str {
        "single"
    }
    fn all_reduce_sum(&self, _: &mut [f32]) -> Result<(), CommError> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> Result<(), CommError> {
        Ok(())
    }
    fn broadcast(&self, _: &mut [f32], _: usize) -> Result<(), CommError> {
        Ok(())
    }
    fn reduce_sum(&self, _: &mut [f32], _: usize) -> Result<(), CommError> {
        Ok(())
    }
    fn reduce_scatter_sum(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        check_parts(send.len(), recv.len(), 1, "reduce-scatter")?;
        recv.copy_from_slice(send);
        Ok(())
    }
    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        check_parts(recv.len(), send.len(), 1, "all-gather")?;
        recv.copy_from_slice(send);
        Ok(())
    }
    fn barrier(&self) -> Result<(), CommError> {
        Ok(())
    }
    fn abort(&self, _: &str) {}
}

// ---- ranks as threads -------------------------------------------------------------------------

/// What the ranks of a [`ThreadGroup`] share: each rank's contribution to the collective in
/// flight, and how many have read the result.
struct Exchange {
    /// contributions of the current round, by rank (f64 holds f32 values exactly)
    slots: Vec<Option<Vec<f64>>>,
    /// the round's result once every rank contributed
    result: Option<Vec<f64>>,
    read: usize,
    round: u64,
    failed: Option<(usize, String)>,
}

struct Shared {
    world: usize,
    timeout: Duration,
    state: Mutex<Exchange>,
    changed: Condvar,
}

/// One rank of an in-process group (made by [`ThreadGroup::new`]); move each into its thread.
/// Dropping a rank while others still run makes their next collective fail naming it.
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

impl ThreadGroup {
    /// `world` ranks sharing one exchange; a collective waits at most `timeout` for the others.
    pub fn new(world: usize, timeout: Duration) -> Vec<ThreadGroup> {
        let shared = Arc::new(Shared {
            world,
            timeout,
            state: Mutex::new(Exchange { slots: vec![None; world], result: None, read: 0, round: 0, failed: None }),
            changed: Condvar::new(),
        });
        (0..world).map(|rank| ThreadGroup { rank, shared: shared.clone() }).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Exchange> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failed(&self, ex: &Exchange) -> Option<CommError> {
        ex.failed.as_ref().map(|(rank, why)| CommError::PeerFailed { rank: *rank, world: self.shared.world, why: why.clone() })
    }

    /// One round: every rank hands `mine`; `combine` makes the result from all contributions in
    /// rank order; every rank gets a copy.
    fn round(&self, mine: Vec<f64>, combine: impl Fn(&[Vec<f64>]) -> Vec<f64>) -> Result<Vec<f64>, CommError> {
        let deadline = Instant::now() + self.shared.timeout;
        let mut ex = self.lock();
        // the previous round's result must have been read by everyone before a new one starts
        while ex.result.is_some() || ex.slots[self.rank].is_some() {
            ex = self.wait(ex, deadline)?;
        }
        let round = ex.round;
        ex.slots[self.rank] = Some(mine);
        if ex.slots.iter().all(Option::is_some) {
            let parts: Vec<Vec<f64>> = ex.slots.iter_mut().map(|s| s.take().expect("every slot is filled")).collect();
            ex.result = Some(combine(&parts));
            self.shared.changed.notify_all();
        }
        while ex.round == round && ex.result.is_none() {
            ex = self.wait(ex, deadline)?;
        }
        let out = ex.result.clone().expect("the round's result");
        ex.read += 1;
        if ex.read == self.shared.world {
            (ex.result, ex.read, ex.round) = (None, 0, round + 1);
            self.shared.changed.notify_all();
        }
        Ok(out)
    }

    fn wait<'g>(&self, ex: std::sync::MutexGuard<'g, Exchange>, deadline: Instant) -> Result<std::sync::MutexGuard<'g, Exchange>, CommError> {
        if let Some(e) = self.failed(&ex) {
            return Err(e);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let missing = ex.slots.iter().position(Option::is_none).unwrap_or(self.rank);
            return Err(CommError::Timeout { rank: missing, world: self.shared.world, seconds: self.shared.timeout.as_secs() });
        }
        let (ex, _) = self.shared.changed.wait_timeout(ex, left).unwrap_or_else(|p| p.into_inner());
        match self.failed(&ex) {
            Some(e) => Err(e),
            None => Ok(ex),
        }
    }
}

fn sum_in_rank_order(parts: &[Vec<f64>], as_f32: bool) -> Vec<f64> {
    let mut out = parts[0].clone();
    for p in &parts[1..] {
        for (o, x) in out.iter_mut().zip(p) {
            // f32 data is summed in f32, as MPI and NCCL sum it
            *o = if as_f32 { (*o as f32 + *x as f32) as f64 } else { *o + x };
        }
    }
    out
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.shared.world
    }
    fn engine(&self) -> &'static str {
        "threads"
    }
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), CommError> {
        let out = self.round(data.iter().map(|&x| x as f64).collect(), |p| sum_in_rank_order(p, true))?;
        data.iter_mut().zip(out).for_each(|(d, x)| *d = x as f32);
        Ok(())
    }
    fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<(), CommError> {
        let out = self.round(data.to_vec(), |p| sum_in_rank_order(p, false))?;
        data.copy_from_slice(&out);
        Ok(())
    }
    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        let out = self.round(data.iter().map(|&x| x as f64).collect(), |p| p[root].clone())?;
        data.iter_mut().zip(out).for_each(|(d, x)| *d = x as f32);
        Ok(())
    }
    fn reduce_sum(&self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        let out = self.round(data.iter().map(|&x| x as f64).collect(), |p| sum_in_rank_order(p, true))?;
        if self.rank == root {
            data.iter_mut().zip(out).for_each(|(d, x)| *d = x as f32);
        }
        Ok(())
    }
    fn reduce_scatter_sum(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        check_parts(send.len(), recv.len(), self.world(), "reduce-scatter")?;
        let mut whole = send.to_vec();
        self.all_reduce_sum(&mut whole)?;
        let n = recv.len();
        recv.copy_from_slice(&whole[self.rank * n..(self.rank + 1) * n]);
        Ok(())
    }
    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        check_parts(recv.len(), send.len(), self.world(), "all-gather")?;
        let out = self.round(send.iter().map(|&x| x as f64).collect(), |p| p.concat())?;
        recv.iter_mut().zip(out).for_each(|(d, x)| *d = x as f32);
        Ok(())
    }
    fn barrier(&self) -> Result<(), CommError> {
        self.round(Vec::new(), |_| Vec::new()).map(|_| ())
    }
    fn abort(&self, why: &str) {
        let mut ex = self.lock();
        ex.failed.get_or_insert((self.rank, why.to_string()));
        self.shared.changed.notify_all();
    }
}

impl Drop for ThreadGroup {
    fn drop(&mut self) {
        // a rank that unwinds (a panic) or leaves early fails the others instead of hanging them
        if std::thread::panicking() {
            self.abort("panicked");
        }
    }
}

// ---- backend buffers --------------------------------------------------------------------------

/// Sums backend buffers over the ranks in place (each `(buffer, length)`), staged through one
/// host message: read, all-reduce, write back. World size 1 touches nothing.
pub fn all_reduce_bufs<B: Backend>(comm: &dyn Collective, be: &B, bufs: &mut [(&mut B::Buf, usize)]) -> Result<(), CommError> {
    if comm.world() == 1 {
        return Ok(());
    }
    let mut host: Vec<f32> = Vec::with_capacity(bufs.iter().map(|(_, n)| n).sum());
    for (b, n) in bufs.iter() {
        host.extend(be.read(b, *n));
    }
    comm.all_reduce_sum(&mut host)?;
    let mut at = 0;
    for (b, n) in bufs.iter_mut() {
        be.write(b, &host[at..at + *n]);
        at += *n;
    }
    Ok(())
}

/// Every rank's `mine` (of any length), on every rank in rank order: the lengths first, then
/// the values through one sum in which each rank fills its own stretch and the others give
/// −0.0 (x + −0.0 = x for every x, so the values arrive bit for bit). World size 1: `[mine]`.
pub fn all_gather_varlen_f64(comm: &dyn Collective, mine: &[f64]) -> Result<Vec<Vec<f64>>, CommError> {
    let (rank, world) = (comm.rank(), comm.world());
    if world == 1 {
        return Ok(vec![mine.to_vec()]);
    }
    let mut lens = vec![0.0f64; world];
    lens[rank] = mine.len() as f64;
    comm.all_reduce_sum_f64(&mut lens)?;
    let lens: Vec<usize> = lens.iter().map(|&n| n as usize).collect();
    let start: usize = lens[..rank].iter().sum();
    let mut all = vec![-0.0f64; lens.iter().sum()];
    all[start..start + mine.len()].copy_from_slice(mine);
    comm.all_reduce_sum_f64(&mut all)?;
    let mut at = 0;
    Ok(lens
        .iter()
        .map(|&n| {
            at += n;
            all[at - n..at].to_vec()
        })
        .collect())
}

/// Every rank's lists (each of any length) on every rank: each rank's lists in their order, the
/// ranks in rank order, bit for bit (through [`all_gather_varlen_f64`], each list behind its
/// length). World size 1: `mine`.
pub fn all_gather_lists_f64(comm: &dyn Collective, mine: Vec<Vec<f64>>) -> Result<Vec<Vec<f64>>, CommError> {
    if comm.world() == 1 {
        return Ok(mine);
    }
    let mut flat = Vec::new();
    for list in &mine {
        flat.push(list.len() as f64);
        flat.extend_from_slice(list);
    }
    let mut out = Vec::new();
    for part in all_gather_varlen_f64(comm, &flat)? {
        let mut at = 0;
        while at < part.len() {
            let n = part[at] as usize;
            out.push(part[at + 1..at + 1 + n].to_vec());
            at += 1 + n;
        }
    }
    Ok(out)
}

/// Work dealt in steps: of `units` numbered pieces of work, step s holds units
/// `s·world .. (s+1)·world` and `rank` takes the one at its place (if any). Every rank has the
/// same number of steps, so a collective after each step (gathering its results) is met by
/// all; unit k is always worked on with the same inputs, so results do not depend on the world
/// size.
pub fn dealt_steps(units: usize, rank: usize, world: usize) -> impl Iterator<Item = Option<usize>> {
    (0..units.div_ceil(world)).map(move |s| Some(s * world + rank).filter(|&k| k < units))
}

/// The contiguous share of `n` items that `rank` of `world` takes (the first `n % world` ranks
/// one more), as a range.
pub fn shard(n: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let (base, extra) = (n / world, n % world);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_threads<T: Send + 'static>(world: usize, f: impl Fn(ThreadGroup) -> T + Send + Sync + 'static) -> Vec<T> {
        let f = Arc::new(f);
        let handles: Vec<_> = ThreadGroup::new(world, Duration::from_secs(10))
            .into_iter()
            .map(|g| {
                let f = f.clone();
                std::thread::spawn(move || f(g))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn collectives_on_three_ranks() {
        let out = on_threads(3, |g| {
            let r = g.rank() as f32;
            let mut a = vec![r, 10.0 * r, 0.1];
            g.all_reduce_sum(&mut a).unwrap();
            let mut b = vec![r + 1.0; 2];
            g.broadcast(&mut b, 2).unwrap();
            let send: Vec<f32> = (0..6).map(|i| i as f32 + r).collect();
            let mut part = vec![0.0; 2];
            g.reduce_scatter_sum(&send, &mut part).unwrap();
            let mut all = vec![0.0; 6];
            g.all_gather(&[r, -r], &mut all).unwrap();
            let mut f = vec![0.5f64 * r as f64];
            g.all_reduce_sum_f64(&mut f).unwrap();
            let mut to_one = vec![r, 1.0];
            g.reduce_sum(&mut to_one, 1).unwrap();
            assert_eq!(to_one, if g.rank() == 1 { vec![3.0, 3.0] } else { vec![r, 1.0] });
            g.barrier().unwrap();
            (a, b, part, all, f)
        });
        for (rank, (a, b, part, all, f)) in out.into_iter().enumerate() {
            assert_eq!(a, vec![3.0, 30.0, (0.1f32 + 0.1) + 0.1]);
            assert_eq!(b, vec![3.0, 3.0]);
            let want: Vec<f32> = (2 * rank..2 * rank + 2).map(|i| 3.0 * i as f32 + 3.0).collect();
            assert_eq!(part, want);
            assert_eq!(all, vec![0.0, 0.0, 1.0, -1.0, 2.0, -2.0]);
            assert_eq!(f, vec![1.5]);
        }
    }

    #[test]
    fn a_failed_rank_fails_the_others_naming_it() {
        let out = on_threads(3, |g| {
            if g.rank() == 1 {
                g.abort("out of memory");
                return None;
            }
            let mut a = vec![1.0f32];
            Some(g.all_reduce_sum(&mut a).unwrap_err())
        });
        for e in out.into_iter().flatten() {
            assert_eq!(e.to_string(), "rank 1 of 3 failed: out of memory");
        }
    }

    #[test]
    fn a_missing_rank_times_out() {
        let mut groups = ThreadGroup::new(2, Duration::from_millis(200));
        let lone = groups.remove(0);
        let e = lone.barrier().unwrap_err();
        assert_eq!(e, CommError::Timeout { rank: 1, world: 2, seconds: 0 });
    }

    #[test]
    fn varlen_gather_is_exact_and_in_rank_order() {
        let out = on_threads(3, |g| {
            // rank 1 sends nothing; the values include −0.0, a NaN payload and a subnormal
            let mine: Vec<f64> = match g.rank() {
                0 => vec![-0.0, 1.0 / 3.0],
                1 => vec![],
                _ => vec![f64::from_bits(0x7ff8_0000_0000_0123), 5e-324, -7.25],
            };
            all_gather_varlen_f64(&g, &mine).unwrap()
        });
        for got in out {
            let bits = |v: &Vec<f64>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(got.len(), 3);
            assert_eq!(bits(&got[0]), bits(&vec![-0.0, 1.0 / 3.0]));
            assert!(got[1].is_empty());
            assert_eq!(bits(&got[2]), bits(&vec![f64::from_bits(0x7ff8_0000_0000_0123), 5e-324, -7.25]));
        }
        assert_eq!(all_gather_varlen_f64(&SingleProcess, &[2.0]).unwrap(), vec![vec![2.0]]);
    }

    #[test]
    fn list_gather_keeps_each_rank_s_lists_and_their_lengths() {
        let out = on_threads(3, |g| {
            // rank 0: two lists (one empty), rank 1: none, rank 2: one
            let mine: Vec<Vec<f64>> = match g.rank() {
                0 => vec![vec![1.5, -0.0], vec![]],
                1 => vec![],
                _ => vec![vec![3.0, 4.0, 5e-324]],
            };
            all_gather_lists_f64(&g, mine).unwrap()
        });
        for got in out {
            let bits: Vec<Vec<u64>> = got.iter().map(|v| v.iter().map(|x| x.to_bits()).collect()).collect();
            let want: Vec<Vec<u64>> = [vec![1.5, -0.0], vec![], vec![3.0, 4.0, 5e-324]].iter().map(|v: &Vec<f64>| v.iter().map(|x| x.to_bits()).collect()).collect();
            assert_eq!(bits, want);
        }
        assert_eq!(all_gather_lists_f64(&SingleProcess, vec![vec![2.0], vec![]]).unwrap(), vec![vec![2.0], vec![]]);
    }

    #[test]
    fn dealt_steps_cover_every_unit_once_in_equal_steps() {
        for (units, world) in [(7, 3), (2, 4), (0, 2), (6, 1)] {
            let per_rank: Vec<Vec<Option<usize>>> = (0..world).map(|r| dealt_steps(units, r, world).collect()).collect();
            assert!(per_rank.iter().all(|s| s.len() == units.div_ceil(world)), "{units} units on {world}");
            let mut all: Vec<usize> = per_rank.iter().flatten().flatten().copied().collect();
            all.sort();
            assert_eq!(all, (0..units).collect::<Vec<_>>());
        }
        assert_eq!(dealt_steps(7, 2, 3).collect::<Vec<_>>(), vec![Some(2), Some(5), None]);
    }

    #[test]
    fn shards_cover_in_order() {
        assert_eq!((0..3).map(|r| shard(7, r, 3)).collect::<Vec<_>>(), vec![0..3, 3..5, 5..7]);
        assert_eq!((0..4).map(|r| shard(2, r, 4)).collect::<Vec<_>>(), vec![0..1, 1..2, 2..2, 2..2]);
        assert_eq!(shard(5, 0, 1), 0..5);
    }
}
