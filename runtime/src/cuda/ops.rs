//! The `Backend` ops of the CUDA backend: extent checks (shared with every backend), then the
//! launch of the family's kernels with the geometry okapi-kernels exports beside the `.cu`.

use super::{grid_yz, row_block, CudaBackend, CudaBuf, CudaIds, A};
use crate::{check, AdamW, AttnGrads, AttnInputs, AttnShape, Backend, Dropout, Gemm, KvShape, LayerNormBwd, LayerNormFwd, NormShape, RmsNormBwd, RmsNormFwd, RopeShape, Rows};
use okapi_kernels::attention::{check_attn_outputs, cuda_launch as att};
use okapi_kernels::matmul::{CUDA_F32_BLOCK, CUDA_MMA_BLOCK, TILE};
use okapi_kernels::reduce::{CUDA_COL_CHUNK as COL_CHUNK, CUDA_SSQ_BLOCKS as SSQ_BLOCKS};

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Ids = CudaIds;

    fn name(&self) -> String {
        let i = &self.inner;
        format!("cuda:{} {} ({}, {})", i.ordinal, i.device_name, i.arch, i.precision)
    }
    fn device_memory(&self) -> crate::memory::DeviceMemory {
        match self.inner.ctx.mem_get_info() {
            Ok((free, _total)) => crate::memory::DeviceMemory::Free(crate::memory::device_budget(free as u64, &format!("cuda:{}", self.inner.ordinal))),
            Err(_) => crate::memory::DeviceMemory::Unknown,
        }
    }
    fn synchronize(&self) {
        CudaBackend::synchronize(self);
    }
    fn zeros(&self, len: usize) -> CudaBuf {
        CudaBuf(self.alloc(len, "zeros"))
    }
    fn upload(&self, data: &[f32]) -> CudaBuf {
        let mut b = self.zeros(data.len());
        self.write(&mut b, data);
        b
    }
    fn upload_ids(&self, data: &[u32]) -> CudaIds {
        let mut b = CudaIds(self.alloc(data.len(), "ids"));
        self.write_ids(&mut b, data);
        b
    }
    fn write(&self, dst: &mut CudaBuf, data: &[f32]) {
        check::len("write", &[("dst", &*dst)], data.len());
        if !data.is_empty() {
            self.inner.stream.memcpy_htod(data, &mut dst.0.slice_mut(..data.len())).unwrap_or_else(|e| panic!("cuda: upload: {e:?}"));
        }
    }
    fn write_ids(&self, dst: &mut CudaIds, data: &[u32]) {
        check::len("write_ids", &[("dst", &*dst)], data.len());
        if !data.is_empty() {
            self.inner.stream.memcpy_htod(data, &mut dst.0.slice_mut(..data.len())).unwrap_or_else(|e| panic!("cuda: upload ids: {e:?}"));
        }
    }
    fn host_stage(&self, len: usize) -> crate::HostStage {
        self.pinned_stage(len)
    }
    fn read_staged(&self, src: &CudaBuf, off: usize, stage: &mut crate::HostStage, len: usize) {
        self.read_staged_impl(src, off, stage, len);
    }
    fn write_staged(&self, dst: &mut CudaBuf, off: usize, stage: &crate::HostStage, len: usize) {
        self.write_staged_impl(dst, off, stage, len);
    }
    fn read(&self, src: &CudaBuf, len: usize) -> Vec<f32> {
        check::len("read", &[("src", src)], len);
        self.read_range(src, 0, len)
    }
    fn fill(&self, x: &mut CudaBuf, value: f32, len: usize) {
        check::len("fill", &[("x", &*x)], len);
        self.ew("fill_f32", len, &[self.pb(x), A::F(value), A::U(len as u64)]);
    }
    fn copy(&self, dst: &mut CudaBuf, src: &CudaBuf, len: usize) {
        check::len("copy", &[("dst", &*dst), ("src", src)], len);
        self.ew("copy_f32", len, &[self.pb(dst), self.pb(src), A::U(len as u64)]);
    }
    fn copy_range(&self, dst: &mut CudaBuf, dst_off: usize, src: &CudaBuf, src_off: usize, len: usize) {
        check::range("copy_range", "dst", &*dst, dst_off, len);
        check::range("copy_range", "src", src, src_off, len);
        self.ew("copy_f32", len, &[self.pb_at(dst, dst_off), self.pb_at(src, src_off), A::U(len as u64)]);
    }
    fn unpack_bf16(&self, dst: &mut CudaBuf, src: &CudaBuf, n: usize) {
        check::len("unpack_bf16", &[("dst", &*dst)], n);
        check::len("unpack_bf16", &[("src", src)], n.div_ceil(2));
        self.ew("bf16_unpack_f32", n, &[self.pb(dst), self.pb(src), A::U(n as u64)]);
    }
    fn scale(&self, x: &mut CudaBuf, a: f32, len: usize) {
        check::len("scale", &[("x", &*x)], len);
        self.ew("scale_f32", len, &[self.pb(x), A::F(a), A::U(len as u64)]);
    }
    fn axpy(&self, y: &mut CudaBuf, a: f32, x: &CudaBuf, len: usize) {
        check::len("axpy", &[("y", &*y), ("x", x)], len);
        self.ew("axpy_f32", len, &[self.pb(y), A::F(a), self.pb(x), A::U(len as u64)]);
    }

    fn matmul(&self, c: &mut CudaBuf, a: &CudaBuf, b: &CudaBuf, g: &Gemm) {
        check::matmul(c, a, b, g);
        if g.m == 0 || g.n == 0 || g.batch == 0 {
            return;
        }
        let mma = self.use_bf16() && self.inner.cc.0 >= 8;
        let (kernel, block) = if mma { ("matmul_bf16_mma", CUDA_MMA_BLOCK) } else { ("matmul_f32", CUDA_F32_BLOCK) };
        let grid = (g.n.div_ceil(TILE) as u32, grid_yz(g.m.div_ceil(TILE)), grid_yz(g.batch));
        let dims = [A::I(g.m as i32), A::I(g.n as i32), A::I(g.k as i32), A::I(g.trans_a as i32), A::I(g.trans_b as i32)];
        let mut args = vec![self.pb(c), self.pb(a), self.pb(b)];
        args.extend(dims);
        args.extend([A::F(g.alpha), A::F(g.beta), A::U(g.stride_a as u64), A::U(g.stride_b as u64), A::U(g.stride_c as u64), A::I(g.batch as i32)]);
        self.launch(kernel, grid, block, 0, &args);
    }

    fn embedding_fwd(&self, out: &mut CudaBuf, table: &CudaBuf, ids: &CudaIds, r: Rows) {
        check::embedding("embedding_fwd", out, table, ids, r);
        let rows = table.0.len() / r.c.max(1);
        let args = [self.pb(out), self.pb(table), self.pi(ids), A::I(r.c as i32), A::I(rows.min(u32::MAX as usize) as i32), self.perr()];
        self.launch("embedding_fwd", (r.n as u32, 1, 1), 256, 0, &args);
    }
    fn embedding_bwd(&self, dtable: &mut CudaBuf, dout: &CudaBuf, ids: &CudaIds, r: Rows) {
        check::embedding("embedding_bwd", dout, dtable, ids, r);
        if r.n == 0 {
            return;
        }
        self.embedding_bwd_grouped(dtable, dout, ids, r);
    }

    fn rmsnorm_fwd(&self, t: RmsNormFwd<'_, CudaBuf>, sh: &NormShape) {
        t.check(sh);
        let args = [self.pb(t.out), self.pb(t.rstd), self.pb(t.x), self.pb(t.w), A::I(sh.c as i32), A::F(sh.eps), A::F(sh.w_shift())];
        self.launch("rmsnorm_fwd", (sh.n as u32, 1, 1), row_block(sh.c), 0, &args);
    }
    fn rmsnorm_bwd(&self, t: RmsNormBwd<'_, CudaBuf>, sh: &NormShape) {
        t.check(sh);
        if sh.n == 0 {
            return;
        }
        let (n, c) = (sh.n, sh.c);
        let chunks = n.div_ceil(COL_CHUNK);
        let part = self.alloc::<f32>(chunks * c, "rmsnorm dw partials");
        let args = [self.p(&part), self.pb(t.dy), self.pb(t.x), self.pb(t.rstd), A::I(n as i32), A::I(c as i32), A::I(COL_CHUNK as i32)];
        self.launch("rmsnorm_dw_partial", ((c as u32).div_ceil(256), grid_yz(chunks), 1), 256, 0, &args);
        self.col_finish(t.dw, &part, chunks, c);
        let args = [self.pb(t.dx), self.pb(t.dy), self.pb(t.x), self.pb(t.w), self.pb(t.rstd), A::I(c as i32), A::F(sh.w_shift())];
        self.launch("rmsnorm_bwd_dx", (n as u32, 1, 1), row_block(c), 0, &args);
    }
    fn layernorm_fwd(&self, t: LayerNormFwd<'_, CudaBuf>, sh: &NormShape) {
        t.check(sh);
        let args = [self.pb(t.out), self.pb(t.mean), self.pb(t.rstd), self.pb(t.x), self.pb(t.w), self.pb(t.b), A::I(sh.c as i32), A::F(sh.eps)];
        self.launch("layernorm_fwd", (sh.n as u32, 1, 1), row_block(sh.c), 0, &args);
    }
    fn layernorm_bwd(&self, t: LayerNormBwd<'_, CudaBuf>, sh: &NormShape) {
        t.check(sh);
        if sh.n == 0 {
            return;
        }
        let (n, c) = (sh.n, sh.c);
        let chunks = n.div_ceil(COL_CHUNK);
        let pw = self.alloc::<f32>(chunks * c, "layernorm dw partials");
        let pbias = self.alloc::<f32>(chunks * c, "layernorm db partials");
        let args = [self.p(&pw), self.p(&pbias), self.pb(t.dy), self.pb(t.x), self.pb(t.mean), self.pb(t.rstd), A::I(n as i32), A::I(c as i32), A::I(COL_CHUNK as i32)];
        self.launch("layernorm_dwdb_partial", ((c as u32).div_ceil(256), grid_yz(chunks), 1), 256, 0, &args);
        self.col_finish(t.dw, &pw, chunks, c);
        self.col_finish(t.db, &pbias, chunks, c);
        let args = [self.pb(t.dx), self.pb(t.dy), self.pb(t.x), self.pb(t.w), self.pb(t.mean), self.pb(t.rstd), A::I(c as i32)];
        self.launch("layernorm_bwd_dx", (n as u32, 1, 1), row_block(c), 0, &args);
    }
    fn rope_fwd(&self, x: &mut CudaBuf, positions: &CudaIds, inv_freq: &CudaBuf, sh: &RopeShape) {
        sh.check("rope_fwd", x, positions, inv_freq);
        self.rope(x, positions, inv_freq, sh, 1.0);
    }
    fn rope_bwd(&self, dx: &mut CudaBuf, positions: &CudaIds, inv_freq: &CudaBuf, sh: &RopeShape) {
        sh.check("rope_bwd", dx, positions, inv_freq);
        self.rope(dx, positions, inv_freq, sh, -1.0);
    }

    fn attention_fwd(&self, out: &mut CudaBuf, lse: &mut CudaBuf, x: &AttnInputs<'_, CudaBuf, CudaIds>, sh: &AttnShape) {
        x.check("attention_fwd", sh);
        check_attn_outputs("attention_fwd", sh, out, lse, None);
        self.attn_head_dim(sh);
        let mut args = vec![self.pb(out), self.pb(lse)];
        args.extend(self.attn_args(x, sh));
        args.push(A::I(sh.batch as i32));
        let grid = (sh.tq.div_ceil(att::Q_ROWS) as u32, grid_yz(sh.n_heads), grid_yz(sh.batch));
        self.launch("attn_fwd", grid, att::BLOCK, att::fwd_smem_bytes(sh.head_dim), &args);
    }
    fn attention_bwd(&self, d: AttnGrads<'_, CudaBuf>, dout: &CudaBuf, out: &CudaBuf, lse: &CudaBuf, x: &AttnInputs<'_, CudaBuf, CudaIds>, sh: &AttnShape) {
        x.check("attention_bwd", sh);
        check_attn_outputs("attention_bwd", sh, out, lse, Some(&d));
        check_attn_outputs("attention_bwd", sh, dout, lse, None);
        self.attn_head_dim(sh);
        let rows = sh.batch * sh.tq * sh.n_heads;
        let dsum = self.alloc::<f32>(rows, "attention D_i");
        let dot_grid = ((rows as u32).div_ceil(att::DOT_ROWS as u32).clamp(1, 65535 * 4), 1, 1);
        self.launch("attn_bwd_dot", dot_grid, att::DOT_BLOCK, 0, &[self.p(&dsum), self.pb(dout), self.pb(out), A::U(rows as u64), A::I(sh.head_dim as i32)]);
        let common = self.attn_bwd_common(x, sh);
        let bk = att::dkdv_keys(sh.head_dim);
        let mut args = vec![self.pb(d.dk), self.pb(d.dv), self.pb(dout), self.pb(x.q), self.pb(x.k), self.pb(x.v), self.pb(lse), self.p(&dsum)];
        args.extend_from_slice(&common);
        args.extend([A::I(bk as i32), A::I(sh.batch as i32)]);
        let grid = (sh.tk.div_ceil(bk) as u32, grid_yz(sh.n_kv_heads), grid_yz(sh.batch));
        self.launch("attn_bwd_dkdv", grid, att::BLOCK, att::dkdv_smem_bytes(sh.head_dim), &args);
        let mut args = vec![self.pb(d.dq), self.pb(dout), self.pb(x.q), self.pb(x.k), self.pb(x.v), self.pb(lse), self.p(&dsum)];
        args.extend_from_slice(&common);
        args.push(A::I(sh.batch as i32));
        let grid = (sh.tq.div_ceil(att::Q_ROWS) as u32, grid_yz(sh.n_heads), grid_yz(sh.batch));
        self.launch("attn_bwd_dq", grid, att::BLOCK, att::dq_smem_bytes(sh.head_dim), &args);
    }
    fn kv_write(&self, cache: &mut CudaBuf, new: &CudaBuf, pos: &CudaIds, sh: &KvShape) {
        sh.check(cache, new, pos);
        let args = [self.pb(cache), self.pb(new), self.pi(pos), A::I(sh.batch as i32), A::I(sh.t_new as i32), A::I(sh.t_cap as i32), A::I(sh.width as i32)];
        self.ew("kv_write", sh.batch * sh.t_new * sh.width, &args);
    }
    fn softmax_fwd(&self, out: &mut CudaBuf, x: &CudaBuf, r: Rows, temperature: f32) {
        check::softmax("softmax_fwd", &[("out", &*out), ("x", x)], r);
        self.launch("softmax_fwd", (r.n as u32, 1, 1), row_block(r.c), 0, &[self.pb(out), self.pb(x), A::I(r.c as i32), A::F(temperature)]);
    }
    fn softmax_bwd(&self, dx: &mut CudaBuf, dy: &CudaBuf, y: &CudaBuf, r: Rows) {
        check::softmax("softmax_bwd", &[("dx", &*dx), ("dy", dy), ("y", y)], r);
        self.launch("softmax_bwd", (r.n as u32, 1, 1), row_block(r.c), 0, &[self.pb(dx), self.pb(dy), self.pb(y), A::I(r.c as i32)]);
    }
    fn swiglu_fwd(&self, out: &mut CudaBuf, gate: &CudaBuf, up: &CudaBuf, len: usize) {
        check::len("swiglu_fwd", &[("out", &*out), ("gate", gate), ("up", up)], len);
        self.ew("swiglu_fwd", len, &[self.pb(out), self.pb(gate), self.pb(up), A::U(len as u64)]);
    }
    fn swiglu_bwd(&self, dgate: &mut CudaBuf, dup: &mut CudaBuf, dout: &CudaBuf, gate: &CudaBuf, up: &CudaBuf, len: usize) {
        check::len("swiglu_bwd", &[("dgate", &*dgate), ("dup", &*dup), ("dout", dout), ("gate", gate), ("up", up)], len);
        self.ew("swiglu_bwd", len, &[self.pb(dgate), self.pb(dup), self.pb(dout), self.pb(gate), self.pb(up), A::U(len as u64)]);
    }
    fn gelu_fwd(&self, out: &mut CudaBuf, x: &CudaBuf, len: usize) {
        check::len("gelu_fwd", &[("out", &*out), ("x", x)], len);
        self.ew("gelu_fwd", len, &[self.pb(out), self.pb(x), A::U(len as u64)]);
    }
    fn gelu_bwd(&self, dx: &mut CudaBuf, dout: &CudaBuf, x: &CudaBuf, len: usize) {
        check::len("gelu_bwd", &[("dx", &*dx), ("dout", dout), ("x", x)], len);
        self.ew("gelu_bwd", len, &[self.pb(dx), self.pb(dout), self.pb(x), A::U(len as u64)]);
    }
    fn geglu_fwd(&self, out: &mut CudaBuf, gate: &CudaBuf, up: &CudaBuf, len: usize) {
        check::len("geglu_fwd", &[("out", &*out), ("gate", gate), ("up", up)], len);
        self.ew("geglu_fwd", len, &[self.pb(out), self.pb(gate), self.pb(up), A::U(len as u64)]);
    }
    fn geglu_bwd(&self, dgate: &mut CudaBuf, dup: &mut CudaBuf, dout: &CudaBuf, gate: &CudaBuf, up: &CudaBuf, len: usize) {
        check::len("geglu_bwd", &[("dgate", &*dgate), ("dup", &*dup), ("dout", dout), ("gate", gate), ("up", up)], len);
        self.ew("geglu_bwd", len, &[self.pb(dgate), self.pb(dup), self.pb(dout), self.pb(gate), self.pb(up), A::U(len as u64)]);
    }
    fn softcap_fwd(&self, x: &mut CudaBuf, len: usize, cap: f32) {
        check::softcap("softcap_fwd", &[("x", &*x)], len, cap);
        self.ew("softcap_fwd", len, &[self.pb(x), A::U(len as u64), A::F(cap)]);
    }
    fn softcap_bwd(&self, dy: &mut CudaBuf, y: &CudaBuf, len: usize, cap: f32) {
        check::softcap("softcap_bwd", &[("dy", &*dy), ("y", y)], len, cap);
        self.ew("softcap_bwd", len, &[self.pb(dy), self.pb(y), A::U(len as u64), A::F(cap)]);
    }
    fn relu_fwd(&self, out: &mut CudaBuf, x: &CudaBuf, len: usize) {
        check::len("relu_fwd", &[("out", &*out), ("x", x)], len);
        self.ew("relu_fwd", len, &[self.pb(out), self.pb(x), A::U(len as u64)]);
    }
    fn relu_bwd(&self, dx: &mut CudaBuf, dout: &CudaBuf, x: &CudaBuf, len: usize) {
        check::len("relu_bwd", &[("dx", &*dx), ("dout", dout), ("x", x)], len);
        self.ew("relu_bwd", len, &[self.pb(dx), self.pb(dout), self.pb(x), A::U(len as u64)]);
    }
    fn dropout(&self, out: &mut CudaBuf, x: &CudaBuf, d: &Dropout, len: usize) {
        check::len("dropout", &[("out", &*out), ("x", x)], len);
        // the u32 key and threshold travel as 4-byte ints (their bits)
        let args = [self.pb(out), self.pb(x), A::U(len as u64), A::I(d.key() as i32), A::I(d.threshold as i32), A::F(d.scale), A::I(d.accumulate as i32)];
        self.ew("dropout", len, &args);
    }
    fn bias_add(&self, x: &mut CudaBuf, bias: &CudaBuf, r: Rows) {
        check::bias("bias_add", x, bias, r);
        self.ew("bias_add_f32", r.len(), &[self.pb(x), self.pb(bias), A::U(r.n as u64), A::I(r.c as i32)]);
    }
    fn bias_bwd(&self, dbias: &mut CudaBuf, dy: &CudaBuf, r: Rows) {
        check::bias("bias_bwd", dy, dbias, r);
        if r.n == 0 {
            return;
        }
        let chunks = r.n.div_ceil(COL_CHUNK);
        let part = self.alloc::<f32>(chunks * r.c, "bias_bwd partials");
        let args = [self.p(&part), self.pb(dy), A::I(r.n as i32), A::I(r.c as i32), A::I(COL_CHUNK as i32)];
        self.launch("col_partial_f32", ((r.c as u32).div_ceil(256), grid_yz(chunks), 1), 256, 0, &args);
        self.col_finish(dbias, &part, chunks, r.c);
    }
    fn xent_fwd_bwd(&self, logits: &mut CudaBuf, losses: &mut CudaBuf, targets: &CudaIds, coef: &CudaBuf, r: Rows) {
        check::vocab("xent_fwd_bwd", &[("logits", &*logits)], &[("losses", &*losses), ("coef", coef)], targets, r);
        let args = [self.pb(logits), self.pb(losses), self.pi(targets), self.pb(coef), A::I(r.c as i32), self.perr()];
        self.launch("xent_fwd_bwd", (r.n as u32, 1, 1), row_block(r.c), 0, &args);
    }
    fn token_logprobs(&self, logp: &mut CudaBuf, greedy: &mut CudaBuf, logits: &CudaBuf, targets: &CudaIds, r: Rows) {
        check::vocab("token_logprobs", &[("logits", logits)], &[("logp", &*logp), ("greedy", &*greedy)], targets, r);
        let args = [self.pb(logp), self.pb(greedy), self.pb(logits), self.pi(targets), A::I(r.c as i32), self.perr()];
        self.launch("token_logprobs", (r.n as u32, 1, 1), row_block(r.c), 0, &args);
    }
    fn token_logprobs_bwd(&self, dlogits: &mut CudaBuf, logits: &CudaBuf, targets: &CudaIds, coef: &CudaBuf, r: Rows) {
        check::vocab("token_logprobs_bwd", &[("dlogits", &*dlogits), ("logits", logits)], &[("coef", coef)], targets, r);
        let args = [self.pb(dlogits), self.pb(logits), self.pi(targets), self.pb(coef), A::I(r.c as i32), self.perr()];
        self.launch("token_logprobs_bwd", (r.n as u32, 1, 1), row_block(r.c), 0, &args);
    }
    fn adamw(&self, p: &mut CudaBuf, g: &CudaBuf, m: &mut CudaBuf, v: &mut CudaBuf, h: &AdamW, len: usize) {
        check::len("adamw", &[("p", &*p), ("g", g), ("m", &*m), ("v", &*v)], len);
        self.adamw_impl([self.pb(p), self.pb(g), self.pb(m), self.pb(v), A::P(0)], h, len);
    }
    fn sum_squares(&self, acc: &mut CudaBuf, slot: usize, x: &CudaBuf, len: usize) {
        check::len("sum_squares", &[("acc", &*acc)], slot + 1);
        check::len("sum_squares", &[("x", x)], len);
        let part = self.alloc::<f64>(SSQ_BLOCKS, "sum_squares partials");
        self.launch("sum_squares_partial", (SSQ_BLOCKS as u32, 1, 1), 256, 0, &[self.p(&part), self.pb(x), A::U(len as u64)]);
        self.launch("sum_squares_finish", (1, 1, 1), 256, 0, &[self.pb(acc), A::I(slot as i32), self.p(&part), A::I(SSQ_BLOCKS as i32)]);
    }
}

