// Tiny CPU emulation of the CUDA subset the okapi kernels use (runtime/tests/cuda_emu.rs runs it).
// kernels.h is generated from kernels/src by gen_kernels.py (which refuses anything not modelled).
// Covers: one OS thread per CUDA thread, 1-D blocks (a multiple of 32, <= 1024), the blocks of a
// grid run one after another; __syncthreads and warp collectives (__shfl_sync, __shfl_xor_sync) are
// barriers, and every thread must reach the same number of them per block (checked: abort); static
// __shared__ arrays and dynamic shared memory (NaN-filled per block, so reads of unwritten shared
// memory show); mma.sync m16n8k16 row.col bf16 with f32 accumulation, per the PTX ISA fragment
// layout (emu_mma); f32/f64 arithmetic and the bit-cast / rounding intrinsics listed in
// gen_kernels.py's SUPPORTED; atomicCAS on u32 (a real atomic: the threads of a block run at once);
// the grid limits of a device (x < 2^31, y and z ≤ g_grid_yz_max, 65 535 unless a test lowers it
// to make the kernels' grid-stride loops over y and z run with small shapes) — a launch past them
// aborts, as the driver refuses it.
// Cannot see: races between warps or blocks beyond this barrier model (blocks never overlap, and
// warps are not interleaved as on a GPU, so a missing __syncthreads or __syncwarp may go unnoticed);
// real device math accuracy (expf, sqrtf, division here are the host libm's / IEEE, not the GPU's
// approximate or fast-math forms); shared-memory and register limits (the 48 KiB default, the
// opt-in above it, occupancy); __launch_bounds__; timing and performance; the host launch code
// itself (the t_*.cpp tests mirror runtime/src/cuda/mod.rs's grid/block/smem arithmetic by hand).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <barrier>
#include <vector>
#include <memory>
#include <algorithm>
#include <atomic>
struct dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<>* g_block_bar;
inline std::vector<std::unique_ptr<std::barrier<>>> g_warp_bar;
inline uint64_t g_xch[32][32];
inline uint32_t g_mma_x[32][32][6];
inline std::vector<float> g_dyn;
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static
#define __CUDA_ARCH__ 900
inline thread_local unsigned g_nsync, g_nwarp;
inline void __syncthreads() { ++g_nsync; g_block_bar->arrive_and_wait(); }
inline void warp_sync() { ++g_nwarp; g_warp_bar[threadIdx.x >> 5]->arrive_and_wait(); }
template <class T> T xch_read(T v, int src) {
    int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    uint64_t u = 0; memcpy(&u, &v, sizeof(T)); g_xch[w][l] = u;
    warp_sync();
    uint64_t r = g_xch[w][src & 31]; T out; memcpy(&out, &r, sizeof(T));
    warp_sync();
    return out;
}
template <class T> T __shfl_xor_sync(unsigned, T v, int o) { return xch_read(v, (threadIdx.x & 31) ^ o); }
template <class T> T __shfl_sync(unsigned, T v, int s) { return xch_read(v, s); }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline void sincosf(float a, float* s, float* c) { *s = sinf(a); *c = cosf(a); }
inline void __trap() { abort(); }
inline unsigned atomicCAS(unsigned* addr, unsigned compare, unsigned val) {
    std::atomic_ref<unsigned>(*addr).compare_exchange_strong(compare, val);
    return compare;  // the old value, as CUDA's atomicCAS
}
inline unsigned g_grid_yz_max = 65535;
static inline float bfv(uint32_t r, int hi) { uint32_t u = (hi ? (r >> 16) : (r & 0xffff)) << 16; float f; memcpy(&f, &u, 4); return f; }
// mma.m16n8k16 row.col bf16 per the PTX ISA fragment layout
inline void emu_mma(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    uint32_t* me = g_mma_x[w][l];
    me[0] = a0; me[1] = a1; me[2] = a2; me[3] = a3; me[4] = b0; me[5] = b1;
    warp_sync();
    float A[16][16], B[16][8];
    for (int lane = 0; lane < 32; ++lane) {
        int g = lane >> 2, t = lane & 3;
        uint32_t* f = g_mma_x[w][lane];
        for (int i = 0; i < 8; ++i) {
            int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
            int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
            A[row][col] = bfv(f[i / 2], i & 1);
        }
        for (int i = 0; i < 4; ++i) {
            int row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
            B[row][g] = bfv(f[4 + i / 2], i & 1);
        }
    }
    warp_sync();
    int g = l >> 2, t = l & 3;
    for (int i = 0; i < 4; ++i) {
        int row = i < 2 ? g : g + 8, col = t * 2 + (i & 1);
        float s = c[i];
        for (int k = 0; k < 16; ++k) s = fmaf(A[row][k], B[k][col], s);
        c[i] = s;
    }
}
// One OS thread per CUDA thread of a block, created once per launch; the blocks run one after
// another (each thread loops over the grid), separated by a block-boundary barrier. Every thread
// must reach the same number of __syncthreads (and of warp collectives within its warp) per block:
// a mismatch, which a GPU may deadlock or silently mis-synchronise on, aborts with a message.
inline std::vector<unsigned> g_sync_count, g_warp_count;
template <class F, class... Args> void launch(F f, dim3 grid, unsigned block, size_t smem, Args... args) {
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
    if (grid.x > 0x7fffffffu || grid.y > g_grid_yz_max || grid.z > g_grid_yz_max) {
        fprintf(stderr, "emu: grid (%u,%u,%u) past the device limits (x < 2^31, y and z <= %u)\n", grid.x, grid.y, grid.z, g_grid_yz_max); abort();
    }
    if (block == 0 || block > 1024 || block % 32 != 0) { fprintf(stderr, "emu: block size %u (must be a multiple of 32, at most 1024)\n", block); abort(); }
    blockDim = {block, 1, 1};
    gridDim = grid;
    std::barrier<> bar(block), gate(block);
    g_block_bar = &bar;
    g_warp_bar.clear();
    for (unsigned w = 0; w < block / 32; ++w) g_warp_bar.emplace_back(new std::barrier<>(32));
    g_sync_count.assign(block, 0);
    g_warp_count.assign(block, 0);
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < block; ++t)
        ts.emplace_back([=, &gate] {
            threadIdx = {t, 0, 0};
            for (unsigned z = 0; z < grid.z; ++z)
                for (unsigned y = 0; y < grid.y; ++y)
                    for (unsigned x = 0; x < grid.x; ++x) {
                        if (t == 0) g_dyn.assign(smem / 4 + 1, NAN);  // uninitialised shared memory reads show as NaN
                        gate.arrive_and_wait();
                        blockIdx = {x, y, z};
                        g_nsync = g_nwarp = 0;
                        f(args...);
                        g_sync_count[t] = g_nsync;
                        g_warp_count[t] = g_nwarp;
                        gate.arrive_and_wait();
                        if (t == 0)
                            for (unsigned i = 0; i < block; ++i)
                                if (g_sync_count[i] != g_sync_count[0] || g_warp_count[i] != g_warp_count[i & ~31u]) {
                                    fprintf(stderr, "emu: block (%u,%u,%u): thread %u reached %u __syncthreads / %u warp collectives, thread %u %u / %u\n",
                                            x, y, z, i, g_sync_count[i], g_warp_count[i], i & ~31u, g_sync_count[i & ~31u], g_warp_count[i & ~31u]);
                                    abort();
                                }
                    }
        });
    for (auto& t : ts) t.join();
}
