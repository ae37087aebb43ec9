// Flash attention (see mod.rs for layouts and masking): q, out (B,Tq,Hq,D), k, v (B,Tk,Hkv,D),
// lse (B,Tq,Hq). Query row i of sequence b sits at p = q_pos0[b] + i and sees keys
// j < min(kv_len[b], Tk) (and j ≤ p when causal; with window W > 0 also p − j < W): a range
// [lo, hi) whose ends grow with i. Score scale·q·k_j + slope_h·j; with a soft-cap c > 0 the first
// term is c·tanh(scale·q·k_j / c), and the backward multiplies dS by 1 − tanh² (att_score).
// D ≤ 256. `bf16` = 1 rounds q, k, v, dout and the probabilities to bf16 (fp32 accumulation).
//   attn_fwd       online softmax over key tiles of 32 (one lane per key), lse saved (`=`).
//   attn_bwd_dot   D_i = dout_i·out_i per row.
//   attn_bwd_dkdv  per key tile: dK, dV (`=`) summed over the group's heads and query rows in a
//                  fixed order (deterministic, no atomics).
//   attn_bwd_dq    per query tile: dQ (`=`).
//   kv_write       cache[b, pos[b]+i, :] = new[b, i, :] for pos[b]+i < Tcap.

#define ATT_BQ 16     // query rows per block: 4 warps × 4 rows
#define ATT_RPW 4     // rows per warp
#define ATT_BK 32     // keys per tile (one per lane)
#define ATT_MAXD 256
#define ATT_DPL (ATT_MAXD / 32)  // output columns per lane

__device__ __forceinline__ int att_visible(int causal, int kvl, int p0, int i) {
    return causal ? min(kvl, p0 + i + 1) : kvl;
}
// The first key row i sees (hi = att_visible(…)); 0 without a window, never past hi.
__device__ __forceinline__ int att_first(int window, int hi, int p0, int i) {
    return window > 0 ? min(max(0, p0 + i + 1 - window), hi) : 0;
}
__device__ __forceinline__ float att_rnd(float x, int bf16) { return bf16 ? round_bf16(x) : x; }
// The score of key j from dot = q·k_j, and in *dcap its soft-cap factor ∂score/∂(scale·dot):
// 1 − tanh² with a cap (softcap > 0), else 1 and the uncapped expression as it always was.
__device__ __forceinline__ float att_score(float dot, float scale, float softcap, float slope, int j, float* dcap) {
    if (softcap > 0.0f) {
        const float t = okapi_tanh(scale * dot / softcap);
        *dcap = 1.0f - t * t;
        return softcap * t + slope * (float)j;
    }
    *dcap = 1.0f;
    return scale * dot + slope * (float)j;
}

