// C = alpha·op(A)·op(B) + beta·C, row-major, strided batches; beta = 0 never reads C.
// op(A) is (M,K): stored (M,K), or (K,M) when trans_a. op(B) is (K,N): stored (K,N), or (N,K)
// when trans_b. Hand-written, no cuBLAS:
//   matmul_f32       exact mode: 64×64 tiles in shared memory, 4×4 outputs per thread, fp32 FMA.
//   matmul_bf16_mma  bf16 mode (sm_80+): operands rounded to bf16 as the tiles are staged in
//                    shared memory, tensor cores through mma.sync.m16n8k16, fp32 accumulation.
// grid (ceil(N/64), min(ceil(M/64), 65535), min(batch, 65535)): a block strides over the M tiles
// and batches that grid.y / grid.z (at most 65 535 each) cannot hold, so any M and batch launch.

#define MM_TM 64
#define MM_TN 64
#define MM_TK 16

__device__ __forceinline__ float load_a(const float* A, int M, int K, int trans_a, int gm, int gk) {
    if (gm >= M || gk >= K) return 0.0f;
    return trans_a ? A[(u64)gk * M + gm] : A[(u64)gm * K + gk];
}
__device__ __forceinline__ float load_b(const float* B, int N, int K, int trans_b, int gk, int gn) {
    if (gn >= N || gk >= K) return 0.0f;
    return trans_b ? B[(u64)gn * K + gk] : B[(u64)gk * N + gn];
}

