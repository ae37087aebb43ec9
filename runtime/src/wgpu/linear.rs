//! matmul and attention (forward and backward) on wgpu: hand-written WGSL kernels kept beside
//! the CPU kernels in okapi-kernels (kernels/src/matmul/matmul.wgsl, kernels/src/attention/*.wgsl).
//! Semantics are exactly the CPU kernels' (see `Gemm` and `attention_fwd` / `attention_bwd`).

use super::{groups_1d, WBuf, WIds, WgpuBackend};
use crate::{AttnShape, Gemm};

/// Workgroups per grid dimension (WebGPU's `maxComputeWorkgroupsPerDimension` default).
const MAX_GROUPS: usize = 65535;

const MATMUL_WGSL: &str = include_str!("../../../kernels/src/matmul/matmul.wgsl");
const ATTN_BWD_PREP_WGSL: &str = include_str!("../../../kernels/src/attention/attention_bwd_prep.wgsl");

/// One specialization of the attention kernels: the private arrays hold `dmax` ≥ head_dim floats
/// and the workgroup staging (BK keys in the forward, BQ rows in the backward) fits in 16 KiB.
struct AttnVariant {
    dmax: usize,
    fwd_key: &'static str,
    fwd: &'static str,
    dkdv_key: &'static str,
    dq_key: &'static str,
    bwd: &'static str,
}

macro_rules! attn_variant {
    ($dmax:literal, $bk:literal, $bq:literal) => {
        AttnVariant {
            dmax: $dmax,
            fwd_key: concat!("attention_fwd_d", $dmax),
            fwd: concat!(
                "const DMAX: u32 = ",
                $dmax,
                "u;\nconst BK: u32 = ",
                $bk,
                "u;\n",
                include_str!("../../../kernels/src/attention/attention_fwd.wgsl")
            ),
            dkdv_key: concat!("attention_bwd_dkdv_d", $dmax),
            dq_key: concat!("attention_bwd_dq_d", $dmax),
            bwd: concat!(
                "const DMAX: u32 = ",
                $dmax,
                "u;\nconst BQ: u32 = ",
                $bq,
                "u;\n",
                include_str!("../../../kernels/src/attention/attention_bwd.wgsl")
            ),
        }
    };
}

/// Smallest first. Workgroup memory (WebGPU guarantees 16 KiB): forward 2·BK·DMAX ≤ 4096
/// floats; backward 2·BQ·DMAX + 2·BQ + 1 ≤ 2113.
const ATTN_VARIANTS: [AttnVariant; 4] = [attn_variant!(32, 32, 32), attn_variant!(64, 32, 16), attn_variant!(128, 16, 8), attn_variant!(256, 8, 4)];

/// Largest head_dim the attention kernels take.
pub(crate) const ATTN_MAX_HEAD_DIM: usize = 256;

fn attn_variant(d: usize) -> &'static AttnVariant {
    ATTN_VARIANTS
        .iter()
        .find(|v| v.dmax >= d)
        .unwrap_or_else(|| panic!("attention (wgpu): head_dim {d} exceeds the kernels' maximum {ATTN_MAX_HEAD_DIM}"))
}

fn u32_of(x: usize, what: &str) -> u32 {
    u32::try_from(x).unwrap_or_else(|_| panic!("wgpu: {what} = {x} does not fit the kernels' 32-bit indices"))
}

fn check_grid(groups: [usize; 3], what: &str) -> [u32; 3] {
    for g in groups {
        assert!(g <= MAX_GROUPS, "{what} (wgpu): grid {groups:?} exceeds {MAX_GROUPS} workgroups per dimension");
    }
    groups.map(|g| g as u32)
}

fn check_attn(sh: &AttnShape, what: &str) {
    assert!(sh.n_kv_heads > 0 && sh.n_heads.is_multiple_of(sh.n_kv_heads), "{what}: {} heads not divisible by {} kv heads", sh.n_heads, sh.n_kv_heads);
    // every index the kernels form must fit in u32
    u32_of(sh.batch * sh.tq.max(sh.tk) * sh.n_heads.max(sh.n_kv_heads) * sh.head_dim.max(2), what);
}

impl WgpuBackend {
    /// `c = alpha·op(a)·op(b) + beta·c` (see `Gemm`): kernels/src/matmul/matmul.wgsl, one
    /// workgroup per 64×64 tile of C and batch entry (batches beyond 65535 in further dispatches).
    pub(crate) fn op_matmul(&self, c: &mut WBuf, a: &WBuf, b: &WBuf, g: &Gemm) {
        let (ea, eb, ec) = g.extents();
        assert!(a.len >= ea && b.len >= eb && c.len >= ec, "matmul: buffers too small for {g:?}");
        if g.m == 0 || g.n == 0 || g.batch == 0 {
            return;
        }
        for x in [ea, eb, ec] {
            u32_of(x, "matmul extent");
        }
        let gx = g.n.div_ceil(64);
        let gy = g.m.div_ceil(64);
        let mut b0 = 0;
        while b0 < g.batch {
            let nb = (g.batch - b0).min(MAX_GROUPS);
            let groups = check_grid([gx, gy, nb], "matmul");
            let params = [
                g.m as u32,
                g.n as u32,
                g.k as u32,
                g.trans_a as u32 | (g.trans_b as u32) << 1,
                g.alpha.to_bits(),
                g.beta.to_bits(),
                b0 as u32,
                g.stride_a as u32,
                g.stride_b as u32,
                g.stride_c as u32,
            ];
            self.dispatch("matmul", MATMUL_WGSL, "main", &params, &[&a.buf, &b.buf, &c.buf], groups);
            b0 += nb;
        }
    }

