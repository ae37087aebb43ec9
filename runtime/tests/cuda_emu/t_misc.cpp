// rope, adamw (+ bf16 copy), embedding fwd/bwd, bias add/grad (col_partial/col_finish),
// sum_squares, kv_write, the activations (GeGLU and the soft-caps included), dropout and
// fill/copy/scale/axpy/f32_to_bf16, vs references;
// the device error reports of out-of-range ids (embedding_fwd, xent, token log-probs); a column
// partial past the real grid.y limit (65 537 chunks of rows).
// Trimmed for CI time: adamw's largest length is 20003 (was 100003), the largest embedding/bias
// case is 70x2100 (was 130x4099; still >1 chunk of 64 rows, grid.y capped at 8, and more elements
// than sum_squares' 512x256 threads).
#include "common.h"
static unsigned ewg(size_t n) { return (unsigned)std::clamp<size_t>((n + 255) / 256, 1, 65535 * 4); }
// The report must be exactly {set, what, id, row low, row high, bound}.
static void expect_err(const std::string& what, u32 code, u32 id, u64 row, u32 bound) {
    u32 want[6] = {1, code, id, (u32)row, (u32)(row >> 32), bound};
    bool ok = memcmp(g_err, want, sizeof want) == 0;
    if (!ok) ++g_fail;
    printf("%s %s: err {%u,%u,%u,%u,%u,%u}\n", ok ? "ok  " : "FAIL", what.c_str(), g_err[0], g_err[1], g_err[2], g_err[3], g_err[4], g_err[5]);
    clear_err();
}
// Out-of-range ids: the first bad row is reported (blocks run in order here), its outputs are NaN
// (loss, log-prob, embedding row) or zero (gradients), and the other rows are still right.
static void device_errors() {
    int V = 50, c = 9, n = 4;
    auto table = rnd((size_t)V * c, 61, 1.f);
    std::vector<unsigned> ids{3, 49, 57, 50};
    std::vector<float> out((size_t)n * c, 0);
    if (g_err[0] != 0) { ++g_fail; printf("FAIL a device error was reported for valid ids\n"); }
    clear_err();
    launch(embedding_fwd, dim3{(unsigned)n,1,1}, 256, 0, out.data(), (const float*)table.data(), (const u32*)ids.data(), c, (u32)V, g_err);
    expect_err("embedding_fwd id 57 at row 2", 1, 57, 2, V);
    std::vector<float> got_ok(out.begin(), out.begin() + 2 * c), nan_row(out.begin() + 2 * c, out.begin() + 3 * c);
    std::vector<double> want_ok; for (int r = 0; r < 2; ++r) for (int i = 0; i < c; ++i) want_ok.push_back(table[ids[r] * c + i]);
    check("embedding_fwd good rows beside a bad id", got_ok, want_ok, 0, 0);
    if (!std::all_of(nan_row.begin(), nan_row.end(), [](float f) { return std::isnan(f); })) { ++g_fail; printf("FAIL embedding_fwd: the bad id's row is not NaN\n"); }
    // xent / token log-probs over a vocabulary of V: targets ok, IGNORE, bad, bad
    std::vector<unsigned> t{7, 0xffffffffu, 50, 1000};
    auto logits = rnd((size_t)n * V, 62, 2.f), coef = rnd(n, 63, 1.f);
    std::vector<float> lg = logits, ls(n, 0), lp(n, 0), gr(n, 0), dl((size_t)n * V, 1);
    launch(xent_fwd_bwd, dim3{(unsigned)n,1,1}, 256, 0, lg.data(), ls.data(), (const u32*)t.data(), (const float*)coef.data(), V, g_err);
    expect_err("xent_fwd_bwd target 50 at row 2", 2, 50, 2, V);
    launch(token_logprobs, dim3{(unsigned)n,1,1}, 256, 0, lp.data(), gr.data(), (const float*)logits.data(), (const u32*)t.data(), V, g_err);
    expect_err("token_logprobs target 50 at row 2", 3, 50, 2, V);
    launch(token_logprobs_bwd, dim3{(unsigned)n,1,1}, 256, 0, dl.data(), (const float*)logits.data(), (const u32*)t.data(), (const float*)coef.data(), V, g_err);
    expect_err("token_logprobs_bwd target 50 at row 2", 4, 50, 2, V);
    bool ok = std::isfinite(ls[0]) && ls[1] == 0 && std::isnan(ls[2]) && std::isnan(ls[3]) && std::isfinite(lp[0]) && lp[1] == 0 && std::isnan(lp[2]);
    for (int r = 2; r < 4; ++r) for (int i = 0; i < V; ++i) ok = ok && lg[r * V + i] == 0 && dl[r * V + i] == 0;
    if (!ok) ++g_fail;
    printf("%s bad targets: NaN loss / log-prob, zero gradient rows; good and IGNORE rows as before\n", ok ? "ok  " : "FAIL");
}
int main() {
    // element-wise: activations (saturating inputs included), fill, copy, scale, axpy, f32_to_bf16.
    // ewg() mirrors the host's grid; the small explicit grid exercises the grid-stride loop.
    for (size_t len : {1ul, 7ul, 3001ul}) for (unsigned grid : {ewg(len), 2u}) {
        auto g = rnd(len, 130, 6.f), u = rnd(len, 131, 2.f), d = rnd(len, 132, 1.f);
        if (len > 4) { g[0] = 60.f; g[1] = -60.f; g[2] = 100.f; g[3] = -100.f; g[4] = 0.f; }
        std::string tag = " len" + std::to_string(len) + " grid" + std::to_string(grid);
        const double k0 = 0.7978845608028654, k1 = 0.044715;
        std::vector<double> sw(len), dg(len), du(len), ge(len), gb(len), gg(len), ggd(len), ggu(len), re(len), rb(len), fi(len, -2.5), sc(len), ax(len), bf(len);
        for (size_t i = 0; i < len; ++i) {
            double x = g[i], s = 1 / (1 + exp(-x)), t = tanh(k0 * x * (1 + k1 * x * x));
            sw[i] = x * s * u[i]; du[i] = d[i] * x * s; dg[i] = d[i] * u[i] * s * (1 + x * (1 - s));
            ge[i] = 0.5 * x * (1 + t); gb[i] = d[i] * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k0 * (1 + 3 * k1 * x * x));
            gg[i] = ge[i] * u[i]; ggu[i] = d[i] * ge[i]; ggd[i] = gb[i] * u[i];
            re[i] = x > 0 ? x : 0; rb[i] = x > 0 ? d[i] : 0;
            sc[i] = (double)u[i] * -0.5f; ax[i] = u[i] + (double)1.5f * d[i]; bf[i] = hbf(g[i]);
        }
        std::vector<float> o(len, NAN), o2(len, NAN), o3(len, NAN), o4(len, NAN), o5(len, NAN), o6(len, NAN), o7(len, NAN), o8(len, NAN), o9(len, NAN), o10(len, NAN), f(len, NAN), cp(len, NAN), s2 = u, a2 = u;
        std::vector<u16> b16(len, 0xffff);
        launch(swiglu_fwd, dim3{grid,1,1}, 256, 0, o.data(), (const float*)g.data(), (const float*)u.data(), (u64)len);
        launch(swiglu_bwd, dim3{grid,1,1}, 256, 0, o2.data(), o3.data(), (const float*)d.data(), (const float*)g.data(), (const float*)u.data(), (u64)len);
        launch(gelu_fwd, dim3{grid,1,1}, 256, 0, o4.data(), (const float*)g.data(), (u64)len);
        launch(gelu_bwd, dim3{grid,1,1}, 256, 0, o5.data(), (const float*)d.data(), (const float*)g.data(), (u64)len);
        launch(geglu_fwd, dim3{grid,1,1}, 256, 0, o8.data(), (const float*)g.data(), (const float*)u.data(), (u64)len);
        launch(geglu_bwd, dim3{grid,1,1}, 256, 0, o9.data(), o10.data(), (const float*)d.data(), (const float*)g.data(), (const float*)u.data(), (u64)len);
        launch(relu_fwd, dim3{grid,1,1}, 256, 0, o6.data(), (const float*)g.data(), (u64)len);
        launch(relu_bwd, dim3{grid,1,1}, 256, 0, o7.data(), (const float*)d.data(), (const float*)g.data(), (u64)len);
        launch(fill_f32, dim3{grid,1,1}, 256, 0, f.data(), -2.5f, (u64)len);
        launch(copy_f32, dim3{grid,1,1}, 256, 0, cp.data(), (const float*)g.data(), (u64)len);
        launch(scale_f32, dim3{grid,1,1}, 256, 0, s2.data(), -0.5f, (u64)len);
        launch(axpy_f32, dim3{grid,1,1}, 256, 0, a2.data(), 1.5f, (const float*)d.data(), (u64)len);
        launch(f32_to_bf16, dim3{grid,1,1}, 256, 0, b16.data(), (const float*)g.data(), (u64)len);
        std::vector<float> b16f(len); for (size_t i = 0; i < len; ++i) { uint32_t w = (uint32_t)b16[i] << 16; memcpy(&b16f[i], &w, 4); }
        check("swiglu_fwd"+tag, o, sw, 1e-6, 5e-5); check("swiglu_bwd dgate"+tag, o2, dg, 1e-6, 5e-5); check("swiglu_bwd dup"+tag, o3, du, 1e-6, 5e-5);
        check("gelu_fwd"+tag, o4, ge, 1e-6, 5e-5); check("gelu_bwd"+tag, o5, gb, 1e-6, 5e-5);
        check("geglu_fwd"+tag, o8, gg, 1e-6, 5e-5); check("geglu_bwd dgate"+tag, o9, ggd, 1e-6, 5e-5); check("geglu_bwd dup"+tag, o10, ggu, 1e-6, 5e-5);
        check("relu_fwd"+tag, o6, re, 0, 0); check("relu_bwd"+tag, o7, rb, 0, 0);
        check("fill"+tag, f, fi, 0, 0); check("copy"+tag, cp, std::vector<double>(g.begin(), g.end()), 0, 0);
        check("scale"+tag, s2, sc, 0, 0); check("axpy"+tag, a2, ax, 1e-7, 1e-6); check("f32_to_bf16"+tag, b16f, bf, 0, 0);
    }
    // soft-caps in place: logits from saturated to tiny (cap·tanh(x/cap) ≈ x must keep its
    // relative precision there: the edge values are checked each against itself, without check()'s
    // rms floor), Gemma 2's caps and a small one
    for (size_t len : {1ul, 7ul, 3001ul}) for (unsigned grid : {ewg(len), 2u}) for (float cap : {30.f, 50.f, 0.7f}) {
        auto x = rnd(len, 133, 4.f * cap), dy = rnd(len, 134, 1.f);
        const float edge[] = {1e-30f, -3e-6f, 0.f, 40.f * cap, -40.f * cap, 0.62f * cap, 0.63f * cap};
        for (size_t i = 0; i < len && i < 7; ++i) x[i] = edge[i];
        std::vector<double> y(len), dx(len);
        for (size_t i = 0; i < len; ++i) { double t = tanh((double)x[i] / cap); y[i] = cap * t; dx[i] = dy[i] * (1 - t * t); }
        std::vector<float> gy = x, gdx = dy;
        launch(softcap_fwd, dim3{grid,1,1}, 256, 0, gy.data(), (u64)len, cap);
        launch(softcap_bwd, dim3{grid,1,1}, 256, 0, gdx.data(), (const float*)gy.data(), (u64)len, cap);
        char cb[16]; snprintf(cb, sizeof cb, "%g", cap);
        std::string tag = " len" + std::to_string(len) + " grid" + std::to_string(grid) + " cap " + cb;
        check("softcap_fwd"+tag, gy, y, 0, 1e-6); check("softcap_bwd"+tag, gdx, dx, 1e-6, 5e-5);
        for (size_t i = 0; i < len && i < 7; ++i)
            if (fabs(gy[i] - y[i]) > 1e-6 * fabs(y[i])) { ++g_fail; printf("FAIL softcap_fwd%s: x = %g gives %.9g, want %.9g\n", tag.c_str(), x[i], gy[i], y[i]); }
    }
    // relu of NaN: NaN forward, dout backward (PyTorch's `x <= 0 ? 0 : ·`)
    {
        std::vector<float> x{NAN, 0.f, -0.f, 2.f}, d{3.f, 5.f, 7.f, 11.f}, o(4, -1.f), dx(4, -1.f);
        launch(relu_fwd, dim3{1,1,1}, 256, 0, o.data(), (const float*)x.data(), (u64)4);
        launch(relu_bwd, dim3{1,1,1}, 256, 0, dx.data(), (const float*)d.data(), (const float*)x.data(), (u64)4);
        bool ok = std::isnan(o[0]) && o[1] == 0 && o[2] == 0 && o[3] == 2 && dx[0] == 3 && dx[1] == 0 && dx[2] == 0 && dx[3] == 11;
        if (!ok) ++g_fail;
        printf("%s relu at NaN, ±0: NaN / 0 forward, dout / 0 backward\n", ok ? "ok  " : "FAIL");
    }
    // dropout: the mask from its definition (kernels/src/activation/mod.rs), bit for bit; a dropped
    // NaN / inf is +0, `+=` adds the rounded product. The small grid exercises the grid-stride loop.
    {
        auto mix = [](u32 x) { x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16; return x; };
        for (size_t len : {1ul, 1037ul}) for (unsigned grid : {ewg(len), 3u}) for (double p : {0.0, 0.1, 0.5, 0.9}) for (int acc : {0, 1}) {
            u64 seed = 0x9e3779b97f4a7c15ull + (u64)(p * 10);
            u32 key = mix((u32)seed ^ mix((u32)(seed >> 32)));
            u32 thr = (u32)std::min(std::round(p * 4294967296.0), 4294967295.0);
            float scale = (float)(1.0 / (1.0 - p));
            auto x = rnd(len, 140, 4.f), o = rnd(len, 141, 2.f);
            for (size_t i = 0; i < len && i < 40; i += 3) x[i] = i % 2 ? NAN : -INFINITY;
            std::vector<float> want(len), got = o;
            for (size_t i = 0; i < len; ++i) {
                float v = mix((u32)i ^ key) >= thr ? x[i] * scale : 0.0f;
                want[i] = acc ? o[i] + v : v;
            }
            launch(dropout, dim3{grid,1,1}, 256, 0, got.data(), (const float*)x.data(), (u64)len, key, thr, scale, acc);
            size_t bad = 0;
            for (size_t i = 0; i < len; ++i) {
                u32 a, b; memcpy(&a, &got[i], 4); memcpy(&b, &want[i], 4);
                bad += !(a == b || (std::isnan(got[i]) && std::isnan(want[i])));
            }
            if (bad) ++g_fail;
            printf("%s dropout len%zu grid%u p%.1f%s: %zu/%zu elements differ in their bits\n", bad ? "FAIL" : "ok  ", len, grid, p, acc ? " +=" : "", bad, len);
        }
    }
    // rope
    for (auto [n, h, d] : std::vector<std::array<int,3>>{{5,3,64},{33,4,128},{7,2,80}}) {
        auto x = rnd((size_t)n*h*d, 110, 1.f); std::vector<unsigned> pos(n); for (int i = 0; i < n; ++i) pos[i] = i * 37 % 4000;
        std::vector<float> inv(d/2); for (int i = 0; i < d/2; ++i) inv[i] = 1.0f / powf(10000.f, (2.f*i)/d);
        std::vector<double> want(x.size()), back(x.size());
        for (int r = 0; r < n; ++r) for (int hh = 0; hh < h; ++hh) for (int i = 0; i < d/2; ++i) {
            float a = (float)pos[r] * inv[i]; double c = cos((double)a), s = sin((double)a);
            size_t o = ((size_t)r*h+hh)*d; double x1 = x[o+i], x2 = x[o+i+d/2];
            want[o+i] = x1*c - x2*s; want[o+i+d/2] = x2*c + x1*s; back[o+i] = x1; back[o+i+d/2] = x2;
        }
        std::vector<float> g = x;
        launch(rope, dim3{ewg((size_t)n*h*d/2),1,1}, 256, 0, g.data(), (const u32*)pos.data(), (const float*)inv.data(), n, h, d, 1.0f);
        check("rope fwd", g, want, 1e-5, 1e-4);
        launch(rope, dim3{ewg((size_t)n*h*d/2),1,1}, 256, 0, g.data(), (const u32*)pos.data(), (const float*)inv.data(), n, h, d, -1.0f);
        check("rope bwd", g, back, 1e-5, 1e-4);
    }
    // adamw
    for (size_t len : {1ul, 1000ul, 20003ul}) {
        auto p = rnd(len, 120, 1), g = rnd(len, 121, .1f), m = rnd(len, 122, .01f), v = rnd(len, 123, .001f); for (auto& y : v) y = fabsf(y);
        double lr = 1e-3, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1, gs = 0.5; int step = 7;
        double bc1 = 1 - pow(b1, step), bc2 = 1 - pow(b2, step);
        std::vector<double> wp(len), wm(len), wv(len);
        for (size_t i = 0; i < len; ++i) { double gi = g[i]*gs; double pi = p[i]*(1-lr*wd); wm[i] = m[i] + (1-b1)*(gi-m[i]); wv[i] = b2*v[i] + (1-b2)*gi*gi; wp[i] = pi - lr/bc1 * wm[i]/(sqrt(wv[i])/sqrt(bc2) + eps); }
        std::vector<float> gp = p, gm = m, gv = v; std::vector<u16> pb(len);
        launch(adamw_f32, dim3{ewg(len),1,1}, 256, 0, gp.data(), (const float*)g.data(), gm.data(), gv.data(), pb.data(), (u64)len, (float)(1-lr*wd), (float)(lr/bc1), (float)sqrt(bc2), (float)b1, (float)b2, (float)eps, (float)gs);
        check("adamw p", gp, wp, 1e-6, 2e-5); check("adamw m", gm, wm, 1e-6, 2e-5); check("adamw v", gv, wv, 1e-6, 2e-5);
        std::vector<float> pbf(len); std::vector<double> pbw(len); for (size_t i = 0; i < len; ++i) { uint32_t u = (uint32_t)pb[i] << 16; memcpy(&pbf[i], &u, 4); pbw[i] = hbf(gp[i]); }
        check("adamw bf16 copy", pbf, pbw, 0, 0);
    }
    // embedding, bias, sum_squares, kv_write
    for (auto [n, c] : std::vector<std::pair<int,int>>{{1,7},{33,300},{70,2100}}) {
        int V = 50; auto table = rnd((size_t)V*c, 6, 1.f), x = rnd((size_t)n*c, 3, 2.f), bias = rnd(c, 4, 1.f);
        std::vector<unsigned> ids(n); for (int i = 0; i < n; ++i) ids[i] = (i * 31 + 7) % V; ids[0] = V - 1;
        std::vector<double> out(n*c), dt(table.begin(), table.end()), xb(n*c), db(bias.begin(), bias.end());
        for (int r = 0; r < n; ++r) for (int i = 0; i < c; ++i) { out[r*c+i] = table[ids[r]*c+i]; dt[ids[r]*c+i] += x[r*c+i]; xb[r*c+i] = x[r*c+i] + bias[i]; db[i] += x[r*c+i]; }
        std::vector<float> go(n*c, NAN), gdt = table, gx = x, gdb = bias;
        launch(embedding_fwd, dim3{(unsigned)n,1,1}, 256, 0, go.data(), (const float*)table.data(), (const u32*)ids.data(), c, (u32)V, g_err);
        std::vector<u32> order(n); for (int i = 0; i < n; ++i) order[i] = i;
        std::sort(order.begin(), order.end(), [&](u32 a, u32 b) { return std::make_pair(ids[a], a) < std::make_pair(ids[b], b); });
        std::vector<u32> starts{0}; for (int i = 1; i <= n; ++i) if (i == n || ids[order[i]] != ids[order[i-1]]) starts.push_back(i);
        launch(embedding_bwd, dim3{(unsigned)starts.size()-1, std::min<unsigned>((c+255)/256, 8), 1}, 256, 0, gdt.data(), (const float*)x.data(), (const u32*)ids.data(), (const u32*)order.data(), (const u32*)starts.data(), c);
        launch(bias_add_f32, dim3{ewg((size_t)n*c),1,1}, 256, 0, gx.data(), (const float*)bias.data(), (u64)n, c);
        int chunks = (n+63)/64; std::vector<float> part(chunks*c, NAN);
        launch(col_partial_f32, dim3{(unsigned)(c+255)/256,yz(chunks),1}, 256, 0, part.data(), (const float*)x.data(), n, c, 64);
        launch(col_finish_f32, dim3{(unsigned)(c+255)/256,1,1}, 256, 0, gdb.data(), (const float*)part.data(), chunks, c);
        check("emb fwd", go, out, 0, 0); check("emb bwd", gdt, dt, 1e-6, 5e-5); check("bias_add", gx, xb, 1e-6, 5e-5); check("bias_bwd", gdb, db, 1e-6, 5e-5);
        std::vector<double> ssp(512); std::vector<float> acc(3, 0); double ss = 0; for (float y : x) ss += (double)y*y;
        launch(sum_squares_partial, dim3{512,1,1}, 256, 0, ssp.data(), (const float*)x.data(), (u64)x.size());
        launch(sum_squares_finish, dim3{1,1,1}, 256, 0, acc.data(), 1, (const double*)ssp.data(), 512);
        check("sum_squares", acc, {0, ss, 0}, 1e-6, 5e-5);
    }
    {
        int b = 3, tn = 5, tcap = 9, w = 24; std::vector<unsigned> pos{0, 4, 7};
        auto nw = rnd(b*tn*w, 7, 1), cache = rnd(b*tcap*w, 8, 1);
        std::vector<double> want(cache.begin(), cache.end());
        for (int bb = 0; bb < b; ++bb) for (int i = 0; i < tn; ++i) if (pos[bb]+i < (unsigned)tcap) for (int c = 0; c < w; ++c) want[(bb*tcap+pos[bb]+i)*w+c] = nw[(bb*tn+i)*w+c];
        launch(kv_write, dim3{ewg(b*tn*w),1,1}, 256, 0, cache.data(), (const float*)nw.data(), (const u32*)pos.data(), b, tn, tcap, w);
        check("kv_write", cache, want, 0, 0);
    }
    {
        // bf16_unpack_f32: two bf16 per 32-bit word, low half first
        size_t n = 1001; auto x = rnd(n, 71, 3.f);
        std::vector<float> packed((n + 1) / 2), got(n, NAN); std::vector<double> want(n);
        for (size_t i = 0; i < n; ++i) {
            uint32_t u; memcpy(&u, &x[i], 4); u += 0x7fffu + ((u >> 16) & 1u); uint32_t h = u >> 16;
            uint32_t w; memcpy(&w, &packed[i / 2], 4); w = (i & 1) ? ((w & 0xffffu) | (h << 16)) : ((w & 0xffff0000u) | h); memcpy(&packed[i / 2], &w, 4);
            want[i] = hbf(x[i]);
        }
        launch(bf16_unpack_f32, dim3{ewg(n),1,1}, 256, 0, got.data(), (const float*)packed.data(), (u64)n);
        check("bf16_unpack_f32", got, want, 0, 0);
    }
    device_errors();
    {
        // past the real grid.y limit: 65 537 chunks of 64 rows (32-thread blocks keep the emulation
        // quick; the kernel does not depend on the block size)
        int n = 64 * 65537 + 5, c = 3, chunks = (n + 63) / 64;
        auto dy = rnd((size_t)n * c, 5, 1.f);
        std::vector<float> part((size_t)chunks * c, NAN);
        launch(col_partial_f32, dim3{1, yz(chunks), 1}, 32, 0, part.data(), (const float*)dy.data(), n, c, 64);
        std::vector<double> want((size_t)chunks * c, 0);
        for (int r = 0; r < n; ++r) for (int j = 0; j < c; ++j) want[(size_t)(r / 64) * c + j] += dy[(size_t)r * c + j];
        check("col_partial 4194373 rows = 65537 chunks, grid.y 65535", part, want, 1e-5, 1e-5);
    }
    printf("%d failures\n", g_fail);
    return g_fail != 0;
}
