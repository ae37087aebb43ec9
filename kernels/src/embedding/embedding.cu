// Embedding gather and its deterministic scatter-add. The backward gets the token order sorted
// by (id, position) and the group boundaries from the host (ids are few: one per token), so
// each block owns one distinct table row and sums its tokens' rows in position order.

// out[n, :] = table[ids[n], :]   grid (N), threads over C. An id ≥ v (the table's rows) is reported
// through err and its row filled with NaN, never read from outside the table.
extern "C" __global__ void embedding_fwd(float* __restrict__ out, const float* __restrict__ table, const u32* __restrict__ ids, int c,
                                         u32 v, u32* __restrict__ err) {
    const u64 n = blockIdx.x;
    const u64 id = ids[n];
    if (id >= v) {
        if (threadIdx.x == 0) okapi_report(err, OKAPI_ERR_EMBEDDING_ID, (u32)id, n, v);
        for (int i = threadIdx.x; i < c; i += blockDim.x) out[n * c + i] = __int_as_float(0x7fc00000);
        return;
    }
    for (int i = threadIdx.x; i < c; i += blockDim.x) out[n * c + i] = table[id * c + i];
}

// dtable[id_g, :] += Σ_{n in group g, position order} dout[n, :]
// order: token indices sorted by (id, n); starts: group g = order[starts[g]..starts[g+1]]
extern "C" __global__ void embedding_bwd(float* __restrict__ dtable, const float* __restrict__ dout, const u32* __restrict__ ids,
                                         const u32* __restrict__ order, const u32* __restrict__ starts, int c) {
    const int g = blockIdx.x;
    const u32 s = starts[g], e = starts[g + 1];
    const u64 id = ids[order[s]];
    for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < c; i += gridDim.y * blockDim.x) {
        float acc = dtable[id * c + i];
        for (u32 k = s; k < e; ++k) acc += dout[(u64)order[k] * c + i];
        dtable[id * c + i] = acc;
    }
}
