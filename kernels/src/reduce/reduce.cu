// Element-wise helpers and reductions (see mod.rs for the semantics): fill, copy, scale, axpy,
// bias add and its deterministic gradient, sum of squares (two fixed passes, f64), column-sum
// finisher shared with the norm kernels' parameter gradients.

extern "C" __global__ void fill_f32(float* x, float value, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) x[i] = value;
}

extern "C" __global__ void copy_f32(float* __restrict__ dst, const float* __restrict__ src, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) dst[i] = src[i];
}

// x *= a
extern "C" __global__ void scale_f32(float* x, float a, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) x[i] *= a;
}

// y += a·x
extern "C" __global__ void axpy_f32(float* __restrict__ y, float a, const float* __restrict__ x, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) y[i] += a * x[i];
}

// x[r, :] += bias, x: (N,C)
extern "C" __global__ void bias_add_f32(float* __restrict__ x, const float* __restrict__ bias, u64 n, int c) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n * (u64)c; i += (u64)gridDim.x * blockDim.x) x[i] += bias[i % c];
}

// Column partial sums over fixed chunks of rows: part[chunk, col] = Σ_{rows of chunk} dy[row, col].
// grid (ceil(C/blockDim.x), min(chunks, 65535)): blocks stride over the chunks grid.y cannot hold;
// rows summed in order, so the result is deterministic.
extern "C" __global__ void col_partial_f32(float* __restrict__ part, const float* __restrict__ dy, int n, int c, int rows_per_chunk) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= c) return;
    const int chunks = (n + rows_per_chunk - 1) / rows_per_chunk;
    for (int chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
        const int r0 = chunk * rows_per_chunk;
        const int r1 = min(n, r0 + rows_per_chunk);
        float s = 0.0f;
        for (int r = r0; r < r1; ++r) s += dy[(u64)r * c + col];
        part[(u64)chunk * c + col] = s;
    }
}

// out[col] += Σ_chunk part[chunk, col] (in chunk order): the finisher of every deterministic
// column sum (bias_bwd, the norms' dw/db).
extern "C" __global__ void col_finish_f32(float* __restrict__ out, const float* __restrict__ part, int chunks, int c) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= c) return;
    float s = 0.0f;
    for (int k = 0; k < chunks; ++k) s += part[(u64)k * c + col];
    out[col] += s;
}

// Σ x² pass 1: a fixed grid of blocks, each a grid-stride f64 partial.
extern "C" __global__ void sum_squares_partial(double* __restrict__ part, const float* __restrict__ x, u64 n) {
    __shared__ double sh[32];
    double s = 0.0;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const double v = (double)x[i];
        s += v * v;
    }
    s = block_sum_d(s, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// Σ x² pass 2: one block sums the partials, acc[slot] = (float) total.
extern "C" __global__ void sum_squares_finish(float* __restrict__ acc, int slot, const double* __restrict__ part, int parts) {
    __shared__ double sh[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < parts; i += blockDim.x) s += part[i];
    s = block_sum_d(s, sh);
    if (threadIdx.x == 0) acc[slot] = (float)s;
}

// dst[i] = the bf16 in half (i & 1) of 32-bit word i/2 of src, as f32 (frozen weights stored in
// bf16, two per slot of an f32 buffer; see okapi_kernels::reduce::pack_bf16).
extern "C" __global__ void bf16_unpack_f32(float* __restrict__ dst, const float* __restrict__ src, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const u32 w = __float_as_uint(src[i >> 1]);
        dst[i] = __uint_as_float((i & 1) ? (w & 0xffff0000u) : (w << 16));
    }
}

// bf16 copy of an f32 buffer (the bf16 weights AdamW can keep, or any operand).
extern "C" __global__ void f32_to_bf16(u16* __restrict__ dst, const float* __restrict__ src, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) dst[i] = f2bf(src[i]);
}
