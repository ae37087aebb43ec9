// Attention backward, passes 2 and 3 (pass 1 is attention_bwd_prep.wgsl). Deterministic: every
// gradient element is owned by one thread, which sums its terms in a fixed order; no atomics.
//   P = exp(S − lse)   dP = dO·Vᵀ   dS = P ⊙ (dP − D)·scale (⊙ 1 − tanh² with a soft-cap),
//   D_i = dout_i · out_i, S recomputed from q·k as the forward's (att_score)
//   dQ = dS·K          dK = dSᵀ·Q   dV = Pᵀ·dO     (dK, dV summed over the heads of a group)
// All three gradients are overwritten; keys no query sees and rows that see no key get 0.
//
// The host prepends `const DMAX: u32` (>= D) and `const BQ: u32` (rows staged per block: query
// rows in `dkdv`, keys in `dq`; 2·BQ·DMAX + 2·BQ floats of workgroup memory).
// stat: [lse, D] per query row (B,Tq,Hq); info: q_pos0[B], min(kv_len, Tk)[B], alibi bits[Hq].
// Row i sees the keys [keys_lo, keys_hi) of attention_mask.wgsl (causal, sliding window).

struct Params {
    batch: u32,
    tq: u32,
    tk: u32,
    hq: u32,
    hkv: u32,
    d: u32,
    scale: f32,
    causal: u32,
    window: u32,
    softcap: f32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read> stat: array<f32>;
@group(0) @binding(6) var<storage, read> info: array<u32>;
// dkdv: dk, dv; dq: dq
@group(0) @binding(7) var<storage, read_write> g1: array<f32>;
@group(0) @binding(8) var<storage, read_write> g2: array<f32>;

const WG: u32 = 64u;

// staging: q and dout rows in `dkdv`, k and v rows in `dq` (BQ rows of D each)
var<workgroup> sa: array<f32, BQ * DMAX>;
var<workgroup> sb: array<f32, BQ * DMAX>;
var<workgroup> lse_s: array<f32, BQ>;
var<workgroup> dd_s: array<f32, BQ>;
// a block's range of rows (dkdv) or keys (dq), computed by thread 0 for the whole workgroup
var<workgroup> lim_shared: vec2<u32>;

fn slope_of(h: u32) -> f32 {
    return bitcast<f32>(info[2u * P.batch + h]);
}

// Pass 2: one workgroup per (block of WG keys, kv head g, sequence b): grid (ceil(Tk/WG), Hkv, B).
// Thread j owns dk_j, dv_j and walks every query row of the heads of group g that can see the
// block, staged BQ rows at a time.
@compute @workgroup_size(64, 1, 1)
fn dkdv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = wg.z;
    let g = wg.y;
    let tid = lid.x;
    let j0 = wg.x * WG;
    let j = j0 + tid;
    let d = P.d;
    let hq = P.hq;
    let hkv = P.hkv;
    let rep = hq / hkv;
    let tq = P.tq;
    let causal = P.causal != 0u;
    let qp0 = info[b];
    let kvl = info[P.batch + b];
    let key_valid = j < P.tk;
    let key_seen = j < kvl;

    // the rows that see some key of the block: from the first that sees key j0 (its smallest;
    // tq when none does) to the last whose window still holds its largest seen key
    if (tid == 0u) {
        var first = 0u;
        var end = tq;
        if (j0 >= kvl) {
            first = tq;
        } else {
            if (causal && j0 > qp0) {
                first = min(j0 - qp0, tq);
            }
            end = window_rows_end(min(j0 + WG, kvl) - 1u, qp0, tq, P.window);
        }
        lim_shared = vec2<u32>(first, end);
    }
    let rows = workgroupUniformLoad(&lim_shared);

    let kvw = hkv * d;
    let krow = (b * P.tk * hkv + g) * d + j * kvw;
    var kj: array<f32, DMAX>;
    var vj: array<f32, DMAX>;
    var dk: array<f32, DMAX>;
    var dv: array<f32, DMAX>;
    for (var x = 0u; x < d; x++) {
        dk[x] = 0.0;
        dv[x] = 0.0;
        if (key_seen) {
            kj[x] = k[krow + x];
            vj[x] = v[krow + x];
        } else {
            kj[x] = 0.0;
            vj[x] = 0.0;
        }
    }
    // the rows that see key j itself: my_first .. my_end
    var my_first = 0u;
    if (causal && j > qp0) {
        my_first = j - qp0;
    }
    let my_end = window_rows_end(j, qp0, tq, P.window);

