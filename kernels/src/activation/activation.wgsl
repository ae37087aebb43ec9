// SwiGLU, the tanh form of GELU, GeGLU and ReLU, forward and backward, soft-capping and dropout
// (semantics: mod.rs beside this file), after tanh.wgsl (okapi_tanh). Elementwise, one thread per
// element; the 1-D index is folded under the 65535 limit: i = gid.x + gid.y·(num_wg.x·WG). Every
// output is `=`, except dropout_acc's (`+=`) and the soft-caps' (in place).

const WG: u32 = 256u;
const SQRT_2_OVER_PI: f32 = 0.79788456;

// key, threshold and scale: dropout's (Dropout::key(), .threshold, .scale); cap: the soft-caps';
// 0 where an entry point does not read them.
struct Params {
    len: u32,
    key: u32,
    threshold: u32,
    scale: f32,
    cap: f32,
}

@group(0) @binding(0) var<uniform> P: Params;

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

// tanh as 1 − 2/(e^{2u} + 1): saturates to ±1 without NaN on every driver (as the CPU kernel)
fn tanh_(u: f32) -> f32 {
    return 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
}

// GELU's tanh term t = tanh(√(2/π)·x·(1 + 0.044715·x²)); gelu(x) = x·½·(1 + t) and gelu'(x)
// from it (GeGLU's backward needs both)
fn gelu_t(x: f32) -> f32 {
    return tanh_(SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x));
}

fn gelu_of(x: f32, t: f32) -> f32 {
    return x * 0.5 * (1.0 + t);
}

fn gelu_grad_of(x: f32, t: f32) -> f32 {
    return 0.5 * x * ((1.0 - t * t) * (SQRT_2_OVER_PI + 0.10703224 * x * x)) + 0.5 * (1.0 + t);
}

// !(x <= 0), read from the bits (WGSL lets a compiler assume no NaN, so a float compare could
// lose it): true for x > 0 and for NaN, which ReLU passes through (as the CPU kernel).
fn relu_passes(x: f32) -> bool {
    let b = bitcast<u32>(x);
    return (b != 0u && b < 0x80000000u) || (b & 0x7fffffffu) > 0x7f800000u;
}

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * (nwg.x * WG);
}

// ---- SwiGLU forward: out, gate, up -----------------------------------------------------------
@group(0) @binding(1) var<storage, read_write> sf_out: array<f32>;
@group(0) @binding(2) var<storage, read> sf_gate: array<f32>;
@group(0) @binding(3) var<storage, read> sf_up: array<f32>;

@compute @workgroup_size(256)
fn swiglu_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= P.len { return; }
    let g = sf_gate[i];
    sf_out[i] = g * sigmoid(g) * sf_up[i];
}

// ---- SwiGLU backward: dgate, dup, dout, gate, up --------------------------------------------
@group(0) @binding(1) var<storage, read_write> sb_dgate: array<f32>;
@group(0) @binding(2) var<storage, read_write> sb_dup: array<f32>;
@group(0) @binding(3) var<storage, read> sb_dout: array<f32>;
@group(0) @binding(4) var<storage, read> sb_gate: array<f32>;
@group(0) @binding(5) var<storage, read> sb_up: array<f32>;

@compute @workgroup_size(256)
fn swiglu_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= P.len { return; }
    let g = sb_gate[i];
    let d = sb_dout[i];
    let s = sigmoid(g);
    sb_dup[i] = d * g * s;
    sb_dgate[i] = d * sb_up[i] * s * (1.0 + g * (1.0 - s));
}

// ---- GELU forward: out, x --------------------------------------------------------------------
@group(0) @binding(1) var<storage, read_write> gf_out: array<f32>;
@group(0) @binding(2) var<storage, read> gf_x: array<f32>;

@compute @workgroup_size(256)
fn gelu_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= P.len { return; }
    let x = gf_x[i];
    gf_out[i] = gelu_of(x, gelu_t(x));
}

// ---- GELU backward: dx, dout, x --------------------------------------------------------------
@group(0) @binding(1) var<storage, read_write> gb_dx: array<f32>;
@group(0) @binding(2) var<storage, read> gb_dout: array<f32>;
@group(0) @binding(3) var<storage, read> gb_x: array<f32>;

