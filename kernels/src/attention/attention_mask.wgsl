// Which keys a query row sees (attention/mod.rs), shared by attention_fwd.wgsl and
// attention_bwd.wgsl: the row at position p sees keys [lo, hi), both ends growing with p; and
// the score of a key (att_score, after tanh.wgsl's okapi_tanh).

// The score of a key from dot = q·k and bias = ALiBi's slope·j: scale·dot, soft-capped to
// cap·tanh(scale·dot/cap) when cap > 0, plus bias. .y: the cap's factor ∂score/∂(scale·dot) for
// the backward (1 − tanh², or 1 without a cap, where the score is the uncapped expression).
fn att_score(dot: f32, scale: f32, cap: f32, bias: f32) -> vec2<f32> {
    if (cap > 0.0) {
        let t = okapi_tanh(scale * dot / cap);
        return vec2<f32>(cap * t + bias, 1.0 - t * t);
    }
    return vec2<f32>(scale * dot + bias, 1.0);
}

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