/// The kernels' `int window`, clamped: positions there are ints, so a wider window changes nothing.
fn attn_window(sh: &AttnShape) -> A {
    A::I(sh.window.min(i32::MAX as usize) as i32)
}

impl CudaBackend {
    fn rope(&self, x: &CudaBuf, positions: &CudaIds, inv_freq: &CudaBuf, sh: &RopeShape, sign: f32) {
        let args = [self.pb(x), self.pi(positions), self.pb(inv_freq), A::I(sh.n as i32), A::I(sh.n_heads as i32), A::I(sh.head_dim as i32), A::F(sign)];
        self.ew("rope", sh.pairs(), &args);
    }

    /// attn_fwd's arguments after out and lse.
    fn attn_args(&self, x: &AttnInputs<'_, CudaBuf, CudaIds>, sh: &AttnShape) -> Vec<A> {
        let al = x.alibi.map_or(A::P(0), |a| self.pb(a));
        let mut args = vec![self.pb(x.q), self.pb(x.k), self.pb(x.v), self.pi(x.q_pos0), self.pi(x.kv_len), al];
        args.extend([A::I(sh.tq as i32), A::I(sh.tk as i32), A::I(sh.n_heads as i32), A::I(sh.n_kv_heads as i32), A::I(sh.head_dim as i32)]);
        args.extend([A::F(sh.scale), A::F(sh.softcap), A::I(sh.causal as i32), attn_window(sh), A::I(self.use_bf16() as i32)]);
        args
    }

