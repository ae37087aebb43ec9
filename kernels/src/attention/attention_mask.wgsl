// Which keys a query row sees (attention/mod.rs), shared by attention_fwd.wgsl and
// attention_bwd.wgsl: the row at position p sees keys [lo, hi), both ends growing with p.

// hi: j < kvl, and j <= p when causal.
fn keys_hi(p: u32, kvl: u32, causal: bool) -> u32 {
    if (causal) {
        return min(kvl, p + 1u);
    }
    return kvl;
}

// lo: with a sliding window W > 0 (causal only), p − j < W; 0 without one; never past hi (a row
// that sees no key has lo = hi).
fn keys_lo(p: u32, hi: u32, window: u32) -> u32 {
    if (window == 0u || p < window) {
        return 0u;
    }
    return min(p + 1u - window, hi);
}

// Rows i < this, of a sequence whose row 0 sits at qp0, hold key j in their window:
// qp0 + i − j < W. All tq rows without a window.
fn window_rows_end(j: u32, qp0: u32, tq: u32, window: u32) -> u32 {
    if (window == 0u) {
        return tq;
    }
    // a window of qp0 + tq keys or more holds j for every row: clamped, j + w cannot overflow
    let lim = j + min(window, qp0 + tq);
    return select(0u, min(lim - qp0, tq), lim > qp0);
}
