// Fused cross-entropy and per-token log-probabilities over the vocabulary (semantics: mod.rs
// beside this file). Compiled after the row prelude (row_prelude.wgsl: WG, one workgroup per
// row, reduce_sum / reduce_max); any vocabulary width. Element j of a row is always handled by thread
// j mod WG, so a thread only re-reads what it wrote itself (no cross-thread storage hazard).
// Targets equal to IGNORE_INDEX (u32::MAX) give 0 loss / log-prob and a zero gradient row.

const IGNORE: u32 = 0xffffffffu;

struct Params {
    n: u32,
    v: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;

var<workgroup> red_i: array<u32, WG>;

// ---- xent_fwd_bwd, in place: logits (read_write), losses, targets, coef ---------------------
@group(0) @binding(1) var<storage, read_write> x_logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> x_losses: array<f32>;
@group(0) @binding(3) var<storage, read> x_targets: array<u32>;
@group(0) @binding(4) var<storage, read> x_coef: array<f32>;

@compute @workgroup_size(WG)
fn xent_fwd_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wid, nwg);
    if row >= P.n { return; }
    let v = P.v;
    let base = row * v;
    let t = x_targets[row];
    let ign = t == IGNORE;
    // the target's logit, kept by the thread that owns it (before that thread overwrites it)
    var tl = 0.0;
    var mx = LOWEST;
    for (var j = lid; j < v; j += WG) {
        let xv = x_logits[base + j];
        mx = max(mx, xv);
        if j == t { tl = xv; }
    }
    red[lid] = mx;
    let m = reduce_max(lid);
    // one exp per element: row ← e^(x − max), then scaled by coef/Σ
    var s = 0.0;
    for (var j = lid; j < v; j += WG) {
        let e = exp(x_logits[base + j] - m);
        x_logits[base + j] = e;
        s += e;
    }
    red[lid] = s;
    let sum = reduce_sum(lid);
    if ign {
        for (var j = lid; j < v; j += WG) { x_logits[base + j] = 0.0; }
        if lid == 0u { x_losses[row] = 0.0; }
        return;
    }
    let k = x_coef[row];
    let sc = k / sum;
    for (var j = lid; j < v; j += WG) {
        var d = x_logits[base + j] * sc;
        if j == t {
            d -= k;
            x_losses[row] = m + log(sum) - tl;
        }
        x_logits[base + j] = d;
    }
}

// ---- token_logprobs: logp, greedy, logits, targets ------------------------------------------
@group(0) @binding(1) var<storage, read_write> l_logp: array<f32>;
@group(0) @binding(2) var<storage, read_write> l_greedy: array<f32>;
@group(0) @binding(3) var<storage, read> l_logits: array<f32>;
@group(0) @binding(4) var<storage, read> l_targets: array<u32>;

@compute @workgroup_size(WG)
fn token_logprobs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wid, nwg);
    if row >= P.n { return; }
    let v = P.v;
    let base = row * v;
    // (max, first index of the max): a thread walks its elements in ascending order and keeps
    // the first; the tree keeps the smaller index on ties, so the result is the first argmax.
    var mx = LOWEST;
    var arg = 0xffffffffu;
    for (var j = lid; j < v; j += WG) {
        let xv = l_logits[base + j];
        if arg == 0xffffffffu || xv > mx { mx = xv; arg = j; }
    }
    red[lid] = mx;
    red_i[lid] = arg;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if lid < s {
            let bv = red[lid + s];
            let bi = red_i[lid + s];
            let av = red[lid];
            let ai = red_i[lid];
            if bi != 0xffffffffu && (ai == 0xffffffffu || bv > av || (bv == av && bi < ai)) {
                red[lid] = bv;
                red_i[lid] = bi;
            }
        }
        workgroupBarrier();
    }
    let m = red[0];
    let am = red_i[0];
    workgroupBarrier();
    var s = 0.0;
    for (var j = lid; j < v; j += WG) { s += exp(l_logits[base + j] - m); }
    red[lid] = s;
    let sum = reduce_sum(lid);
    if lid == 0u {
        let t = l_targets[row];
        if t == IGNORE {
            l_logp[row] = 0.0;
            l_greedy[row] = 0.0;
        } else {
            l_logp[row] = l_logits[base + t] - (m + log(sum));
            l_greedy[row] = select(0.0, 1.0, am == t);
        }
    }
}

// ---- token_logprobs_bwd, dlogits = coef·(onehot − softmax): dlogits, logits, targets, coef ---
@group(0) @binding(1) var<storage, read_write> b_dlogits: array<f32>;
@group(0) @binding(2) var<storage, read> b_logits: array<f32>;
@group(0) @binding(3) var<storage, read> b_targets: array<u32>;
@group(0) @binding(4) var<storage, read> b_coef: array<f32>;

@compute @workgroup_size(WG)
fn token_logprobs_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wid, nwg);
    if row >= P.n { return; }
    let v = P.v;
    let base = row * v;
    var mx = LOWEST;
    for (var j = lid; j < v; j += WG) { mx = max(mx, b_logits[base + j]); }
    red[lid] = mx;
    let m = reduce_max(lid);
    var s = 0.0;
    for (var j = lid; j < v; j += WG) { s += exp(b_logits[base + j] - m); }
    red[lid] = s;
    let lse = m + log(reduce_sum(lid));
    let t = b_targets[row];
    if t == IGNORE {
        for (var j = lid; j < v; j += WG) { b_dlogits[base + j] = 0.0; }
        return;
    }
    let k = b_coef[row];
    for (var j = lid; j < v; j += WG) {
        var d = -k * exp(b_logits[base + j] - lse);
        if j == t { d += k; }
        b_dlogits[base + j] = d;
    }
}
