//! ZeRO-2: gradients sharded like the AdamW state. Each trainable tensor has an owner rank
//! ([`crate::optim::zero::owners`]); only the owner keeps a gradient buffer for a block's
//! tensor. During each backward a block's tensors it does not own get buffers lent from a
//! small pool just before the block's backward, and right after it every block's gradients go
//! to their owners in one reduce per owner: the owner sends its own buffer (the step's sum so
//! far plus this micro-batch's part) and receives the sum over the ranks, so its buffer holds
//! the step's whole gradient after the last micro-batch. The lent buffers go back to the pool:
//! a rank holds its share of the block gradients plus about one block's worth. The tensors
//! outside the blocks (embedding, final norm, heads) keep a buffer on every rank, reduced to
//! their owners at the end of each backward and zeroed on the others.
//!
//! Every rank must run the same number of backwards per step (the trainer checks that every
//! micro-batch gives each rank items), since each one is a sequence of collectives.

use okapi_model::{GradHook, Grads, Model};
use okapi_runtime::{Backend, Collective, CommError};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The first collective error of a backward (later reduces are skipped); the trainer reads it
/// after the step's backwards.
pub type ShardError = Rc<RefCell<Option<CommError>>>;

/// The hook [`install`] puts into a [`Grads`].
struct GradShards<B: Backend> {
    comm: &'static dyn Collective,
    rank: usize,
    owner: Vec<Option<usize>>,
    numel: Vec<usize>,
    /// the trainable tensors of each block
    blocks: Vec<Vec<usize>>,
    /// the trainable tensors outside the blocks
    rest: Vec<usize>,
    /// spare buffers by length
    pool: HashMap<usize, Vec<B::Buf>>,
    error: ShardError,
}

/// With ZeRO stage `stage` 2 on several ranks: checks that each of the micro-batches (`n`
/// `items` in batches of `batch_size`, set by `batch_flag`) gives every rank an item, then
/// [`install`]s the hook with the ZeRO owners; otherwise nothing.
pub fn install_for_stage<B: Backend>(model: &Model<B>, grads: &mut Grads<B>, stage: u8, comm: &'static dyn Collective, batches: (usize, &str, usize, &str)) -> Result<Option<ShardError>, crate::TrainError> {
    let world = comm.world();
    if stage != 2 || world == 1 {
        return Ok(None);
    }
    let (n, items, batch_size, batch_flag) = batches;
    crate::trainer::check_shares(n, items, batch_size, batch_flag, world)?;
    let owners = crate::optim::zero::owners(model, grads, world);
    Ok(Some(install(model, grads, owners, comm)))
}

/// The first error a sharded backward met, if any (taken: reported once).
pub fn take_error(errors: &[&ShardError]) -> Result<(), CommError> {
    match errors.iter().find_map(|e| e.borrow_mut().take()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The global gradient norm from this rank's `local` norm: under ZeRO-2 (`sharded`) each rank
/// holds its own tensors' gradients, so the squares are summed over the ranks.
pub fn global_norm(local: f64, sharded: bool, comm: &dyn Collective) -> Result<f64, CommError> {
    if !sharded {
        return Ok(local);
    }
    let mut sq = [local * local];
    comm.all_reduce_sum_f64(&mut sq)?;
    Ok(sq[0].sqrt())
}

/// Shards `grads` over the ranks of `comm` by `owner` (per tensor; `None`: frozen): drops
/// this rank's buffers of the blocks' tensors it does not own and installs the hook that lends
/// and reduces them during each backward. Returns where a failed reduce is reported.
pub fn install<B: Backend>(model: &Model<B>, grads: &mut Grads<B>, owner: Vec<Option<usize>>, comm: &'static dyn Collective) -> ShardError {
    let rank = comm.rank();
    let blocks: Vec<Vec<usize>> = model.blocks.iter().map(|blk| blk.params().filter(|&i| grads.trainable[i]).collect()).collect();
    let in_block: std::collections::HashSet<usize> = blocks.iter().flatten().copied().collect();
    let rest: Vec<usize> = (0..model.info.len()).filter(|i| grads.trainable[*i] && !in_block.contains(i)).collect();
    for &i in blocks.iter().flatten() {
        if owner[i] != Some(rank) {
            grads.bufs[i] = None;
        }
    }
    let error = ShardError::default();
    let numel = model.info.iter().map(|p| p.numel()).collect();
    grads.hook = Some(Box::new(GradShards::<B> { comm, rank, owner, numel, blocks, rest, pool: HashMap::new(), error: error.clone() }));
    error
}

impl<B: Backend> GradShards<B> {
    /// The gradients of `params` summed into their owners' buffers: one reduce per owner.
    fn reduce(&mut self, be: &B, bufs: &mut [Option<B::Buf>], params: &[usize]) {
        if self.error.borrow().is_some() {
            return;
        }
        for root in 0..self.comm.world() {
            let mine: Vec<usize> = params.iter().copied().filter(|&i| self.owner[i] == Some(root)).collect();
            if mine.is_empty() {
                continue;
            }
            let mut host = Vec::with_capacity(mine.iter().map(|&i| self.numel[i]).sum());
            for &i in &mine {
                host.extend(be.read(bufs[i].as_ref().expect("a block's buffers are lent during its backward"), self.numel[i]));
            }
            if let Err(e) = self.comm.reduce_sum(&mut host, root) {
                *self.error.borrow_mut() = Some(e);
                return;
            }
            if root == self.rank {
                let mut at = 0;
                for &i in &mine {
                    let n = self.numel[i];
                    be.write(bufs[i].as_mut().expect("an owner keeps its buffers"), &host[at..at + n]);
                    at += n;
                }
            }
        }
    }
}

impl<B: Backend> GradHook<B> for GradShards<B> {
    fn before_block(&mut self, be: &B, bufs: &mut [Option<B::Buf>], l: usize) {
        for &i in &self.blocks[l] {
            if self.owner[i] != Some(self.rank) {
                let n = self.numel[i];
                let mut buf = self.pool.get_mut(&n).and_then(Vec::pop).unwrap_or_else(|| be.zeros(n));
                be.fill(&mut buf, 0.0, n);
                bufs[i] = Some(buf);
            }
        }
    }

    fn after_block(&mut self, be: &B, bufs: &mut [Option<B::Buf>], l: usize) {
        let params = std::mem::take(&mut self.blocks[l]);
        self.reduce(be, bufs, &params);
        for &i in &params {
            if self.owner[i] != Some(self.rank) {
                let buf = bufs[i].take().expect("lent before the block");
                self.pool.entry(self.numel[i]).or_default().push(buf);
            }
        }
        self.blocks[l] = params;
    }

    fn after_backward(&mut self, be: &B, bufs: &mut [Option<B::Buf>]) {
        let rest = std::mem::take(&mut self.rest);
        self.reduce(be, bufs, &rest);
        for &i in &rest {
            if self.owner[i] != Some(self.rank) {
                // its part is with the owner now; the next backward adds to zero
                be.fill(bufs[i].as_mut().expect("every rank keeps the tensors outside the blocks"), 0.0, self.numel[i]);
            }
        }
        self.rest = rest;
    }
}
