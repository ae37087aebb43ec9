// out[n, j] = table[ids[n], j]. out: (N, C) table: (V, C) ids: (N). Ids outside the table
// give a zero row (the CPU kernel panics on them).
struct P { n: u32, c: u32, v: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= p.n * p.c) { return; }
    let row = i / p.c;
    let id = ids[row];
    if (id >= p.v) {
        out[i] = 0.0;
        return;
    }
    out[i] = table[id * p.c + (i % p.c)];
}
