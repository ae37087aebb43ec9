// Fused cross-entropy (forward + backward in place on the logits) and token log-probs (+bwd).
// One block per row; IGNORE_INDEX (u32::MAX) rows give 0 and a zero gradient. Any other target ≥ v
// is reported through err (see the prelude): its row gets a NaN loss / log-prob and a zero
// gradient, and the runtime fails at its next synchronisation.

// logits ← coef·(softmax − onehot(target)), losses[n] = lse − logit[target]
extern "C" __global__ void xent_fwd_bwd(float* __restrict__ logits, float* __restrict__ losses, const u32* __restrict__ targets,
                                        const float* __restrict__ coef, int v, u32* __restrict__ err) {
    __shared__ float shf[32];
    __shared__ double shd[32];
    const u64 row = blockIdx.x;
    float* r = logits + row * v;
    const u32 t = targets[row];
    if (t == OKAPI_IGNORE_INDEX || t >= (u32)v) {
        const bool bad = t != OKAPI_IGNORE_INDEX;
        if (bad && threadIdx.x == 0) okapi_report(err, OKAPI_ERR_XENT_TARGET, t, row, (u32)v);
        for (int i = threadIdx.x; i < v; i += blockDim.x) r[i] = 0.0f;
        if (threadIdx.x == 0) losses[row] = bad ? __int_as_float(0x7fc00000) : 0.0f;
        return;
    }
    const float target_logit = r[t];
    float m = -OKAPI_INF;
    for (int i = threadIdx.x; i < v; i += blockDim.x) m = fmaxf(m, r[i]);
    m = block_max(m, shf);
    double s = 0.0;
    for (int i = threadIdx.x; i < v; i += blockDim.x) {
        const float e = expf(r[i] - m);
        r[i] = e;
        s += (double)e;
    }
    s = block_sum_d(s, shd);
    const float k = coef[row];
    const float sc = (float)((double)k / s);
    if (threadIdx.x == 0) losses[row] = m + (float)log(s) - target_logit;
    for (int i = threadIdx.x; i < v; i += blockDim.x) r[i] *= sc;
    __syncthreads();
    if (threadIdx.x == 0) r[t] -= k;
}

// logp[n] = logit[target] − lse; greedy[n] = 1 when the target is the first argmax.
extern "C" __global__ void token_logprobs(float* __restrict__ logp, float* __restrict__ greedy, const float* __restrict__ logits,
                                          const u32* __restrict__ targets, int v, u32* __restrict__ err) {
    __shared__ float shf[32];
    __shared__ double shd[32];
    __shared__ int shi[32];
    const u64 row = blockIdx.x;
    const float* r = logits + row * v;
    const u32 t = targets[row];
    if (t == OKAPI_IGNORE_INDEX || t >= (u32)v) {
        const bool bad = t != OKAPI_IGNORE_INDEX;
        if (threadIdx.x == 0) {
            if (bad) okapi_report(err, OKAPI_ERR_LOGPROB_TARGET, t, row, (u32)v);
            logp[row] = bad ? __int_as_float(0x7fc00000) : 0.0f;
            greedy[row] = 0.0f;
        }
        return;
    }
    float m = -OKAPI_INF;
    for (int i = threadIdx.x; i < v; i += blockDim.x) m = fmaxf(m, r[i]);
    m = block_max(m, shf);
    double s = 0.0;
    int first = 0x7fffffff;
    for (int i = threadIdx.x; i < v; i += blockDim.x) {
        const float x = r[i];
        s += (double)expf(x - m);
        if (x == m && i < first) first = i;
    }
    s = block_sum_d(s, shd);
    // first index equal to the max: block min
    for (int o = 16; o > 0; o >>= 1) first = min(first, __shfl_xor_sync(OKAPI_FULL_MASK, first, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) shi[threadIdx.x >> 5] = first;
    __syncthreads();
    if (threadIdx.x == 0) {
        int a = 0x7fffffff;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) a = min(a, shi[w]);
        if (a == 0x7fffffff) a = 0;
        logp[row] = r[t] - (m + (float)log(s));
        greedy[row] = (a == (int)t) ? 1.0f : 0.0f;
    }
}

// dlogits = coef·(onehot(target) − softmax)  (`=`)
extern "C" __global__ void token_logprobs_bwd(float* __restrict__ dlogits, const float* __restrict__ logits, const u32* __restrict__ targets,
                                              const float* __restrict__ coef, int v, u32* __restrict__ err) {
    __shared__ float shf[32];
    __shared__ double shd[32];
    const u64 row = blockIdx.x;
    const float* r = logits + row * v;
    float* d = dlogits + row * v;
    const u32 t = targets[row];
    if (t == OKAPI_IGNORE_INDEX || t >= (u32)v) {
        if (t != OKAPI_IGNORE_INDEX && threadIdx.x == 0) okapi_report(err, OKAPI_ERR_LOGPROB_BWD_TARGET, t, row, (u32)v);
        for (int i = threadIdx.x; i < v; i += blockDim.x) d[i] = 0.0f;
        return;
    }
    float m = -OKAPI_INF;
    for (int i = threadIdx.x; i < v; i += blockDim.x) m = fmaxf(m, r[i]);
    m = block_max(m, shf);
    double s = 0.0;
    for (int i = threadIdx.x; i < v; i += blockDim.x) s += (double)expf(r[i] - m);
    s = block_sum_d(s, shd);
    const float lse = m + (float)log(s);
    const float k = coef[row];
    for (int i = threadIdx.x; i < v; i += blockDim.x) d[i] = -k * expf(r[i] - lse);
    __syncthreads();
    if (threadIdx.x == 0) d[t] += k;
}
