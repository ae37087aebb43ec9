// Fused AdamW on fp32 master weights (torch semantics, see mod.rs). The step's scalars
// (decay, lr/bc1, √bc2) come from the host in f64 → f32, as the CPU kernel computes them.
// When p_bf16 is non-null the updated weights are also written as a bf16 copy.
extern "C" __global__ void adamw_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
                                     u16* __restrict__ p_bf16, u64 n, float decay, float step_size, float bc2_sqrt,
                                     float beta1, float beta2, float eps, float grad_scale) {
    const float b1w = 1.0f - beta1, b2w = 1.0f - beta2;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float gi = g[i] * grad_scale;
        float pi = p[i] * decay;
        float mi = m[i];
        mi += b1w * (gi - mi);
        float vi = v[i] * beta2 + b2w * gi * gi;
        // IEEE sqrt and division, as the CPU loop (no fast math)
        const float denom = __fsqrt_rn(vi) / bc2_sqrt + eps;
        pi += -step_size * __fdiv_rn(mi, denom);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
        if (p_bf16) p_bf16[i] = f2bf(pi);
    }
}
