//! `c = alpha·op(a)·op(b) + beta·c` (see `Gemm`): kernels/src/matmul/matmul.wgsl, one workgroup
//! per TILE×TILE tile of C and batch entry (batches beyond the grid limit in further dispatches).

use super::super::batch::MAX_GROUPS_PER_DIM;
use super::super::{WBuf, WgpuBackend};
use super::u32_of;
use crate::{check, Gemm};
use okapi_kernels::matmul::{TILE, WGSL};

impl WgpuBackend {
    pub(crate) fn op_matmul(&self, c: &mut WBuf, a: &WBuf, b: &WBuf, g: &Gemm) {
        check::matmul(c, a, b, g);
        if g.m == 0 || g.n == 0 || g.batch == 0 {
            return;
        }
        self.check_loop_budget("matmul", okapi_kernels::matmul::wgsl_loop_iterations(g));
        let (ea, eb, ec) = g.extents();
        for x in [ea, eb, ec] {
            u32_of(x, "matmul extent");
        }
        let gx = u32_of(g.n.div_ceil(TILE), "matmul column tiles");
        let gy = u32_of(g.m.div_ceil(TILE), "matmul row tiles");
        assert!(gx <= MAX_GROUPS_PER_DIM && gy <= MAX_GROUPS_PER_DIM, "matmul (wgpu): {gy}×{gx} tiles exceed {MAX_GROUPS_PER_DIM} per grid dimension");
        let mut b0 = 0;
        while b0 < g.batch {
            let nb = (g.batch - b0).min(MAX_GROUPS_PER_DIM as usize);
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
            self.dispatch("matmul", WGSL, "main", &params, &[&a.buf, &b.buf, &c.buf], [gx, gy, nb as u32]);
            b0 += nb;
        }
    }
}
