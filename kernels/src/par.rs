//! Small helpers for deterministic parallel reductions.

use rayon::prelude::*;

/// Rows per chunk in column reductions (`Σ_rows`). Fixed, so the summation order is fixed.
pub(crate) const ROW_CHUNK: usize = crate::row_chunk!();

/// `acc[c] += Σ_n f(n, c)` over `n_rows` rows of width `width`, where `row_terms(n, partial)`
/// adds row n's terms into `partial` (width floats). Rows are cut into fixed chunks that are
/// reduced in parallel and then summed in chunk order: deterministic for any thread count.
pub(crate) fn column_sums<F>(acc: &mut [f32], n_rows: usize, width: usize, row_terms: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    debug_assert!(acc.len() >= width);
    let n_chunks = n_rows.div_ceil(ROW_CHUNK);
    let partials: Vec<Vec<f32>> = (0..n_chunks)
        .into_par_iter()
        .map(|chunk| {
            let mut partial = vec![0f32; width];
            let end = ((chunk + 1) * ROW_CHUNK).min(n_rows);
            for n in chunk * ROW_CHUNK..end {
                row_terms(n, &mut partial);
            }
            partial
        })
        .collect();
    for partial in &partials {
        for (a, p) in acc[..width].iter_mut().zip(partial) {
            *a += p;
        }
    }
}

/// A raw pointer that parallel tasks may share when each writes a disjoint set of elements.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub *mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}
