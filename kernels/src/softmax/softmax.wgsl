// Row softmax with temperature, forward and backward (semantics: mod.rs beside this file).
// Compiled after the row prelude (row_prelude.wgsl: WG, one workgroup per row, reduce_sum /
// reduce_max); any row width works (not only multiples of WG).

struct Params {
    n: u32,
    v: u32,
    inv_t: f32, // 1/temperature, computed on the host as the CPU kernel does
    _p: u32,
}

@group(0) @binding(0) var<uniform> P: Params;

// ---- forward: out, x -------------------------------------------------------------------------
@group(0) @binding(1) var<storage, read_write> f_out: array<f32>;
@group(0) @binding(2) var<storage, read> f_x: array<f32>;

@compute @workgroup_size(WG)
fn softmax_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wid, nwg);
    if row >= P.n { return; }
    let v = P.v;
    let base = row * v;
    let inv_t = P.inv_t;
    var mx = LOWEST;
    for (var j = lid; j < v; j += WG) { mx = max(mx, f_x[base + j]); }
    red[lid] = mx;
    // max(x/t) = max(x)/t for t > 0
    let m = reduce_max(lid) * inv_t;
    var s = 0.0;
    for (var j = lid; j < v; j += WG) {
        let e = exp(inv_t * f_x[base + j] - m);
        f_out[base + j] = e;
        s += e;
    }
    red[lid] = s;
    let r = 1.0 / reduce_sum(lid);
    // each thread rescales the elements it wrote itself
    for (var j = lid; j < v; j += WG) { f_out[base + j] = f_out[base + j] * r; }
}

// ---- backward, dx = y ⊙ (dy − Σ y·dy): dx, dy, y ---------------------------------------------
@group(0) @binding(1) var<storage, read_write> b_dx: array<f32>;
@group(0) @binding(2) var<storage, read> b_dy: array<f32>;
@group(0) @binding(3) var<storage, read> b_y: array<f32>;

@compute @workgroup_size(WG)
fn softmax_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wid, nwg);
    if row >= P.n { return; }
    let v = P.v;
    let base = row * v;
    var d = 0.0;
    for (var j = lid; j < v; j += WG) { d += b_dy[base + j] * b_y[base + j]; }
    red[lid] = d;
    let dot = reduce_sum(lid);
    for (var j = lid; j < v; j += WG) { b_dx[base + j] = b_y[base + j] * (b_dy[base + j] - dot); }
}