// One (sequence b, head h, query tile from row i0) of attn_fwd.
__device__ void attn_fwd_tile(float* __restrict__ out, float* __restrict__ lse, const float* __restrict__ q,
                                                           const float* __restrict__ k, const float* __restrict__ v,
                                                           const u32* __restrict__ q_pos0, const u32* __restrict__ kv_len,
                                                           const float* __restrict__ alibi, int tq, int tk, int hq, int hkv, int d,
                                                           float scale, float softcap, int causal, int window, int bf16, int b, int h, int i0) {
    extern __shared__ float sm[];
    float* qs = sm;                            // [16][d]
    float* ks = qs + ATT_BQ * d;               // [32][d+1]
    float* vs = ks + ATT_BK * (d + 1);         // [32][d+1]
    const int g = h / (hq / hkv);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int kvl = min((int)kv_len[b], tk), p0 = (int)q_pos0[b];
    const int rows = min(ATT_BQ, tq - i0);
    const int nk_max = att_visible(causal, kvl, p0, i0 + rows - 1);
    const int lo_min = att_first(window, att_visible(causal, kvl, p0, i0), p0, i0);
    const float slope = alibi ? alibi[h] : 0.0f;
    for (int e = tid; e < ATT_BQ * d; e += 128) {
        const int r = e / d, c = e % d;
        qs[e] = (r < rows) ? att_rnd(q[(((u64)b * tq + i0 + r) * hq + h) * d + c], bf16) : 0.0f;
    }
    float m[ATT_RPW], l[ATT_RPW], o[ATT_RPW][ATT_DPL];
#pragma unroll
    for (int rr = 0; rr < ATT_RPW; ++rr) {
        m[rr] = -OKAPI_INF;
        l[rr] = 0.0f;
#pragma unroll
        for (int x = 0; x < ATT_DPL; ++x) o[rr][x] = 0.0f;
    }
    for (int j0 = lo_min; j0 < nk_max; j0 += ATT_BK) {
        __syncthreads();
        for (int e = tid; e < ATT_BK * d; e += 128) {
            const int jj = e / d, c = e % d, j = j0 + jj;
            const u64 src = (((u64)b * tk + j) * hkv + g) * d + c;
            ks[jj * (d + 1) + c] = j < nk_max ? att_rnd(k[src], bf16) : 0.0f;
            vs[jj * (d + 1) + c] = j < nk_max ? att_rnd(v[src], bf16) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < ATT_RPW; ++rr) {
            const int r = warp * ATT_RPW + rr, i = i0 + r;
            if (i >= tq) continue;
            const int nv = att_visible(causal, kvl, p0, i);
            const int lo = att_first(window, nv, p0, i);
            const int j = j0 + lane;
            const bool seen = j >= lo && j < nv;
            float s = -OKAPI_INF;
            if (seen) {
                float dot = 0.0f;
                const float* qr = qs + r * d;
                const float* kr = ks + lane * (d + 1);
                for (int c = 0; c < d; ++c) dot = fmaf(qr[c], kr[c], dot);
                float dcap_unused;  // the forward needs no derivative
                s = att_score(dot, scale, softcap, slope, j, &dcap_unused);
            }
            const float tmax = warp_max(s);
            if (tmax == -OKAPI_INF) continue;  // no visible key in this tile for this row
            const float m_new = fmaxf(m[rr], tmax);
            const float corr = expf(m[rr] - m_new);  // m = −inf at first: 0
            const float p = seen ? expf(s - m_new) : 0.0f;
            l[rr] = l[rr] * corr + warp_sum(p);
            const float pv = att_rnd(p, bf16);
#pragma unroll
            for (int x = 0; x < ATT_DPL; ++x) o[rr][x] *= corr;
            const int nj = min(ATT_BK, nv - j0);
            for (int jj = max(0, lo - j0); jj < nj; ++jj) {
                const float pj = __shfl_sync(OKAPI_FULL_MASK, pv, jj);
                const float* vr = vs + jj * (d + 1);
#pragma unroll
                for (int x = 0; x < ATT_DPL; ++x) {
                    const int c = lane + 32 * x;
                    if (c < d) o[rr][x] = fmaf(pj, vr[c], o[rr][x]);
                }
            }
            m[rr] = m_new;
        }
    }
#pragma unroll
    for (int rr = 0; rr < ATT_RPW; ++rr) {
        const int i = i0 + warp * ATT_RPW + rr;
        if (i >= tq) continue;
        const u64 row = ((u64)b * tq + i) * hq + h;
        const bool empty = l[rr] == 0.0f;
        const float inv = empty ? 0.0f : 1.0f / l[rr];
#pragma unroll
        for (int x = 0; x < ATT_DPL; ++x) {
            const int c = lane + 32 * x;
            if (c < d) out[row * d + c] = o[rr][x] * inv;
        }
        if (lane == 0) lse[row] = empty ? -OKAPI_INF : m[rr] + logf(l[rr]);
    }
}

// grid (ceil(Tq/16), min(Hq, 65535), min(B, 65535)), block 128, dynamic smem (16·D + 2·32·(D+1))
// floats. Blocks stride over the heads and sequences that grid.y / grid.z cannot hold.
extern "C" __global__ void __launch_bounds__(128) attn_fwd(float* __restrict__ out, float* __restrict__ lse, const float* __restrict__ q,
                                                           const float* __restrict__ k, const float* __restrict__ v,
                                                           const u32* __restrict__ q_pos0, const u32* __restrict__ kv_len,
                                                           const float* __restrict__ alibi, int tq, int tk, int hq, int hkv, int d,
                                                           float scale, float softcap, int causal, int window, int bf16, int batch) {
    for (int b = blockIdx.z; b < batch; b += gridDim.z)
        for (int h = blockIdx.y; h < hq; h += gridDim.y) {
            __syncthreads();  // the previous tile's last reads of shared memory are done
            attn_fwd_tile(out, lse, q, k, v, q_pos0, kv_len, alibi, tq, tk, hq, hkv, d, scale, softcap, causal, window, bf16, b, h, blockIdx.x * ATT_BQ);
        }
}