    for (var h = g * rep; h < (g + 1u) * rep; h++) {
        let slope = slope_of(h);
        for (var i0 = rows.x; i0 < rows.y; i0 += BQ) {
            let nr = min(BQ, tq - i0);
            for (var e = tid; e < nr * d; e += WG) {
                let r = e / d;
                let x = e % d;
                let src = ((b * tq + i0 + r) * hq + h) * d + x;
                sa[e] = q[src];
                sb[e] = dout[src];
            }
            if (tid < nr) {
                let row = (b * tq + i0 + tid) * hq + h;
                lse_s[tid] = stat[2u * row];
                dd_s[tid] = stat[2u * row + 1u];
            }
            workgroupBarrier();
            if (key_seen) {
                // rows my_first <= i < my_end see key j
                var r0 = 0u;
                if (my_first > i0) {
                    r0 = min(my_first - i0, nr);
                }
                let r1 = min(select(0u, my_end - i0, my_end > i0), nr);
                for (var r = r0; r < r1; r++) {
                    var sdot = 0.0;
                    var pdot = 0.0;
                    for (var x = 0u; x < d; x++) {
                        sdot = fma(sa[r * d + x], kj[x], sdot);
                        pdot = fma(sb[r * d + x], vj[x], pdot);
                    }
                    let sc = att_score(sdot, P.scale, P.softcap, slope * f32(j));
                    let p = exp(sc.x - lse_s[r]);
                    let ds = p * (pdot - dd_s[r]) * P.scale * sc.y;
                    for (var x = 0u; x < d; x++) {
                        dv[x] = fma(p, sb[r * d + x], dv[x]);
                        dk[x] = fma(ds, sa[r * d + x], dk[x]);
                    }
                }
            }
            workgroupBarrier();
        }
    }
    if (key_valid) {
        for (var x = 0u; x < d; x++) {
            g1[krow + x] = dk[x];
            g2[krow + x] = dv[x];
        }
    }
}

// Pass 3: one workgroup per (block of WG query rows, query head h, sequence b): grid
// (ceil(Tq/WG), Hq, B). Thread i owns dq_i and walks the keys it sees, staged BQ at a time.
@compute @workgroup_size(64, 1, 1)
fn dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = wg.z;
    let h = wg.y;
    let tid = lid.x;
    let i = wg.x * WG + tid;
    let d = P.d;
    let hq = P.hq;
    let hkv = P.hkv;
    let g = h / (hq / hkv);
    let tq = P.tq;
    let causal = P.causal != 0u;
    let qp0 = info[b];
    let kvl = info[P.batch + b];
    let row_valid = i < tq;

    var nvis = 0u;
    var lo = 0u;
    if (row_valid) {
        nvis = keys_hi(qp0 + i, kvl, causal);
        lo = keys_lo(qp0 + i, nvis, P.window);
    }
    // the block's keys: from its first row's lo to its last row's hi
    if (tid == 0u) {
        let first = wg.x * WG;
        let last = min(first + WG, tq) - 1u;
        lim_shared = vec2<u32>(keys_lo(qp0 + first, keys_hi(qp0 + first, kvl, causal), P.window), keys_hi(qp0 + last, kvl, causal));
    }
    let keys = workgroupUniformLoad(&lim_shared);
    let nk = keys.y;
    let slope = slope_of(h);

    let qrow = ((b * tq + i) * hq + h) * d;
    var qv: array<f32, DMAX>;
    var dov: array<f32, DMAX>;
    var acc: array<f32, DMAX>;
    for (var x = 0u; x < d; x++) {
        acc[x] = 0.0;
        if (row_valid) {
            qv[x] = q[qrow + x];
            dov[x] = dout[qrow + x];
        } else {
            qv[x] = 0.0;
            dov[x] = 0.0;
        }
    }
    var l = 0.0;
    var dd = 0.0;
    if (row_valid) {
        let row = (b * tq + i) * hq + h;
        l = stat[2u * row];
        dd = stat[2u * row + 1u];
    }
    let kvw = hkv * d;
    let kbase = (b * P.tk * hkv + g) * d;

    for (var j0 = keys.x; j0 < nk; j0 += BQ) {
        let nb = min(BQ, nk - j0);
        for (var e = tid; e < nb * d; e += WG) {
            let jj = e / d;
            let x = e % d;
            let src = kbase + (j0 + jj) * kvw + x;
            sa[e] = k[src];
            sb[e] = v[src];
        }
        workgroupBarrier();
        if (row_valid && j0 < nvis && lo < j0 + nb) {
            let nv = min(nb, nvis - j0);
            for (var jj = max(lo, j0) - j0; jj < nv; jj++) {
                var sdot = 0.0;
                var pdot = 0.0;
                for (var x = 0u; x < d; x++) {
                    sdot = fma(qv[x], sa[jj * d + x], sdot);
                    pdot = fma(dov[x], sb[jj * d + x], pdot);
                }
                let sc = att_score(sdot, P.scale, P.softcap, slope * f32(j0 + jj));
                let p = exp(sc.x - l);
                let ds = p * (pdot - dd) * P.scale * sc.y;
                for (var x = 0u; x < d; x++) {
                    acc[x] = fma(ds, sa[jj * d + x], acc[x]);
                }
            }
        }
        workgroupBarrier();
    }
    if (row_valid) {
        for (var x = 0u; x < d; x++) {
            g1[qrow + x] = acc[x];
        }
    }
}
