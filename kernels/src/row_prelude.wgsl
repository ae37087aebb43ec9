// ---- row prelude (kernels/src/row_prelude.wgsl), compiled in front of softmax.wgsl, xent.wgsl
// and norm.wgsl, after `const WG` (threads per workgroup) and `const ROW_CHUNK` (rows per
// column-sum chunk), which okapi-kernels writes from its Rust constants.
//
// Row kernels run one workgroup of WG threads per row: row = wid.x + wid.y·num_workgroups.x
// (the grid is folded under the 65535-per-dimension limit, so rows past n must return). Each
// thread walks the row with stride WG, then a fixed-order tree reduction in workgroup memory
// combines the threads' values: deterministic, any row width.

const LOWEST: f32 = -3.4028234663852886e38;

var<workgroup> red: array<f32, WG>;

// The row this workgroup handles.
fn row_of(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Σ red[0..WG) (each thread first writes its value to red[lid]); every thread gets the total.
fn reduce_sum(lid: u32) -> f32 {
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if lid < s { red[lid] = red[lid] + red[lid + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// max red[0..WG), as reduce_sum.
fn reduce_max(lid: u32) -> f32 {
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if lid < s { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}
// ---- end of the row prelude
