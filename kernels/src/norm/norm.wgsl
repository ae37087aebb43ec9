// RMSNorm and LayerNorm, forward and backward (semantics: mod.rs beside this file).
//
// Compiled after the row prelude (row_prelude.wgsl: WG, ROW_CHUNK, one workgroup per row,
// reduce_sum). Column sums (dw, db) follow the CPU kernel's order (par::column_sums): pass 1
// sums each chunk of ROW_CHUNK rows per column into a partial (one thread per (chunk, column)),
// pass 2 adds the partials to the accumulator in chunk order. No float atomics: the same bits
// every run.
//
// Each entry point declares its own bindings (the pipeline layout is derived per entry point):
// binding 0 = params, then the buffers in the order the wgpu backend's ops/rows.rs passes them.

struct RowParams {
    n: u32,
    c: u32,
    eps: f32,
    chunks: u32, // column sums: ceil(n / ROW_CHUNK)
    w_shift: f32, // RMSNorm's weights are w + w_shift (NormShape::w_shift: −0.0, w exactly, for none)
}

// (chunk, column) of a column-sum partial thread, or k = chunks when out of range
fn chunk_col(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> vec2<u32> {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if i >= P.chunks * P.c { return vec2<u32>(P.chunks, 0u); }
    return vec2<u32>(i / P.c, i % P.c);
}

@group(0) @binding(0) var<uniform> P: RowParams;

var<workgroup> red_b: array<f32, WG>;

// Tree sums of the prelude's `red` and of red_b together; every thread gets both totals.
fn reduce_ab(lid: u32) -> vec2<f32> {
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if lid < s {
            red[lid] = red[lid] + red[lid + s];
            red_b[lid] = red_b[lid] + red_b[lid + s];
        }
        workgroupBarrier();
    }
    let r = vec2<f32>(red[0], red_b[0]);
    workgroupBarrier();
    return r;
}

// ---- RMSNorm forward: out, rstd, x, w ------------------------------------------------------
@group(0) @binding(1) var<storage, read_write> rf_out: array<f32>;
@group(0) @binding(2) var<storage, read_write> rf_rstd: array<f32>;
@group(0) @binding(3) var<storage, read> rf_x: array<f32>;
@group(0) @binding(4) var<storage, read> rf_w: array<f32>;

@compute @workgroup_size(WG)
fn rmsnorm_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wid, nwg);
    if row >= P.n { return; }
    let c = P.c;
    let base = row * c;
    var ss = 0.0;
    for (var j = lid; j < c; j += WG) {
        let v = rf_x[base + j];
        ss += v * v;
    }
    red[lid] = ss;
    let tot = reduce_sum(lid);
    let rs = 1.0 / sqrt(tot / f32(c) + P.eps);
    if lid == 0u { rf_rstd[row] = rs; }
    for (var j = lid; j < c; j += WG) {
        rf_out[base + j] = (rf_w[j] + P.w_shift) * (rf_x[base + j] * rs);
    }
}

// ---- RMSNorm backward, dx += …: dx, dy, x, w, rstd -----------------------------------------
@group(0) @binding(1) var<storage, read_write> rb_dx: array<f32>;
@group(0) @binding(2) var<storage, read> rb_dy: array<f32>;
@group(0) @binding(3) var<storage, read> rb_x: array<f32>;
@group(0) @binding(4) var<storage, read> rb_w: array<f32>;
@group(0) @binding(5) var<storage, read> rb_rstd: array<f32>;

@compute @workgroup_size(WG)
fn rmsnorm_bwd_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wid, nwg);
    if row >= P.n { return; }
    let c = P.c;
    let base = row * c;
    let rs = rb_rstd[row];
    var acc = 0.0;
    for (var j = lid; j < c; j += WG) {
        acc += (rb_dy[base + j] * (rb_w[j] + P.w_shift)) * (rb_x[base + j] * rs);
    }
    red[lid] = acc;
    let dot = reduce_sum(lid) / f32(c);
    for (var j = lid; j < c; j += WG) {
        let g = rb_dy[base + j];
        let xv = rb_x[base + j];
        rb_dx[base + j] = rb_dx[base + j] + rs * (g * (rb_w[j] + P.w_shift) - xv * rs * dot);
    }
}

// ---- RMSNorm backward, partial[k, j] = Σ_{rows of chunk k} dy·x·rstd: partial, dy, x, rstd ---
@group(0) @binding(1) var<storage, read_write> rw_part: array<f32>;
@group(0) @binding(2) var<storage, read> rw_dy: array<f32>;
@group(0) @binding(3) var<storage, read> rw_x: array<f32>;
@group(0) @binding(4) var<storage, read> rw_rstd: array<f32>;

@compute @workgroup_size(WG)
fn rmsnorm_bwd_dw_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let kj = chunk_col(wid, nwg, lid);
    if kj.x >= P.chunks { return; }
    let c = P.c;
    let j = kj.y;
    let r1 = min(kj.x * ROW_CHUNK + ROW_CHUNK, P.n);
    var acc = 0.0;
    for (var r = kj.x * ROW_CHUNK; r < r1; r++) {
        acc += rw_dy[r * c + j] * rw_x[r * c + j] * rw_rstd[r];
    }
    rw_part[kj.x * c + j] = acc;
}

