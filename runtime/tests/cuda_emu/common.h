#pragma once
#include "kernels.h"
#include <random>
#include <string>
static std::vector<float> rnd(size_t n, uint64_t seed, float scale) {
    std::mt19937_64 g(seed); std::uniform_real_distribution<float> d(-scale, scale);
    std::vector<float> v(n); for (auto& x : v) x = d(g); return v;
}
static float hbf(float f) { uint32_t u; memcpy(&u, &f, 4); if ((u & 0x7fffffffu) > 0x7f800000u) return f; u += 0x7fffu + ((u >> 16) & 1u); u &= 0xffff0000u; float r; memcpy(&r, &u, 4); return r; }
static int g_fail = 0;
// runtime/src/cuda's grid_yz: a grid.y / grid.z extent, the kernels stride over the rest.
static unsigned yz(size_t n) { return (unsigned)std::min<size_t>(std::max<size_t>(n, 1), g_grid_yz_max); }
// The device error buffer (OKAPI_ERR_WORDS u32) the id-indexing kernels report through.
static u32 g_err[6];
static void clear_err() { memset(g_err, 0, sizeof g_err); }
static void check(const std::string& what, const std::vector<float>& got, const std::vector<double>& want, double abs, double rel) {
    double rms = 0; size_t nf = 0;
    for (double w : want) if (std::isfinite(w)) { rms += w * w; ++nf; }
    rms = std::sqrt(rms / std::max<size_t>(1, want.size()));
    size_t bad = 0, at = 0; double worst = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        double g = got[i], w = want[i];
        bool ok = (std::isinf(w) || std::isinf(g)) ? g == w : std::fabs(g - w) <= abs + rel * std::max(std::fabs(w), rms);
        if (std::isnan(g)) ok = false;
        double e = ok ? (std::isfinite(w) ? std::fabs(g - w) : 0) : INFINITY;
        if (e > worst || (!ok && bad == 0)) { worst = e; at = i; }
        bad += !ok;
    }
    if (bad) { ++g_fail; printf("FAIL %s: %zu/%zu bad; worst [%zu] got %g want %g\n", what.c_str(), bad, want.size(), at, got[at], want[at]); }
    else printf("ok   %s (max err %.2e)\n", what.c_str(), worst);
}
