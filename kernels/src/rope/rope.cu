// RoPE in HF's rotate-half layout, in place. sign = +1 forward, −1 backward (Rᵀ).
// Angles as the CPU kernel: a = (float)pos · inv_freq[i] in f32, precise cos/sin.
// x: (N, H, D); one thread per (row, head, pair i < D/2).
extern "C" __global__ void rope(float* __restrict__ x, const u32* __restrict__ positions, const float* __restrict__ inv_freq,
                                int n, int n_heads, int head_dim, float sign) {
    const int half = head_dim / 2;
    const u64 total = (u64)n * n_heads * half;
    for (u64 t = blockIdx.x * (u64)blockDim.x + threadIdx.x; t < total; t += (u64)gridDim.x * blockDim.x) {
        const int i = (int)(t % half);
        const u64 rh = t / half;  // row·H + head
        const u64 row = rh / n_heads;
        const float a = (float)positions[row] * inv_freq[i];
        float s, c;
        sincosf(a, &s, &c);
        s *= sign;
        float* p = x + rh * head_dim;
        const float x1 = p[i], x2 = p[i + half];
        p[i] = x1 * c - x2 * s;
        p[i + half] = x2 * c + x1 * s;
    }
}
