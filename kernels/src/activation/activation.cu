// SwiGLU, tanh-GELU, GeGLU and ReLU, forward and backward (all `=`), and soft-capping (in
// place), grid-stride over the elements.

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }
#define OKAPI_SQRT_2_OVER_PI 0.7978845608f
// tanh as the CPU kernel computes it: 1 − 2/(e^{2u} + 1) (saturates without NaN)
__device__ __forceinline__ float tanh_(float u) { return 1.0f - 2.0f / (expf(2.0f * u) + 1.0f); }

// out = silu(gate)·up
extern "C" __global__ void swiglu_fwd(float* __restrict__ out, const float* __restrict__ gate, const float* __restrict__ up, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float g = gate[i];
        out[i] = g * sigmoidf_(g) * up[i];
    }
}

// dgate = dout·up·silu'(gate), dup = dout·silu(gate)
extern "C" __global__ void swiglu_bwd(float* __restrict__ dgate, float* __restrict__ dup, const float* __restrict__ dout,
                                      const float* __restrict__ gate, const float* __restrict__ up, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float g = gate[i], u = up[i], d = dout[i];
        const float s = sigmoidf_(g);
        dup[i] = d * g * s;
        dgate[i] = d * u * s * (1.0f + g * (1.0f - s));
    }
}

// GELU's tanh term t = tanh(√(2/π)·x·(1 + 0.044715·x²)), then gelu(x) = x·½·(1 + t) and gelu'(x)
// from it (GeGLU's backward needs both)
__device__ __forceinline__ float gelu_t(float v) { return tanh_(OKAPI_SQRT_2_OVER_PI * v * (1.0f + 0.044715f * v * v)); }
__device__ __forceinline__ float gelu_of(float v, float t) { return v * 0.5f * (1.0f + t); }
__device__ __forceinline__ float gelu_grad_of(float v, float t) {
    return 0.5f * v * ((1.0f - t * t) * (OKAPI_SQRT_2_OVER_PI + 0.10703224f * v * v)) + 0.5f * (1.0f + t);
}

// out = gelu(x)
extern "C" __global__ void gelu_fwd(float* __restrict__ out, const float* __restrict__ x, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float v = x[i];
        out[i] = gelu_of(v, gelu_t(v));
    }
}

// dx = dout·gelu'(x)
extern "C" __global__ void gelu_bwd(float* __restrict__ dx, const float* __restrict__ dout, const float* __restrict__ x, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float v = x[i];
        dx[i] = gelu_grad_of(v, gelu_t(v)) * dout[i];
    }
}

// out = gelu(gate)·up
extern "C" __global__ void geglu_fwd(float* __restrict__ out, const float* __restrict__ gate, const float* __restrict__ up, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float g = gate[i];
        out[i] = gelu_of(g, gelu_t(g)) * up[i];
    }
}

// dgate = dout·up·gelu'(gate), dup = dout·gelu(gate)
extern "C" __global__ void geglu_bwd(float* __restrict__ dgate, float* __restrict__ dup, const float* __restrict__ dout,
                                     const float* __restrict__ gate, const float* __restrict__ up, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float g = gate[i], d = dout[i], t = gelu_t(g);
        dup[i] = d * gelu_of(g, t);
        dgate[i] = d * up[i] * gelu_grad_of(g, t);
    }
}

// x = cap·tanh(x/cap) in place (okapi_tanh: the CPU's tanh, accurate for small x too)
extern "C" __global__ void softcap_fwd(float* __restrict__ x, u64 n, float cap) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        x[i] = cap * okapi_tanh(x[i] / cap);
    }
}

// dy *= 1 − (y/cap)² in place, y = softcap_fwd's output
extern "C" __global__ void softcap_bwd(float* __restrict__ dy, const float* __restrict__ y, u64 n, float cap) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float t = y[i] / cap;
        dy[i] *= 1.0f - t * t;
    }
}

// out = max(x, 0); `v <= 0` is false for NaN, so NaN passes through (as the CPU kernel)
extern "C" __global__ void relu_fwd(float* __restrict__ out, const float* __restrict__ x, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float v = x[i];
        out[i] = v <= 0.0f ? 0.0f : v;
    }
}

// dx = 0 where x <= 0 (x = 0 included), else dout
extern "C" __global__ void relu_bwd(float* __restrict__ dx, const float* __restrict__ dout, const float* __restrict__ x, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        dx[i] = x[i] <= 0.0f ? 0.0f : dout[i];
    }
}

// The dropout mask's hash (mod.rs: `Dropout`); u32 arithmetic wraps.
__device__ __forceinline__ u32 dropout_mix(u32 x) {
    x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
    return x;
}

// out = x·scale where mix(i ^ key) >= threshold, else exactly 0 (`=`, or `+=` when accumulate).
// The product is masked through its bits: a dropped NaN/inf gives +0, and the multiply stays apart
// from the `+=` (FMUL, FSEL, FADD in the SASS for sm_80 / sm_90a: no fma, as the CPU rounds x·scale, then adds).
extern "C" __global__ void dropout(float* __restrict__ out, const float* __restrict__ x, u64 n, u32 key, u32 threshold, float scale, int accumulate) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const u32 keep = dropout_mix((u32)i ^ key) >= threshold ? 0xffffffffu : 0u;
        const float v = __uint_as_float(__float_as_uint(x[i] * scale) & keep);
        out[i] = accumulate ? out[i] + v : v;
    }
}
