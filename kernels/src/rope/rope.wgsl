// RoPE in HF's rotate-half layout, in place (semantics: mod.rs beside this file).
// x: (N,H,D); the pair (x[i], x[i + D/2]) of each head is rotated by sign·pos·inv_freq[i].
// One thread per pair; the 1-D index is folded under the 65535 limit:
// i = gid.x + gid.y·(num_wg.x·WG).
// The angle pos·inv_freq is the CPU kernel's f32 product; it is reduced to [−π, π] (Cody–Waite,
// three-part 2π with fma) before sin/cos, whose accuracy drivers only promise in that range.

const WG: u32 = 256u;

struct Params {
    n: u32,
    n_heads: u32,
    head_dim: u32,
    sign: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;

// 2π = C1 + C2 + C3; C1 has 8 significant bits, so k·C1 is exact for |k| < 2^16.
const C1: f32 = 6.28125;
const C2: f32 = 1.9353071693331003e-3; // exactly representable
const C3: f32 = 1.0253131677018246e-11;
const INV_2PI: f32 = 0.15915494309189535;

fn reduce_angle(a: f32) -> f32 {
    let k = round(a * INV_2PI);
    var r = a - k * C1;
    r = fma(-k, C2, r);
    r = fma(-k, C3, r);
    return r;
}

@compute @workgroup_size(256)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * (nwg.x * WG);
    let half = P.head_dim / 2u;
    let per_row = P.n_heads * half;
    if i >= P.n * per_row { return; }
    let row = i / per_row;
    let rem = i - row * per_row;
    let head = rem / half;
    let k = rem - head * half;
    let a = reduce_angle(f32(positions[row]) * inv_freq[k]);
    let c = cos(a);
    let s = sin(a) * P.sign;
    let lo = row * P.n_heads * P.head_dim + head * P.head_dim + k;
    let hi = lo + half;
    let x1 = x[lo];
    let x2 = x[hi];
    x[lo] = x1 * c - x2 * s;
    x[hi] = x2 * c + x1 * s;
}
