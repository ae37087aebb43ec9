// dbias[j] += Σ_n dy[n, j], deterministic and in the CPU kernel's order (par::column_sums):
//   `partial`: partial[k, j] = Σ over rows k·R .. min(k·R + R, N) of dy[row, j], rows in order
//   `finish`:  dbias[j] = (((dbias[j] + partial[0, j]) + partial[1, j]) + ...)
// R = row_chunk (32). No atomics.
struct P { n: u32, c: u32, chunks: u32, row_chunk: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> dbias: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> partial_sums: array<f32>;

@compute @workgroup_size(256)
fn partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= p.chunks * p.c) { return; }
    let k = i / p.c;
    let j = i % p.c;
    let r1 = min(k * p.row_chunk + p.row_chunk, p.n);
    var s = 0.0;
    for (var r = k * p.row_chunk; r < r1; r++) {
        s += dy[r * p.c + j];
    }
    partial_sums[i] = s;
}

@compute @workgroup_size(256)
fn finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (j >= p.c) { return; }
    var a = dbias[j];
    for (var k = 0u; k < p.chunks; k++) {
        a += partial_sums[k * p.c + j];
    }
    dbias[j] = a;
}