// ---- column sums, pass 2: acc[j] += partial[0, j] + partial[1, j] + … (in chunk order) -------
@group(0) @binding(1) var<storage, read_write> cf_acc: array<f32>;
@group(0) @binding(2) var<storage, read> cf_part: array<f32>;

@compute @workgroup_size(WG)
fn colsum_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let j = (wid.x + wid.y * nwg.x) * WG + lid;
    let c = P.c;
    if j >= c { return; }
    var a = cf_acc[j];
    for (var k = 0u; k < P.chunks; k++) {
        a += cf_part[k * c + j];
    }
    cf_acc[j] = a;
}

// ---- LayerNorm forward: out, mean, rstd, x, w, b -------------------------------------------
@group(0) @binding(1) var<storage, read_write> lf_out: array<f32>;
@group(0) @binding(2) var<storage, read_write> lf_mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> lf_rstd: array<f32>;
@group(0) @binding(4) var<storage, read> lf_x: array<f32>;
@group(0) @binding(5) var<storage, read> lf_w: array<f32>;
@group(0) @binding(6) var<storage, read> lf_b: array<f32>;

@compute @workgroup_size(WG)
fn layernorm_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wid, nwg);
    if row >= P.n { return; }
    let c = P.c;
    let base = row * c;
    // two passes (mean, then squared deviations), as the CPU kernel
    var s = 0.0;
    for (var j = lid; j < c; j += WG) {
        s += lf_x[base + j];
    }
    red[lid] = s;
    let mu = reduce_sum(lid) / f32(c);
    var sq = 0.0;
    for (var j = lid; j < c; j += WG) {
        let d = lf_x[base + j] - mu;
        sq += d * d;
    }
    red[lid] = sq;
    let var_ = reduce_sum(lid) / f32(c);
    let rs = 1.0 / sqrt(var_ + P.eps);
    if lid == 0u {
        lf_mean[row] = mu;
        lf_rstd[row] = rs;
    }
    for (var j = lid; j < c; j += WG) {
        lf_out[base + j] = (lf_x[base + j] - mu) * rs * lf_w[j] + lf_b[j];
    }
}

// ---- LayerNorm backward, dx += …: dx, dy, x, w, mean, rstd ---------------------------------
@group(0) @binding(1) var<storage, read_write> lb_dx: array<f32>;
@group(0) @binding(2) var<storage, read> lb_dy: array<f32>;
@group(0) @binding(3) var<storage, read> lb_x: array<f32>;
@group(0) @binding(4) var<storage, read> lb_w: array<f32>;
@group(0) @binding(5) var<storage, read> lb_mean: array<f32>;
@group(0) @binding(6) var<storage, read> lb_rstd: array<f32>;

@compute @workgroup_size(WG)
fn layernorm_bwd_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wid, nwg);
    if row >= P.n { return; }
    let c = P.c;
    let base = row * c;
    let mu = lb_mean[row];
    let rs = lb_rstd[row];
    var sg = 0.0;
    var sgx = 0.0;
    for (var j = lid; j < c; j += WG) {
        let dxhat = lb_dy[base + j] * lb_w[j];
        sg += dxhat;
        sgx += dxhat * ((lb_x[base + j] - mu) * rs);
    }
    red[lid] = sg;
    red_b[lid] = sgx;
    let t = reduce_ab(lid);
    let mean_g = t.x / f32(c);
    let mean_gx = t.y / f32(c);
    for (var j = lid; j < c; j += WG) {
        let xhat = (lb_x[base + j] - mu) * rs;
        lb_dx[base + j] = lb_dx[base + j] + rs * (lb_dy[base + j] * lb_w[j] - mean_g - xhat * mean_gx);
    }
}

// ---- LayerNorm backward, partials of dw (Σ dy·xhat) and db (Σ dy) per chunk of rows:
//      part_w, part_b, dy, x, mean, rstd ----------------------------------------------------------
@group(0) @binding(1) var<storage, read_write> lw_pw: array<f32>;
@group(0) @binding(2) var<storage, read_write> lw_pb: array<f32>;
@group(0) @binding(3) var<storage, read> lw_dy: array<f32>;
@group(0) @binding(4) var<storage, read> lw_x: array<f32>;
@group(0) @binding(5) var<storage, read> lw_mean: array<f32>;
@group(0) @binding(6) var<storage, read> lw_rstd: array<f32>;

@compute @workgroup_size(WG)
fn layernorm_bwd_dwdb_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(local_invocation_index) lid: u32) {
    let kj = chunk_col(wid, nwg, lid);
    if kj.x >= P.chunks { return; }
    let c = P.c;
    let j = kj.y;
    let r1 = min(kj.x * ROW_CHUNK + ROW_CHUNK, P.n);
    var aw = 0.0;
    var ab = 0.0;
    for (var r = kj.x * ROW_CHUNK; r < r1; r++) {
        let g = lw_dy[r * c + j];
        aw += g * (lw_x[r * c + j] - lw_mean[r]) * lw_rstd[r];
        ab += g;
    }
    lw_pw[kj.x * c + j] = aw;
    lw_pb[kj.x * c + j] = ab;
}
