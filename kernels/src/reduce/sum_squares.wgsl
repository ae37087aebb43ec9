// acc[slot] = Σ x[i]² for i < n, deterministic (fixed order, no atomics), two passes:
//   `partial`: workgroup k reduces x[4096k .. 4096k + 4096): thread t sums its 16 strided
//              elements t, t+256, … in order, then a fixed shared-memory tree → partial_sums[k]
//   `finish`:  one workgroup folds partial_sums[0 .. chunks) the same way into acc[slot]
//              (n = 0 writes 0).
// The workgroup index is folded into x·y for large n (see runtime/src/wgpu/mod.rs).
struct P { n: u32, chunks: u32, slot: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> acc: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> partial_sums: array<f32>;

var<workgroup> sh: array<f32, 256>;

fn tree(lid: u32) {
    for (var s = 128u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (lid < s) {
            sh[lid] = sh[lid] + sh[lid + s];
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = wid.x + wid.y * nwg.x;
    // every thread of a workgroup reaches the barriers: no early return before `tree`
    var s = 0.0;
    if (k < p.chunks) {
        let base = k * 4096u;
        for (var e = 0u; e < 16u; e++) {
            let i = base + e * 256u + lid;
            if (i < p.n) {
                let v = x[i];
                s += v * v;
            }
        }
    }
    sh[lid] = s;
    tree(lid);
    if (lid == 0u && k < p.chunks) {
        partial_sums[k] = sh[0];
    }
}

@compute @workgroup_size(256)
fn finish(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var k = lid; k < p.chunks; k += 256u) {
        s += partial_sums[k];
    }
    sh[lid] = s;
    tree(lid);
    if (lid == 0u) {
        acc[p.slot] = sh[0];
    }
}
