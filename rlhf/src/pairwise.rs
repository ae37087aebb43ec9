//! Shared pieces of the pairwise objectives (reward model, DPO): the numerically stable
//! `−log σ(z)` and its derivative, batching prompt groups, and their fingerprint.

use crate::checkpoint::Fnv;
use okapi_data::{collate, Batch, PromptGroup};

/// −log σ(z) = softplus(−z), stable for large |z|.
pub fn neg_log_sigmoid(z: f64) -> f64 {
    if z > 0.0 {
        (-z).exp().ln_1p()
    } else {
        -z + z.exp().ln_1p()
    }
}

/// d/dz of −log σ(z) = −σ(−z).
pub fn neg_log_sigmoid_grad(z: f64) -> f64 {
    -1.0 / (1.0 + z.exp())
}

/// The responses of several prompt groups as one right-padded batch, with each group's first
/// row and each sequence's last real position.
pub struct GroupBatch {
    pub batch: Batch,
    pub offsets: Vec<usize>,
    pub last: Vec<usize>,
}

pub fn collate_groups(groups: &[&PromptGroup], pad: u32) -> GroupBatch {
    let mut offsets = Vec::with_capacity(groups.len());
    let mut seqs = Vec::new();
    for g in groups {
        offsets.push(seqs.len());
        seqs.extend(g.responses.iter());
    }
    let last = seqs.iter().map(|e| e.ids.len() - 1).collect();
    GroupBatch { batch: collate(&seqs, pad), offsets, last }
}

pub fn groups_fingerprint(train: &[PromptGroup], val: &[PromptGroup]) -> String {
    let mut h = Fnv::default();
    for set in [train, val] {
        h.add(set.len() as u64);
        for g in set {
            h.add(g.responses.len() as u64);
            for e in &g.responses {
                h.add(e.ids.len() as u64);
                e.ids.iter().for_each(|&x| h.add(x as u64));
                e.labels.iter().for_each(|&x| h.add(x as u64));
            }
        }
    }
    h.hex()
}

/// The pairs of a step (all its micro-batches): its loss normaliser.
pub fn pair_count(train: &[PromptGroup], micro: &[Vec<usize>]) -> f64 {
    micro.iter().flatten().map(|&i| train[i].pairs.len()).sum::<usize>() as f64
}

/// Largest number of sequences and longest sequence over micro-batches of `batch_size` groups.
pub fn capacity(groups: &[PromptGroup], batch_size: usize) -> (usize, usize) {
    let mut k: Vec<usize> = groups.iter().map(|g| g.responses.len()).collect();
    k.sort_unstable_by(|a, b| b.cmp(a));
    let cap_b = k.iter().take(batch_size).sum::<usize>().max(1);
    let cap_t = groups.iter().flat_map(|g| g.responses.iter().map(|e| e.ids.len())).max().unwrap_or(1);
    (cap_b, cap_t)
}