    /// Flash-style attention forward (kernels/src/attention/attention_fwd.wgsl): out and lse `=`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_attention_fwd(&self, out: &mut WBuf, lse: &mut WBuf, q: &WBuf, k: &WBuf, v: &WBuf, q_pos0: &WIds, kv_len: &WIds, alibi: Option<&WBuf>, sh: &AttnShape) {
        let (hq, d) = (sh.n_heads, sh.head_dim);
        let kw = sh.n_kv_heads * d;
        check_attn(sh, "attention_fwd");
        assert!(q.len >= sh.batch * sh.tq * hq * d && k.len >= sh.batch * sh.tk * kw && v.len >= sh.batch * sh.tk * kw, "attention_fwd: inputs too small for {sh:?}");
        assert!(out.len >= sh.batch * sh.tq * hq * d && lse.len >= sh.batch * sh.tq * hq, "attention_fwd: outputs too small for {sh:?}");
        assert!(q_pos0.len >= sh.batch && kv_len.len >= sh.batch, "attention_fwd: q_pos0/kv_len shorter than the batch {}", sh.batch);
        if let Some(a) = alibi {
            assert!(a.len >= hq, "attention_fwd: {} ALiBi slopes for {hq} heads", a.len);
        }
        if sh.batch == 0 || sh.tq == 0 || hq == 0 {
            return;
        }
        let var = attn_variant(d);
        let groups = check_grid([sh.tq.div_ceil(64), hq, sh.batch], "attention_fwd");
        let params = [
            sh.batch as u32,
            sh.tq as u32,
            sh.tk as u32,
            hq as u32,
            sh.n_kv_heads as u32,
            d as u32,
            sh.scale.to_bits(),
            sh.causal as u32,
            alibi.is_some() as u32,
            f32::NEG_INFINITY.to_bits(),
        ];
        // without ALiBi the slot is bound to q (never read)
        let al = alibi.map_or(&q.buf, |a| &a.buf);
        self.dispatch(var.fwd_key, var.fwd, "main", &params, &[&q.buf, &k.buf, &v.buf, &q_pos0.buf, &kv_len.buf, al, &out.buf, &lse.buf], groups);
    }

    /// Attention backward: dq, dk, dv `=`. Three deterministic passes (no atomics):
    /// prep (lse and D = rowsum(dout ⊙ out) per row, plus a small table of q_pos0 / kv_len /
    /// slopes), dk·dv (one thread per key), dq (one thread per query row).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_attention_bwd(
        &self,
        dq: &mut WBuf,
        dk: &mut WBuf,
        dv: &mut WBuf,
        dout: &WBuf,
        q: &WBuf,
        k: &WBuf,
        v: &WBuf,
        out: &WBuf,
        lse: &WBuf,
        q_pos0: &WIds,
        kv_len: &WIds,
        alibi: Option<&WBuf>,
        sh: &AttnShape,
    ) {
        let (hq, d) = (sh.n_heads, sh.head_dim);
        let kw = sh.n_kv_heads * d;
        check_attn(sh, "attention_bwd");
        assert!(q.len >= sh.batch * sh.tq * hq * d && k.len >= sh.batch * sh.tk * kw && v.len >= sh.batch * sh.tk * kw, "attention_bwd: inputs too small for {sh:?}");
        assert!(dout.len >= sh.batch * sh.tq * hq * d && out.len >= sh.batch * sh.tq * hq * d && lse.len >= sh.batch * sh.tq * hq, "attention_bwd: saved tensors too small for {sh:?}");
        assert!(dq.len >= sh.batch * sh.tq * hq * d && dk.len >= sh.batch * sh.tk * kw && dv.len >= sh.batch * sh.tk * kw, "attention_bwd: gradient buffers too small for {sh:?}");
        assert!(q_pos0.len >= sh.batch && kv_len.len >= sh.batch, "attention_bwd: q_pos0/kv_len shorter than the batch {}", sh.batch);
        if let Some(a) = alibi {
            assert!(a.len >= hq, "attention_bwd: {} ALiBi slopes for {hq} heads", a.len);
        }
        if sh.batch == 0 || hq == 0 {
            return;
        }
        let var = attn_variant(d);
        let rows = sh.batch * sh.tq * hq;
        let stat = self.scratch(2 * rows);
        let info = self.scratch(2 * sh.batch + hq);
        let al = alibi.map_or(&q.buf, |a| &a.buf);
        let prep = [sh.batch as u32, sh.tq as u32, sh.tk as u32, hq as u32, d as u32, alibi.is_some() as u32];
        let n_prep = rows.max(2 * sh.batch + hq);
        self.dispatch(
            "attention_bwd_prep",
            ATTN_BWD_PREP_WGSL,
            "main",
            &prep,
            &[&dout.buf, &out.buf, &lse.buf, &q_pos0.buf, &kv_len.buf, al, &stat.buf, &info.buf],
            groups_1d(n_prep as u64, 64),
        );
        let params = [sh.batch as u32, sh.tq as u32, sh.tk as u32, hq as u32, sh.n_kv_heads as u32, d as u32, sh.scale.to_bits(), sh.causal as u32];
        if sh.tk > 0 {
            let groups = check_grid([sh.tk.div_ceil(64), sh.n_kv_heads, sh.batch], "attention_bwd");
            self.dispatch(var.dkdv_key, var.bwd, "dkdv", &params, &[&q.buf, &k.buf, &v.buf, &dout.buf, &stat.buf, &info.buf, &dk.buf, &dv.buf], groups);
        }
        if sh.tq > 0 {
            let groups = check_grid([sh.tq.div_ceil(64), hq, sh.batch], "attention_bwd");
            self.dispatch(var.dq_key, var.bwd, "dq", &params, &[&q.buf, &k.buf, &v.buf, &dout.buf, &stat.buf, &info.buf, &dq.buf], groups);
        }
    }
}