    /// The arguments attn_bwd_dkdv and attn_bwd_dq share after their tensors.
    fn attn_bwd_common(&self, x: &AttnInputs<'_, CudaBuf, CudaIds>, sh: &AttnShape) -> [A; 13] {
        let al = x.alibi.map_or(A::P(0), |a| self.pb(a));
        [
            self.pi(x.q_pos0),
            self.pi(x.kv_len),
            al,
            A::I(sh.tq as i32),
            A::I(sh.tk as i32),
            A::I(sh.n_heads as i32),
            A::I(sh.n_kv_heads as i32),
            A::I(sh.head_dim as i32),
            A::F(sh.scale),
            A::F(sh.softcap),
            A::I(sh.causal as i32),
            attn_window(sh),
            A::I(self.use_bf16() as i32),
        ]
    }

    /// dtable[ids] += dout, deterministic: the tokens are grouped by id on the host (sorted by
    /// (id, position)) and each group's rows are summed in position order by one block.
    fn embedding_bwd_grouped(&self, dtable: &CudaBuf, dout: &CudaBuf, ids: &CudaIds, r: Rows) {
        let (n, c) = (r.n, r.c);
        let mut host = vec![0u32; n];
        self.inner.stream.memcpy_dtoh(&ids.0.slice(..n), &mut host).unwrap_or_else(|e| panic!("cuda: embedding_bwd ids: {e:?}"));
        self.synchronize();
        let v = dtable.0.len() / c.max(1);
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by_key(|&i| (host[i as usize], i));
        let mut starts = vec![0u32];
        for i in 1..=n {
            if i == n || host[order[i] as usize] != host[order[i - 1] as usize] {
                starts.push(i as u32);
            }
        }
        for &s in &starts[..starts.len() - 1] {
            let id = host[order[s as usize] as usize] as usize;
            assert!(id < v, "embedding_bwd: id {id} outside the table of {v} rows");
        }
        let groups = starts.len() - 1;
        let order_d = self.upload_ids(&order);
        let starts_d = self.upload_ids(&starts);
        let col_blocks = (c as u32).div_ceil(256).min(8);
        let args = [self.pb(dtable), self.pb(dout), self.pi(ids), self.pi(&order_d), self.pi(&starts_d), A::I(c as i32)];
        self.launch("embedding_bwd", (groups as u32, col_blocks, 1), 256, 0, &args);
    }
}
