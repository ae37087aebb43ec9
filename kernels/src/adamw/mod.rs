//! Fused AdamW with torch semantics (`torch.optim.AdamW`, single-tensor path):
//! decoupled decay `p ← p·(1 − lr·wd)`, `m ← m + (1−β1)(g − m)`, `v ← β2·v + (1−β2)·g²`,
//! `p ← p − (lr/bc1) · m / (√v/√bc2 + ε)`, with bias corrections `bc = 1 − βᵗ`.

use rayon::prelude::*;

/// The GPU sources of the fused AdamW step.
pub const FAMILY: crate::Family = crate::Family { name: "adamw", cuda: include_str!("adamw.cu"), cuda_kernels: &["adamw_f32"], wgsl: &[("adamw", WGSL)] };

/// Entry point `adamw` (one thread per element; the scalars from [`AdamW::scalars`]).
pub const WGSL: &str = include_str!("adamw.wgsl");

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step count, for the bias corrections.
    pub step: u64,
    /// Multiplies the gradient first: the clip coefficient of global-norm clipping (1 = none).
    pub grad_scale: f32,
}

impl AdamW {
    /// The step's scalars, computed in f64 on the host as torch does in Python:
    /// (decay factor, step size lr/bc1, √bc2).
    pub fn scalars(&self) -> (f32, f32, f32) {
        let bc1 = 1.0 - (self.beta1 as f64).powi(self.step as i32);
        let bc2 = 1.0 - (self.beta2 as f64).powi(self.step as i32);
        let decay = 1.0 - self.lr as f64 * self.weight_decay as f64;
        (decay as f32, (self.lr as f64 / bc1) as f32, bc2.sqrt() as f32)
    }
}

const PAR_CHUNK: usize = 1 << 13;

/// One AdamW step over a parameter tensor (all slices the same length).
pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamW) {
    let n = p.len();
    assert!(g.len() >= n && m.len() >= n && v.len() >= n, "adamw: state shorter than the parameter");
    p.par_chunks_mut(PAR_CHUNK)
        .zip(g[..n].par_chunks(PAR_CHUNK))
        .zip(m[..n].par_chunks_mut(PAR_CHUNK).zip(v[..n].par_chunks_mut(PAR_CHUNK)))
        .for_each(|((p, g), (m, v))| adamw_chunk(p, g, m, v, h));
}

crate::vmath::multiversion! {
    /// The update of one chunk: zipped slices (no bounds checks), so sqrt and the division
    /// vectorise; IEEE sqrt/div are exact, so the result is the scalar loop's, bit for bit.
    fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamW) -> () {
        let (decay, step_size, bc2_sqrt) = h.scalars();
        let (b1w, b2, b2w, eps, gs) = (1.0 - h.beta1, h.beta2, 1.0 - h.beta2, h.eps, h.grad_scale);
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            // g·1 = g exactly, so scaling unconditionally changes nothing when there is no clip
            let gi = g * gs;
            *p *= decay;
            *m += b1w * (gi - *m);
            *v = *v * b2 + b2w * gi * gi;
            let denom = v.sqrt() / bc2_sqrt + eps;
            *p += -step_size * (*m / denom);
        }
    }
}