// One 64×64 tile of C (rows from m0, columns from n0) of one batch; block 256.
__device__ void matmul_f32_tile(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B, int M, int N, int K,
                                int trans_a, int trans_b, float alpha, float beta, int m0, int n0,
                                float (*__restrict__ As)[MM_TM + 4], float (*__restrict__ Bs)[MM_TN + 4]) {
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += MM_TK) {
        // coalesced along whichever index is contiguous in memory
        for (int e = tid; e < MM_TM * MM_TK; e += 256) {
            int mm, kk;
            if (trans_a) { kk = e / MM_TM; mm = e % MM_TM; } else { mm = e / MM_TK; kk = e % MM_TK; }
            As[kk][mm] = load_a(A, M, K, trans_a, m0 + mm, k0 + kk);
        }
        for (int e = tid; e < MM_TN * MM_TK; e += 256) {
            int nn, kk;
            if (trans_b) { nn = e / MM_TK; kk = e % MM_TK; } else { kk = e / MM_TN; nn = e % MM_TN; }
            Bs[kk][nn] = load_b(B, N, K, trans_b, k0 + kk, n0 + nn);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < MM_TK; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = As[kk][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int gm = m0 + ty * 4 + i;
        if (gm >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int gn = n0 + tx * 4 + j;
            if (gn >= N) continue;
            float* c = C + (u64)gm * N + gn;
            *c = beta == 0.0f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * *c;
        }
    }
}

// grid as above, block 256
extern "C" __global__ void __launch_bounds__(256) matmul_f32(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B,
                                                             int M, int N, int K, int trans_a, int trans_b, float alpha, float beta,
                                                             u64 stride_a, u64 stride_b, u64 stride_c, int batch) {
    __shared__ float As[MM_TK][MM_TM + 4];  // As[k][m]
    __shared__ float Bs[MM_TK][MM_TN + 4];  // Bs[k][n]
    const int m_tiles = (M + MM_TM - 1) / MM_TM;
    // each tile ends on a __syncthreads after its last shared-memory read: no barrier needed here
    for (int z = blockIdx.z; z < batch; z += gridDim.z)
        for (int mt = blockIdx.y; mt < m_tiles; mt += gridDim.y)
            matmul_f32_tile(C + (u64)z * stride_c, A + (u64)z * stride_a, B + (u64)z * stride_b, M, N, K, trans_a, trans_b, alpha, beta,
                            mt * MM_TM, blockIdx.x * MM_TN, As, Bs);
}

#define MB_TM 64
#define MB_TN 64
#define MB_TK 32
#define MB_LD (MB_TK + 8)  // padded row (u16): conflict-free fragment loads

__device__ __forceinline__ void mma_bf16_16816(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    __trap();  // the runtime picks matmul_f32 below sm_80
#endif
}

// One 64×64 tile of C (rows from m0, columns from n0) of one batch; block 128 = 4 warps in 2×2,
// each warp a 32×32 tile of 2×4 m16n8 fragments.
__device__ void matmul_bf16_mma_tile(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B, int M, int N, int K,
                                     int trans_a, int trans_b, float alpha, float beta, int m0, int n0,
                                     u16 (*__restrict__ As)[MB_LD], u16 (*__restrict__ Bs)[MB_LD]) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 1, wn = warp & 1;
    const int g = lane >> 2, t = lane & 3;
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += MB_TK) {
        for (int e = tid; e < MB_TM * MB_TK; e += 128) {
            int mm, kk;
            if (trans_a) { kk = e / MB_TM; mm = e % MB_TM; } else { mm = e / MB_TK; kk = e % MB_TK; }
            As[mm][kk] = f2bf(load_a(A, M, K, trans_a, m0 + mm, k0 + kk));
        }
        for (int e = tid; e < MB_TN * MB_TK; e += 128) {
            int nn, kk;
            if (trans_b) { nn = e / MB_TK; kk = e % MB_TK; } else { kk = e / MB_TN; nn = e % MB_TN; }
            Bs[nn][kk] = f2bf(load_b(B, N, K, trans_b, k0 + kk, n0 + nn));
        }
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < MB_TK; ks += 16) {
            u32 a[2][4], b[4][2];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                const int rm = wm * 32 + mi * 16;
                a[mi][0] = *(const u32*)&As[rm + g][ks + 2 * t];
                a[mi][1] = *(const u32*)&As[rm + g + 8][ks + 2 * t];
                a[mi][2] = *(const u32*)&As[rm + g][ks + 2 * t + 8];
                a[mi][3] = *(const u32*)&As[rm + g + 8][ks + 2 * t + 8];
            }
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                const int cn = wn * 32 + ni * 8;
                b[ni][0] = *(const u32*)&Bs[cn + g][ks + 2 * t];
                b[ni][1] = *(const u32*)&Bs[cn + g][ks + 2 * t + 8];
            }
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) mma_bf16_16816(acc[mi][ni], a[mi][0], a[mi][1], a[mi][2], a[mi][3], b[ni][0], b[ni][1]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int gm = m0 + wm * 32 + mi * 16 + g + (r >= 2 ? 8 : 0);
                const int gn = n0 + wn * 32 + ni * 8 + 2 * t + (r & 1);
                if (gm < M && gn < N) {
                    float* c = C + (u64)gm * N + gn;
                    *c = beta == 0.0f ? alpha * acc[mi][ni][r] : alpha * acc[mi][ni][r] + beta * *c;
                }
            }
}

// grid as above, block 128
extern "C" __global__ void __launch_bounds__(128) matmul_bf16_mma(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B,
                                                                  int M, int N, int K, int trans_a, int trans_b, float alpha, float beta,
                                                                  u64 stride_a, u64 stride_b, u64 stride_c, int batch) {
    __shared__ __align__(16) u16 As[MB_TM][MB_LD];  // [m][k]
    __shared__ __align__(16) u16 Bs[MB_TN][MB_LD];  // [n][k]
    const int m_tiles = (M + MB_TM - 1) / MB_TM;
    for (int z = blockIdx.z; z < batch; z += gridDim.z)
        for (int mt = blockIdx.y; mt < m_tiles; mt += gridDim.y)
            matmul_bf16_mma_tile(C + (u64)z * stride_c, A + (u64)z * stride_a, B + (u64)z * stride_b, M, N, K, trans_a, trans_b, alpha, beta,
                                 mt * MB_TM, blockIdx.x * MB_TN, As, Bs);
}
