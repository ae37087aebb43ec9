// dst[i] = the bf16 in half (i & 1) of 32-bit word i/2 of src, as f32 (frozen weights stored in
// bf16, two per slot; the source buffer is read as raw words).
struct P { n: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read_write> src: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= p.n) { return; }
    let w = src[i >> 1u];
    dst[i] = bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u));
}