// D_i = Σ_c dout·out over rows (B·Tq·Hq rows of D); one warp per row, grid-stride.
extern "C" __global__ void attn_bwd_dot(float* __restrict__ dsum, const float* __restrict__ dout, const float* __restrict__ out, u64 rows, int d) {
    const int lane = threadIdx.x & 31;
    const u64 warps = (u64)gridDim.x * (blockDim.x >> 5);
    for (u64 r = blockIdx.x * (u64)(blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
        float s = 0.0f;
        for (int c = lane; c < d; c += 32) s = fmaf(dout[r * d + c], out[r * d + c], s);
        s = warp_sum(s);
        if (lane == 0) dsum[r] = s;
    }
}

#define ATT_QB 8  // query rows per step of attn_bwd_dkdv

// One (sequence b, KV head g, key tile from j0) of attn_bwd_dkdv.
__device__ void attn_bwd_dkdv_tile(float* __restrict__ dk, float* __restrict__ dv, const float* __restrict__ dout,
                                                                const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                                                                const float* __restrict__ lse, const float* __restrict__ dsum,
                                                                const u32* __restrict__ q_pos0, const u32* __restrict__ kv_len,
                                                                const float* __restrict__ alibi, int tq, int tk, int hq, int hkv, int d,
                                                                float scale, float softcap, int causal, int window, int bf16, int bk, int b, int g, int j0) {
    extern __shared__ float sm[];
    float* ks = sm;                      // [bk][d+1]
    float* vs = ks + bk * (d + 1);       // [bk][d+1]
    float* dks = vs + bk * (d + 1);      // [bk][d]  accumulators, each element owned by one thread
    float* dvs = dks + bk * d;           // [bk][d]
    float* qs = dvs + bk * d;            // [8][d]
    float* dos = qs + ATT_QB * d;        // [8][d]
    float* ps = dos + ATT_QB * d;        // [8][bk]
    float* dss = ps + ATT_QB * bk;       // [8][bk]
    const int rep = hq / hkv;
    const int tid = threadIdx.x;
    const int kvl = min((int)kv_len[b], tk), p0 = (int)q_pos0[b];
    for (int e = tid; e < bk * d; e += 128) {
        const int jj = e / d, c = e % d, j = j0 + jj;
        const u64 src = (((u64)b * tk + j) * hkv + g) * d + c;
        ks[jj * (d + 1) + c] = j < kvl ? att_rnd(k[src], bf16) : 0.0f;
        vs[jj * (d + 1) + c] = j < kvl ? att_rnd(v[src], bf16) : 0.0f;
        dks[e] = 0.0f;
        dvs[e] = 0.0f;
    }
    // the first query row that sees key j0: under a causal mask p0 + i ≥ j0
    const int i_first = (j0 >= kvl) ? tq : (causal ? max(0, j0 - p0) : 0);
    // rows whose window has passed the tile's last key jl see none of it: p0 + i − jl < W, i.e.
    // i < jl + (W − p0), compared before adding (W may be as large as INT_MAX)
    const int jl = j0 + bk - 1, w_p0 = window - p0;
    const int i_end = (window == 0 || w_p0 > tq - jl) ? tq : max(0, jl + w_p0);
    for (int h = g * rep; h < (g + 1) * rep; ++h) {
        const float slope = alibi ? alibi[h] : 0.0f;
        for (int ib = i_first; ib < i_end; ib += ATT_QB) {
            __syncthreads();
            for (int e = tid; e < ATT_QB * d; e += 128) {
                const int r = e / d, c = e % d, i = ib + r;
                const u64 src = (((u64)b * tq + i) * hq + h) * d + c;
                qs[e] = i < tq ? att_rnd(q[src], bf16) : 0.0f;
                dos[e] = i < tq ? att_rnd(dout[src], bf16) : 0.0f;
            }
            __syncthreads();
            for (int e = tid; e < ATT_QB * bk; e += 128) {
                const int r = e / bk, jj = e % bk, i = ib + r, j = j0 + jj;
                float p = 0.0f, ds = 0.0f;
                const int nv = i < tq ? att_visible(causal, kvl, p0, i) : 0;
                if (j < nv && j >= att_first(window, nv, p0, i)) {
                    const u64 row = ((u64)b * tq + i) * hq + h;
                    const float* qr = qs + r * d;
                    const float* dr = dos + r * d;
                    const float* kr = ks + jj * (d + 1);
                    const float* vr = vs + jj * (d + 1);
                    float s = 0.0f, dp = 0.0f;
                    for (int c = 0; c < d; ++c) {
                        s = fmaf(qr[c], kr[c], s);
                        dp = fmaf(dr[c], vr[c], dp);
                    }
                    float dcap;
                    s = att_score(s, scale, softcap, slope, j, &dcap);
                    p = expf(s - lse[row]);
                    ds = p * (dp - dsum[row]) * scale * dcap;
                }
                ps[e] = att_rnd(p, bf16);
                dss[e] = att_rnd(ds, bf16);
            }
            __syncthreads();
            for (int e = tid; e < bk * d; e += 128) {
                const int jj = e / d, c = e % d;
                float av = dvs[e], ak = dks[e];
#pragma unroll
                for (int r = 0; r < ATT_QB; ++r) {
                    av = fmaf(ps[r * bk + jj], dos[r * d + c], av);
                    ak = fmaf(dss[r * bk + jj], qs[r * d + c], ak);
                }
                dvs[e] = av;
                dks[e] = ak;
            }
        }
    }
    __syncthreads();
    for (int e = tid; e < bk * d; e += 128) {
        const int jj = e / d, c = e % d, j = j0 + jj;
        if (j < tk) {
            const u64 dst = (((u64)b * tk + j) * hkv + g) * d + c;
            dk[dst] = dks[e];
            dv[dst] = dvs[e];
        }
    }
}

// grid (ceil(Tk/bk), min(Hkv, 65535), min(B, 65535)), block 128, bk = 32 (D ≤ 128) or 16; dynamic
// smem floats: 2·bk·(D+1) + 2·bk·D + 2·8·D + 2·8·bk. Blocks stride over y and z as attn_fwd.
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dkdv(float* __restrict__ dk, float* __restrict__ dv, const float* __restrict__ dout,
                                                                const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                                                                const float* __restrict__ lse, const float* __restrict__ dsum,
                                                                const u32* __restrict__ q_pos0, const u32* __restrict__ kv_len,
                                                                const float* __restrict__ alibi, int tq, int tk, int hq, int hkv, int d,
                                                                float scale, float softcap, int causal, int window, int bf16, int bk, int batch) {
    for (int b = blockIdx.z; b < batch; b += gridDim.z)
        for (int g = blockIdx.y; g < hkv; g += gridDim.y) {
            __syncthreads();  // the previous tile's last reads of shared memory are done
            attn_bwd_dkdv_tile(dk, dv, dout, q, k, v, lse, dsum, q_pos0, kv_len, alibi, tq, tk, hq, hkv, d, scale, softcap, causal, window, bf16, bk, b, g, blockIdx.x * bk);
        }
}

// One (sequence b, head h, query tile from row i0) of attn_bwd_dq.
__device__ void attn_bwd_dq_tile(float* __restrict__ dq, const float* __restrict__ dout, const float* __restrict__ q,
                                                              const float* __restrict__ k, const float* __restrict__ v, const float* __restrict__ lse,
                                                              const float* __restrict__ dsum, const u32* __restrict__ q_pos0,
                                                              const u32* __restrict__ kv_len, const float* __restrict__ alibi, int tq, int tk,
                                                              int hq, int hkv, int d, float scale, float softcap, int causal, int window, int bf16, int b, int h, int i0) {
    extern __shared__ float sm[];
    float* qs = sm;                        // [16][d]
    float* dos = qs + ATT_BQ * d;          // [16][d]
    float* ks = dos + ATT_BQ * d;          // [32][d+1]
    float* vs = ks + ATT_BK * (d + 1);     // [32][d+1]
    const int g = h / (hq / hkv);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int kvl = min((int)kv_len[b], tk), p0 = (int)q_pos0[b];
    const int rows = min(ATT_BQ, tq - i0);
    const int nk_max = att_visible(causal, kvl, p0, i0 + rows - 1);
    const int lo_min = att_first(window, att_visible(causal, kvl, p0, i0), p0, i0);
    const float slope = alibi ? alibi[h] : 0.0f;
    for (int e = tid; e < ATT_BQ * d; e += 128) {
        const int r = e / d, c = e % d;
        const u64 src = (((u64)b * tq + i0 + r) * hq + h) * d + c;
        qs[e] = r < rows ? att_rnd(q[src], bf16) : 0.0f;
        dos[e] = r < rows ? att_rnd(dout[src], bf16) : 0.0f;
    }
    float acc[ATT_RPW][ATT_DPL];
    float lse_r[ATT_RPW], dsum_r[ATT_RPW];
#pragma unroll
    for (int rr = 0; rr < ATT_RPW; ++rr) {
        const int i = i0 + warp * ATT_RPW + rr;
        const u64 row = ((u64)b * tq + min(i, tq - 1)) * hq + h;
        lse_r[rr] = lse[row];
        dsum_r[rr] = dsum[row];
#pragma unroll
        for (int x = 0; x < ATT_DPL; ++x) acc[rr][x] = 0.0f;
    }
    for (int j0 = lo_min; j0 < nk_max; j0 += ATT_BK) {
        __syncthreads();
        for (int e = tid; e < ATT_BK * d; e += 128) {
            const int jj = e / d, c = e % d, j = j0 + jj;
            const u64 src = (((u64)b * tk + j) * hkv + g) * d + c;
            ks[jj * (d + 1) + c] = j < nk_max ? att_rnd(k[src], bf16) : 0.0f;
            vs[jj * (d + 1) + c] = j < nk_max ? att_rnd(v[src], bf16) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < ATT_RPW; ++rr) {
            const int r = warp * ATT_RPW + rr, i = i0 + r;
            if (i >= tq) continue;
            const int nv = att_visible(causal, kvl, p0, i);
            const int lo = att_first(window, nv, p0, i);
            if (nv <= j0 || lo >= j0 + ATT_BK) continue;  // warp-uniform: one row per warp
            const int j = j0 + lane;
            float ds = 0.0f;
            if (j >= lo && j < nv) {
                const float* qr = qs + r * d;
                const float* dr = dos + r * d;
                const float* kr = ks + lane * (d + 1);
                const float* vr = vs + lane * (d + 1);
                float s = 0.0f, dp = 0.0f;
                for (int c = 0; c < d; ++c) {
                    s = fmaf(qr[c], kr[c], s);
                    dp = fmaf(dr[c], vr[c], dp);
                }
                float dcap;
                s = att_score(s, scale, softcap, slope, j, &dcap);
                const float p = expf(s - lse_r[rr]);
                ds = att_rnd(p * (dp - dsum_r[rr]) * scale * dcap, bf16);
            }
            const int nj = min(ATT_BK, nv - j0);
            for (int jj = max(0, lo - j0); jj < nj; ++jj) {
                const float dsj = __shfl_sync(OKAPI_FULL_MASK, ds, jj);
                const float* kr = ks + jj * (d + 1);
#pragma unroll
                for (int x = 0; x < ATT_DPL; ++x) {
                    const int c = lane + 32 * x;
                    if (c < d) acc[rr][x] = fmaf(dsj, kr[c], acc[rr][x]);
                }
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < ATT_RPW; ++rr) {
        const int i = i0 + warp * ATT_RPW + rr;
        if (i >= tq) continue;
        const u64 row = ((u64)b * tq + i) * hq + h;
#pragma unroll
        for (int x = 0; x < ATT_DPL; ++x) {
            const int c = lane + 32 * x;
            if (c < d) dq[row * d + c] = acc[rr][x];
        }
    }
}

// grid (ceil(Tq/16), min(Hq, 65535), min(B, 65535)), block 128, dynamic smem floats
// 2·16·D + 2·32·(D+1). Blocks stride over y and z as attn_fwd.
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dq(float* __restrict__ dq, const float* __restrict__ dout, const float* __restrict__ q,
                                                              const float* __restrict__ k, const float* __restrict__ v, const float* __restrict__ lse,
                                                              const float* __restrict__ dsum, const u32* __restrict__ q_pos0,
                                                              const u32* __restrict__ kv_len, const float* __restrict__ alibi, int tq, int tk,
                                                              int hq, int hkv, int d, float scale, float softcap, int causal, int window, int bf16, int batch) {
    for (int b = blockIdx.z; b < batch; b += gridDim.z)
        for (int h = blockIdx.y; h < hq; h += gridDim.y) {
            __syncthreads();  // the previous tile's last reads of shared memory are done
            attn_bwd_dq_tile(dq, dout, q, k, v, lse, dsum, q_pos0, kv_len, alibi, tq, tk, hq, hkv, d, scale, softcap, causal, window, bf16, b, h, blockIdx.x * ATT_BQ);
        }
}

// cache (B,Tcap,W), new (B,Tn,W); grid-stride over B·Tn·W
extern "C" __global__ void kv_write(float* __restrict__ cache, const float* __restrict__ fresh, const u32* __restrict__ pos,
                                    int batch, int t_new, int t_cap, int width) {
    const u64 total = (u64)batch * t_new * width;
    for (u64 e = blockIdx.x * (u64)blockDim.x + threadIdx.x; e < total; e += (u64)gridDim.x * blockDim.x) {
        const int c = (int)(e % width);
        const u64 bi = e / width;
        const int i = (int)(bi % t_new), b = (int)(bi / t_new);
        const u64 t = (u64)pos[b] + i;
        if (t < (u64)t_cap) cache[((u64)b * t_cap + t) * width + c] = fresh[e];
    }
}
