//! Extent checks of every op, written once: each backend calls the op's check before it
//! computes or launches anything, so a buffer that is too small is the same clear panic
//! ("`<op>`: `<tensor>` holds N elements, the op needs M") on every backend. Norms, attention,
//! RoPE and the KV-cache write check through their shape or tensor structs in okapi-kernels.

use okapi_kernels::shapes::{need, Extent};
use okapi_kernels::{matmul::Gemm, Rows};

#[track_caller]
pub fn len<F: Extent + ?Sized>(op: &str, bufs: &[(&str, &F)], len: usize) {
    for (name, b) in bufs {
        need(op, name, *b, len);
    }
}

/// A staged copy (`read_staged` / `write_staged`): `len` elements from `off` inside `buf`, and
/// no more than the stage's `stage_len`.
#[track_caller]
pub fn staged<F: Extent + ?Sized>(op: &str, name: &str, buf: &F, off: usize, len: usize, stage_len: usize) {
    range(op, name, buf, off, len);
    assert!(len <= stage_len, "{op}: {len} elements and a stage of {stage_len}");
}

/// `len` elements from `off` must lie inside `buf` (the sum checked for overflow too).
#[track_caller]
pub fn range<F: Extent + ?Sized>(op: &str, name: &str, buf: &F, off: usize, len: usize) {
    let end = off.checked_add(len).unwrap_or_else(|| panic!("{op}: {name} range {off}+{len} overflows"));
    need(op, name, buf, end);
}

#[track_caller]
pub fn matmul<F: Extent + ?Sized>(c: &F, a: &F, b: &F, g: &Gemm) {
    let (ea, eb, ec) = g.extents();
    need("matmul", "a", a, ea);
    need("matmul", "b", b, eb);
    need("matmul", "c", c, ec);
}

/// out (N,C), table (·,C) — ids are checked against the table by the kernels — ids (N).
#[track_caller]
pub fn embedding<F: Extent + ?Sized, I: Extent + ?Sized>(op: &str, rows: &F, table: &F, ids: &I, r: Rows) {
    need(op, if op == "embedding_fwd" { "out" } else { "dout" }, rows, r.len());
    need(op, if op == "embedding_fwd" { "table" } else { "dtable" }, table, r.c);
    need(op, "ids", ids, r.n);
}

/// A row-wise op's (N,C) tensors and its (C) vector.
#[track_caller]
pub fn bias<F: Extent + ?Sized>(op: &str, x: &F, bias: &F, r: Rows) {
    need(op, if op == "bias_add" { "x" } else { "dy" }, x, r.len());
    need(op, if op == "bias_add" { "bias" } else { "dbias" }, bias, r.c);
}

/// The soft-cap ops: `bufs` hold `len` elements and the cap is positive and finite.
#[track_caller]
pub fn softcap<F: Extent + ?Sized>(op: &str, bufs: &[(&str, &F)], len: usize, cap: f32) {
    okapi_kernels::activation::check_softcap(op, cap);
    self::len(op, bufs, len);
}

/// softmax: every tensor (N,V).
#[track_caller]
pub fn softmax<F: Extent + ?Sized>(op: &str, bufs: &[(&str, &F)], r: Rows) {
    len(op, bufs, r.len());
}

/// Cross-entropy / log-probs: `wide` tensors (N,V), `per_row` tensors (N), targets (N).
#[track_caller]
pub fn vocab<F: Extent + ?Sized, I: Extent + ?Sized>(op: &str, wide: &[(&str, &F)], per_row: &[(&str, &F)], targets: &I, r: Rows) {
    len(op, wide, r.len());
    len(op, per_row, r.n);
    need(op, "targets", targets, r.n);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panic_message(f: impl FnOnce()) -> String {
        let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).expect_err("must panic");
        e.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[test]
    fn a_short_buffer_is_named() {
        let (big, small) = (vec![0f32; 12], vec![0f32; 5]);
        let ids = [0u32; 4];
        let msg = panic_message(|| vocab("xent_fwd_bwd", &[("logits", &big[..])], &[("losses", &small[..])], &ids[..], Rows::new(6, 2)));
        assert_eq!(msg, "xent_fwd_bwd: `losses` holds 5 elements, the op needs 6");
        let msg = panic_message(|| matmul(&small[..], &big[..], &big[..], &Gemm::new(2, 3, 4)));
        assert_eq!(msg, "matmul: `c` holds 5 elements, the op needs 6");
    }
}
