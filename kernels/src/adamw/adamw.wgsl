// Fused AdamW, torch semantics (mod.rs beside this file). The step's scalars come from the host
// (`AdamW::scalars()`, computed in f64 as torch does), with 1−β1, β2, 1−β2 rounded to f32 there
// exactly as the CPU kernel rounds them. One thread per element; the 1-D index is folded under
// the 65535 limit: i = gid.x + gid.y·(num_wg.x·WG).

const WG: u32 = 256u;

struct Params {
    len: u32,
    decay: f32,
    step_size: f32,
    bc2_sqrt: f32,
    b1w: f32, // 1 − β1
    b2: f32,
    b2w: f32, // 1 − β2
    eps: f32,
    grad_scale: f32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> p: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(256)
fn adamw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * (nwg.x * WG);
    if i >= P.len { return; }
    let gi = g[i] * P.grad_scale;
    var pi = p[i] * P.decay;
    var mi = m[i];
    mi = mi + P.b1w * (gi - mi);
    let vi = v[i] * P.b2 + P.b2w * gi * gi;
    let denom = sqrt(vi) / P.bc2_sqrt + P.eps;
    pi = pi + (-P.step_size) * (mi / denom);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
}
