// okapi CUDA prelude: prepended by the runtime to every kernels/src/<op>/<op>.cu before NVRTC
// compiles it. Self-contained (no system or toolkit headers): NVRTC's built-ins only.
// bf16 is handled as raw u16 bits (round-to-nearest-even), tensor cores through inline PTX.
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;
typedef long long i64;

#define OKAPI_IGNORE_INDEX 0xffffffffu
#define OKAPI_INF __int_as_float(0x7f800000)
#define OKAPI_FULL_MASK 0xffffffffu

// Device-side errors. Kernels that index by a token id get `err`, a buffer of OKAPI_ERR_WORDS u32
// the runtime keeps zeroed and reads back at its next synchronisation: [0] set to 1 by the first
// failing thread (atomicCAS), then [1] what failed (OKAPI_ERR_*; okapi_kernels::cuda_error_kind names them),
// [2] the bad id, [3] and [4] the row (low, high 32 bits), [5] the bound the id had to stay under.
#define OKAPI_ERR_WORDS 6
#define OKAPI_ERR_EMBEDDING_ID 1
#define OKAPI_ERR_XENT_TARGET 2
#define OKAPI_ERR_LOGPROB_TARGET 3
#define OKAPI_ERR_LOGPROB_BWD_TARGET 4
__device__ __forceinline__ void okapi_report(u32* err, u32 what, u32 id, u64 row, u32 bound) {
    if (atomicCAS(err, 0u, 1u) == 0u) {
        err[1] = what;
        err[2] = id;
        err[3] = (u32)row;
        err[4] = (u32)(row >> 32);
        err[5] = bound;
    }
}

// f32 -> bf16 bits, round to nearest even (NaN stays NaN).
__device__ __forceinline__ u16 f2bf(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}
__device__ __forceinline__ float bf2f(u16 h) { return __uint_as_float(((u32)h) << 16); }
// The value a bf16 copy of f holds, as f32.
__device__ __forceinline__ float round_bf16(float f) { return bf2f(f2bf(f)); }
// Two bf16 in one register: lo in the low half (the lower address / lower k index).
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) { return (u32)f2bf(lo) | ((u32)f2bf(hi) << 16); }

// tanh(x) as the CPU's vmath::tanh (Cephes' tanhf): an odd polynomial of |x| below 0.625 (no
// cancellation for small x, which a soft-cap c·tanh(s/c) ≈ s needs), 1 − 2/(e^{2|x|} + 1) above
// (saturating to ±1 without NaN), then x's sign. The soft-caps (activation.cu, attention.cu) use it.
__device__ __forceinline__ float okapi_tanh(float x) {
    const float a = fabsf(x), z = a * a;
    const float small = ((((-5.7049887e-3f * z + 2.063909e-2f) * z - 5.3739716e-2f) * z + 1.3331442e-1f) * z - 3.333328e-1f) * z * a + a;
    const float big = 1.0f - 2.0f / (expf(2.0f * a) + 1.0f);
    return copysignf(a < 0.625f ? small : big, x);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(OKAPI_FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(OKAPI_FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(OKAPI_FULL_MASK, v, o));
    return v;
}

// Block-wide reductions (blockDim.x a multiple of 32, ≤ 1024); every thread gets the result.
// Deterministic: a fixed tree for a fixed block size. `sh` holds ≥ 32 elements.
__device__ __forceinline__ double block_sum_d(double v, double* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    double r = lane < nw ? sh[lane] : 0.0;
    r = warp_sum_d(r);
    return r;
}
__device__ __forceinline__ float block_sum(float v, float* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float r = lane < nw ? sh[lane] : 0.0f;
    return warp_sum(r);
}
__device__ __forceinline__ float block_max(float v, float* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float r = lane < nw ? sh[lane] : -OKAPI_INF;
    return warp_max(r);
}