@compute @workgroup_size(256)
fn gelu_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= P.len { return; }
    let x = gb_x[i];
    gb_dx[i] = gelu_grad_of(x, gelu_t(x)) * gb_dout[i];
}

// ---- GeGLU forward: out, gate, up ------------------------------------------------------------
@group(0) @binding(1) var<storage, read_write> ggf_out: array<f32>;
@group(0) @binding(2) var<storage, read> ggf_gate: array<f32>;
@group(0) @binding(3) var<storage, read> ggf_up: array<f32>;

@compute @workgroup_size(256)
fn geglu_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= P.len { return; }
    let g = ggf_gate[i];
    ggf_out[i] = gelu_of(g, gelu_t(g)) * ggf_up[i];
}

// ---- GeGLU backward: dgate, dup, dout, gate, up ---------------------------------------------
@group(0) @binding(1) var<storage, read_write> ggb_dgate: array<f32>;
@group(0) @binding(2) var<storage, read_write> ggb_dup: array<f32>;
@group(0) @binding(3) var<storage, read> ggb_dout: array<f32>;
@group(0) @binding(4) var<storage, read> ggb_gate: array<f32>;
@group(0) @binding(5) var<storage, read> ggb_up: array<f32>;

@compute @workgroup_size(256)
fn geglu_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= P.len { return; }
    let g = ggb_gate[i];
    let d = ggb_dout[i];
    let t = gelu_t(g);
    ggb_dup[i] = d * gelu_of(g, t);
    ggb_dgate[i] = d * ggb_up[i] * gelu_grad_of(g, t);
}

// ---- soft-cap forward, in place: x = cap·tanh(x/cap) ---------------------------------------
@group(0) @binding(1) var<storage, read_write> cf_x: array<f32>;

@compute @workgroup_size(256)
fn softcap_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= P.len { return; }
    cf_x[i] = P.cap * okapi_tanh(cf_x[i] / P.cap);
}

// ---- soft-cap backward, in place: dy *= 1 − (y/cap)², y the capped output ----------------
@group(0) @binding(1) var<storage, read_write> cb_dy: array<f32>;
@group(0) @binding(2) var<storage, read> cb_y: array<f32>;

@compute @workgroup_size(256)
fn softcap_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= P.len { return; }
    let t = cb_y[i] / P.cap;
    cb_dy[i] = cb_dy[i] * (1.0 - t * t);
}

// ---- ReLU forward: out, x -------------------------------------------------------------------
@group(0) @binding(1) var<storage, read_write> rf_out: array<f32>;
@group(0) @binding(2) var<storage, read> rf_x: array<f32>;

@compute @workgroup_size(256)
fn relu_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= P.len { return; }
    let x = rf_x[i];
    rf_out[i] = select(0.0, x, relu_passes(x));
}

// ---- ReLU backward: dx, dout, x -------------------------------------------------------------
@group(0) @binding(1) var<storage, read_write> rb_dx: array<f32>;
@group(0) @binding(2) var<storage, read> rb_dout: array<f32>;
@group(0) @binding(3) var<storage, read> rb_x: array<f32>;

@compute @workgroup_size(256)
fn relu_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= P.len { return; }
    rb_dx[i] = select(0.0, rb_dout[i], relu_passes(rb_x[i]));
}

// ---- dropout: out, x ------------------------------------------------------------------------
@group(0) @binding(1) var<storage, read_write> dp_out: array<f32>;
@group(0) @binding(2) var<storage, read> dp_x: array<f32>;

fn dropout_mix(v: u32) -> u32 {
    var x = v;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

// x·scale where element i is kept, else +0, masked through the bits: no float select or compare
// (a NaN x must still drop to 0), and no multiply-add a driver could fuse in dropout_acc.
fn dropout_value(i: u32) -> f32 {
    let keep = select(0u, 0xffffffffu, dropout_mix(i ^ P.key) >= P.threshold);
    return bitcast<f32>(bitcast<u32>(dp_x[i] * P.scale) & keep);
}

@compute @workgroup_size(256)
fn dropout(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= P.len { return; }
    dp_out[i] = dropout_value(i);
}

@compute @workgroup_size(256)
fn dropout_acc(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if i >= P.len { return; }
    dp_out[i] = dp_out[i] + dropout_value(i);
}
