//! wgpu matmul and attention (owned by the matmul/attention kernels; see kernels/src/matmul and
//! kernels/src/attention for the WGSL). Same arguments as the `Backend` trait methods.

#![allow(unused_variables)]

use super::{WBuf, WIds, WgpuBackend};
use crate::{AttnShape, Gemm};

impl WgpuBackend {
    pub(crate) fn op_matmul(&self, c: &mut WBuf, a: &WBuf, b: &WBuf, g: &Gemm) {
        unimplemented!("wgpu matmul: in progress")
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_attention_fwd(
        &self,
        out: &mut WBuf,
        lse: &mut WBuf,
        q: &WBuf,
        k: &WBuf,
        v: &WBuf,
        q_pos0: &WIds,
        kv_len: &WIds,
        alibi: Option<&WBuf>,
        sh: &AttnShape,
    ) {
        unimplemented!("wgpu attention_fwd: in progress")
    }

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
        unimplemented!("wgpu attention_bwd: in progress")
    }
}
