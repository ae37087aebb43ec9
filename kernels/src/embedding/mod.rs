//! Token embedding: gather rows of the table, and the deterministic scatter-add backward.

use rayon::prelude::*;

/// The GPU sources of the embedding gather and its scatter-add.
pub const FAMILY: crate::Family = crate::Family {
    name: "embedding",
    cuda: include_str!("embedding.cu"),
    cuda_kernels: &["embedding_fwd", "embedding_bwd"],
    wgsl: &[("embedding_fwd", WGSL_FWD), ("embedding_bwd", WGSL_BWD)],
};

/// One thread per output element.
pub const WGSL_FWD: &str = include_str!("embedding_fwd.wgsl");
/// One thread per column, walking the tokens in order (the CPU's summation order): `n`
/// loop iterations per invocation for n tokens.
pub const WGSL_BWD: &str = include_str!("embedding_bwd.wgsl");

/// out\[n,:\] = table[ids\[n\],:]. out: (N,C) table: (V,C) ids: (N)
pub fn embedding_fwd(out: &mut [f32], table: &[f32], ids: &[u32], c: usize) {
    out.par_chunks_mut(c).zip(ids.par_iter()).for_each(|(o, &id)| {
        o.copy_from_slice(&table[id as usize * c..][..c]);
    });
}

/// dtable[ids\[n\],:] += dout\[n,:\]. Rows are grouped by id and each id's rows summed in
/// position order, so the result does not depend on thread scheduling (no float atomics).
pub fn embedding_bwd(dtable: &mut [f32], dout: &[f32], ids: &[u32], c: usize) {
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by_key(|&n| (ids[n as usize], n));
    // groups of equal ids: [start, end) into `order`
    let mut groups = Vec::new();
    let mut start = 0;
    for i in 1..=order.len() {
        if i == order.len() || ids[order[i] as usize] != ids[order[start] as usize] {
            groups.push((start, i));
            start = i;
        }
    }
    let table = crate::par::SharedMut(dtable.as_mut_ptr());
    let v = dtable.len() / c;
    groups.par_iter().for_each(|&(s, e)| {
        let id = ids[order[s] as usize] as usize;
        assert!(id < v, "embedding_bwd: id {id} outside the table of {v} rows");
        // the whole wrapper, not its raw pointer field, is what the closure must capture (Send)
        #[allow(clippy::redundant_locals)]
        let table = table;
        // SAFETY: each group owns one distinct row `id` of the table.
        let row = unsafe { std::slice::from_raw_parts_mut(table.0.add(id * c), c) };
        for &n in &order[s..e] {
            for (r, &g) in row.iter_mut().zip(&dout[n as usize * c..][..c]) {
                *r += g;
            }
        }
    });
}
