// Attention backward, pass 1 (see attention_bwd.wgsl): per query row r = (b,i,h)
//   stat[2r] = lse[r],  stat[2r+1] = D_r = dout_r · out_r
// and the small `info` table the other passes read (keeps them within 8 storage buffers):
//   info[b] = q_pos0[b], info[B+b] = min(kv_len[b], Tk), info[2B+h] = bits of alibi[h] (or 0).
// One thread per index t < max(B·Tq·Hq, 2B + Hq) on a 1-D grid folded into x·y
// (t = (wg.y·nwg.x + wg.x)·64 + local).

struct Params {
    batch: u32,
    tq: u32,
    tk: u32,
    hq: u32,
    d: u32,
    has_alibi: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> dout: array<f32>;
@group(0) @binding(2) var<storage, read> out: array<f32>;
@group(0) @binding(3) var<storage, read> lse: array<f32>;
@group(0) @binding(4) var<storage, read> q_pos0: array<u32>;
@group(0) @binding(5) var<storage, read> kv_len: array<u32>;
@group(0) @binding(6) var<storage, read> alibi: array<f32>;
@group(0) @binding(7) var<storage, read_write> stat: array<f32>;
@group(0) @binding(8) var<storage, read_write> info: array<u32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = (wg.y * nwg.x + wg.x) * 64u + lid.x;
    let rows = P.batch * P.tq * P.hq;
    if (t < rows) {
        let d = P.d;
        let o = t * d;
        var acc = 0.0;
        for (var x = 0u; x < d; x++) {
            acc = fma(dout[o + x], out[o + x], acc);
        }
        stat[2u * t] = lse[t];
        stat[2u * t + 1u] = acc;
    }
    let bsz = P.batch;
    if (t < bsz) {
        info[t] = q_pos0[t];
        info[bsz + t] = min(kv_len[t], P.tk);
    }
    if (t < P.hq) {
        var s = 0u;
        if (P.has_alibi != 0u) {
            s = bitcast<u32>(alibi[t]);
        }
        info[2u * bsz + t] = s;
    }
}
