// Row softmax forward (with temperature) and backward (`=`). One block per row.

extern "C" __global__ void softmax_fwd(float* __restrict__ out, const float* __restrict__ x, int v, float temperature) {
    __shared__ float shf[32];
    __shared__ double shd[32];
    const u64 row = blockIdx.x;
    const float* xr = x + row * v;
    float* o = out + row * v;
    const float inv_t = 1.0f / temperature;
    float m = -OKAPI_INF;
    for (int i = threadIdx.x; i < v; i += blockDim.x) m = fmaxf(m, xr[i]);
    m = block_max(m, shf) * inv_t;
    double s = 0.0;
    for (int i = threadIdx.x; i < v; i += blockDim.x) {
        const float e = expf(xr[i] * inv_t - m);
        o[i] = e;
        s += (double)e;
    }
    s = block_sum_d(s, shd);
    const float r = (float)(1.0 / s);
    for (int i = threadIdx.x; i < v; i += blockDim.x) o[i] *= r;
}

// dx = y ⊙ (dy − Σ y·dy)
extern "C" __global__ void softmax_bwd(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ y, int v) {
    __shared__ double shd[32];
    const u64 row = blockIdx.x;
    const float* g = dy + row * v;
    const float* p = y + row * v;
    double s = 0.0;
    for (int i = threadIdx.x; i < v; i += blockDim.x) s += (double)(g[i] * p[i]);
    const float dot = (float)block_sum_d(s, shd);
    float* d = dx + row * v;
    for (int i = threadIdx.x; i < v; i += blockDim.x) d[i] = p[i] * (g[i] - dot);
}
