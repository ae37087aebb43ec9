// Flash-style attention forward (see attention/mod.rs for the exact semantics).
// q, out: (B,Tq,Hq,D)  k, v: (B,Tk,Hkv,D)  lse: (B,Tq,Hq). Query head h reads kv head
// h / (Hq/Hkv). Row i of sequence b sits at position p = q_pos0[b]+i and sees keys
// j < min(kv_len[b], Tk) (and j <= p when causal; with a window W > 0 also p − j < W): the range
// [keys_lo, keys_hi) of attention_mask.wgsl. Score: scale·(q·k_j) + slope_h·j, the first term
// soft-capped with softcap > 0 (att_score).
// Rows that see no key: out = 0, lse = -inf.
//
// The host prepends `const DMAX: u32` (head_dim capacity of the private arrays, >= D) and
// `const BK: u32` (keys staged per block; 2·BK·DMAX floats fit in 16 KiB of workgroup memory).
// One workgroup per (block of WG query rows, query head, sequence): grid (ceil(Tq/WG), Hq, B).
// Each thread owns one query row (q and the output accumulator in private arrays) and runs an
// online softmax over blocks of BK keys, staged in workgroup memory by the whole workgroup.

struct Params {
    batch: u32,
    tq: u32,
    tk: u32,
    hq: u32,
    hkv: u32,
    d: u32,
    scale: f32,
    causal: u32,
    has_alibi: u32,
    neg_inf: u32, // bits of -inf (not expressible as a WGSL constant)
    window: u32,
    softcap: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> q_pos0: array<u32>;
@group(0) @binding(5) var<storage, read> kv_len: array<u32>;
@group(0) @binding(6) var<storage, read> alibi: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
@group(0) @binding(8) var<storage, read_write> lse: array<f32>;

const WG: u32 = 64u;
// a finite "minus infinity" for the running max: exp(NEG_BIG - real score) is exactly 0
const NEG_BIG: f32 = -3.0e38;

var<workgroup> ks: array<f32, BK * DMAX>;
var<workgroup> vs: array<f32, BK * DMAX>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = wg.z;
    let h = wg.y;
    let tid = lid.x;
    let i = wg.x * WG + tid;
    let d = P.d;
    let hq = P.hq;
    let hkv = P.hkv;
    let g = h / (hq / hkv);
    let qp0 = q_pos0[b];
    let kvl = min(kv_len[b], P.tk);
    let causal = P.causal != 0u;
    let row_valid = i < P.tq;

    var nvis = 0u;
    var lo = 0u;
    if (row_valid) {
        nvis = keys_hi(qp0 + i, kvl, causal);
        lo = keys_lo(qp0 + i, nvis, P.window);
    }
    // the block's keys: from its first row's lo to its last row's hi, which hold every row's
    // range (uniform: they derive from the workgroup id, the uniform params and read-only storage)
    let first = wg.x * WG;
    let last = min(first + WG, P.tq) - 1u;
    let nk = keys_hi(qp0 + last, kvl, causal);
    let lo0 = keys_lo(qp0 + first, keys_hi(qp0 + first, kvl, causal), P.window);

    var slope = 0.0;
    if (P.has_alibi != 0u) {
        slope = alibi[h];
    }
    let qrow = ((b * P.tq + i) * hq + h) * d;
    var qv: array<f32, DMAX>;
    var acc: array<f32, DMAX>;
    for (var x = 0u; x < d; x++) {
        acc[x] = 0.0;
        if (row_valid) {
            qv[x] = q[qrow + x];
        } else {
            qv[x] = 0.0;
        }
    }
    var m = NEG_BIG;
    var l = 0.0;
    let kvw = hkv * d;
    let kbase = (b * P.tk * hkv + g) * d;

    for (var j0 = lo0; j0 < nk; j0 += BK) {
        let nb = min(BK, nk - j0);
        for (var e = tid; e < nb * d; e += WG) {
            let jj = e / d;
            let x = e % d;
            let src = kbase + (j0 + jj) * kvw + x;
            ks[e] = k[src];
            vs[e] = v[src];
        }
        workgroupBarrier();
        if (row_valid && j0 < nvis && lo < j0 + nb) {
            let nv = min(nb, nvis - j0);
            // the row's first key in this block
            let js = max(lo, j0) - j0;
            var s: array<f32, BK>;
            var bm = NEG_BIG;
            for (var jj = js; jj < nv; jj++) {
                var dot = 0.0;
                for (var x = 0u; x < d; x++) {
                    dot = fma(qv[x], ks[jj * d + x], dot);
                }
                let sc = att_score(dot, P.scale, P.softcap, slope * f32(j0 + jj)).x;
                s[jj] = sc;
                bm = max(bm, sc);
            }
            let mnew = max(m, bm);
            let corr = exp(m - mnew);
            l = l * corr;
            for (var x = 0u; x < d; x++) {
                acc[x] = acc[x] * corr;
            }
            for (var jj = js; jj < nv; jj++) {
                let p = exp(s[jj] - mnew);
                l += p;
                for (var x = 0u; x < d; x++) {
                    acc[x] = fma(p, vs[jj * d + x], acc[x]);
                }
            }
            m = mnew;
        }
        workgroupBarrier();
    }

    if (row_valid) {
        let lrow = (b * P.tq + i) * hq + h;
        if (lo >= nvis) {
            for (var x = 0u; x < d; x++) {
                out[qrow + x] = 0.0;
            }
            lse[lrow] = bitcast<f32>(P.neg_inf);
        } else {
            let inv = 1.0 / l;
            for (var x = 0u; x < d; x++) {
                out[qrow + x] = acc[x] * inv;
            }
            lse[lrow] = m + log(l);
        }
    }
}
