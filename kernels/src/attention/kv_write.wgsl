// cache[b, pos[b] + i, :] = new[b, i, :] for i < Tn; rows at or past Tcap are dropped.
// cache: (B, Tcap, W) new: (B, Tn, W) pos: (B). One thread per element of `new`.
struct P { batch: u32, t_new: u32, t_cap: u32, width: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> cache: array<f32>;
@group(0) @binding(2) var<storage, read> new_rows: array<f32>;
@group(0) @binding(3) var<storage, read> pos: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= p.batch * p.t_new * p.width) { return; }
    let w = i % p.width;
    let r = i / p.width;       // b * t_new + row
    let b = r / p.t_new;
    let t = pos[b] + (r % p.t_new);
    if (t < p.t_cap) {
        cache[(b * p.t_cap + t) * p.width + w] = new_rows[i];
    }
}
