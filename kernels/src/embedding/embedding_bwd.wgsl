// dtable[ids[n], j] += dout[n, j]. One thread per column j walks the tokens n = 0, 1, … in
// order, so every table element sums its rows in position order — the CPU kernel's order, no
// atomics, deterministic. Ids outside the table are skipped (the CPU kernel panics on them).
struct P { n: u32, c: u32, v: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> dtable: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (j >= p.c) { return; }
    for (var n = 0u; n < p.n; n++) {
        let id = ids[n];
        if (id < p.v) {
            let t = id * p.c + j;
            dtable[t] = dtable[t] + dout[n * p.c + j];
        }
    }
}
