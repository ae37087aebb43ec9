// Tiled GEMM: C = alpha·op(A)·op(B) + beta·C, row-major, strided batches (see `Gemm` in mod.rs).
// op(A) is (m,k): stored (m,k), or (k,m) when trans_a. op(B) is (k,n): stored (k,n), or (n,k)
// when trans_b. beta == 0 never reads C (it may hold NaN).
//
// One workgroup of 16×16 threads computes a 64×64 tile of C; each thread a 4×4 block at rows
// ty + 16·i and columns tx + 16·j (strided, so reads of the staged tiles are conflict-free).
// K is walked in slices of 16 staged in workgroup memory; loads past the edges read 0.
// Grid: x = column tiles, y = row tiles, z = batch entries (from batch0).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32, // bit 0: trans_a, bit 1: trans_b
    alpha: f32,
    beta: f32,
    batch0: u32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> C: array<f32>;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

// staged slices, k-major: as_[kk][row], bs[kk][col]
var<workgroup> as_: array<f32, 1024>; // TK * TM
var<workgroup> bs: array<f32, 1024>;  // TK * TN

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = P.m;
    let n = P.n;
    let k = P.k;
    let ta = (P.flags & 1u) != 0u;
    let tb = (P.flags & 2u) != 0u;
    let bi = P.batch0 + wg.z;
    let a0 = bi * P.stride_a;
    let b0 = bi * P.stride_b;
    let c0 = bi * P.stride_c;
    let row0 = wg.y * TM;
    let col0 = wg.x * TN;
    let tx = lid.x;
    let ty = lid.y;
    let tid = ty * 16u + tx;

    // acc[i] holds the thread's row ty + 16·i, columns tx + 16·j in lane j: four named vec4
    // registers (no indexed private array, which some compilers — lavapipe's — keep in memory)
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    for (var kt = 0u; kt < k; kt += TK) {
        // stage op(A)[row0.., kt..] and op(B)[kt.., col0..]: 1024 elements each, 4 per thread;
        // consecutive threads walk the contiguous dimension of the stored matrix.
        for (var r = 0u; r < 4u; r++) {
            let e = tid + r * 256u;
            var row: u32;
            var kk: u32;
            if (ta) {
                row = e % TM;
                kk = e / TM;
            } else {
                kk = e % TK;
                row = e / TK;
            }
            var x = 0.0;
            let gr = row0 + row;
            let gk = kt + kk;
            if (gr < m && gk < k) {
                if (ta) {
                    x = A[a0 + gk * m + gr];
                } else {
                    x = A[a0 + gr * k + gk];
                }
            }
            as_[kk * TM + row] = x;

            var col: u32;
            if (tb) {
                kk = e % TK;
                col = e / TK;
            } else {
                col = e % TN;
                kk = e / TN;
            }
            var y = 0.0;
            let gc = col0 + col;
            let gk2 = kt + kk;
            if (gc < n && gk2 < k) {
                if (tb) {
                    y = B[b0 + gc * k + gk2];
                } else {
                    y = B[b0 + gk2 * n + gc];
                }
            }
            bs[kk * TN + col] = y;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let sa = kk * TM + ty;
            let sb = kk * TN + tx;
            let bv = vec4<f32>(bs[sb], bs[sb + 16u], bs[sb + 32u], bs[sb + 48u]);
            acc0 = fma(vec4<f32>(as_[sa]), bv, acc0);
            acc1 = fma(vec4<f32>(as_[sa + 16u]), bv, acc1);
            acc2 = fma(vec4<f32>(as_[sa + 32u]), bv, acc2);
            acc3 = fma(vec4<f32>(as_[sa + 48u]), bv, acc3);
        }
        workgroupBarrier();
    }

    let alpha = P.alpha;
    let beta = P.beta;
    for (var i = 0u; i < 4u; i++) {
        let gr = row0 + ty + 16u * i;
        if (gr >= m) {
            continue;
        }
        var acc = acc0;
        if (i == 1u) {
            acc = acc1;
        } else if (i == 2u) {
            acc = acc2;
        } else if (i == 3u) {
            acc = acc3;
        }
        for (var j = 0u; j < 4u; j++) {
            let gc = col0 + tx + 16u * j;
            if (gc >= n) {
                continue;
            }
            let idx = c0 + gr * n + gc;
            var r = alpha * acc[j];
            if (beta != 0.0) {
                r = r + beta * C[idx];
            }
            C[idx] = r;
        }
    }
}
