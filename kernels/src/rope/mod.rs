//! Rotary position embedding in HF's rotate-half layout: for each head the pairs are
//! `(x[i], x[i + D/2])`, rotated by angle `pos · inv_freq[i]`.

use rayon::prelude::*;

/// The GPU sources of RoPE.
pub const FAMILY: crate::Family = crate::Family { name: "rope", cuda: include_str!("rope.cu"), cuda_kernels: &["rope"], wgsl: &[("rope", WGSL)] };

/// Entry point `rope` (one thread per rotated pair; sign −1 applies the inverse rotation).
pub const WGSL: &str = include_str!("rope.wgsl");

/// Rope scaling types that change the inverse frequencies (`rope_scaling` / `rope_parameters`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// positions divided by `factor` (≡ inverse frequencies divided by it)
    Linear { factor: f32 },
    /// Llama 3.1: low frequencies divided by `factor`, a smooth ramp between the two wavelengths
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_max_position_embeddings: usize },
}

/// Inverse frequencies `(D/2)` as transformers computes them in f32:
/// `1 / theta^(arange(0, D, 2)/D)`, then the scaling rule.
pub fn rope_inv_freq(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Vec<f32> {
    let base = theta as f32;
    let inv: Vec<f32> = (0..head_dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32)).collect();
    match *scaling {
        RopeScaling::None => inv,
        RopeScaling::Linear { factor } => inv.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            let old = original_max_position_embeddings as f32;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            inv.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    // transformers' `~(wavelen < high) * ~(wavelen > low)`, NaN included
                    #[allow(clippy::neg_cmp_op_on_partial_ord)]
                    let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
                    if medium {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect()
        }
    }
}

fn rotate(x: &mut [f32], n_heads: usize, head_dim: usize, positions: &[u32], inv_freq: &[f32], sign: f32) {
    let half = head_dim / 2;
    let width = n_heads * head_dim;
    let n = x.len() / width.max(1);
    // (cos, sin·sign) of one position into two slices of D/2
    let angles = |pos: u32, cos: &mut [f32], sin: &mut [f32]| {
        for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(inv_freq) {
            let a = pos as f32 * f;
            *c = a.cos();
            *s = a.sin() * sign;
        }
    };
    // per head: the halves (x1, x2) = (x[..D/2], x[D/2..]) zipped with cos/sin, which vectorises
    let apply = |row: &mut [f32], cos: &[f32], sin: &[f32]| {
        for head in row.chunks_exact_mut(head_dim) {
            let (lo, hi) = head.split_at_mut(half);
            for (((x1, x2), &c), &s) in lo.iter_mut().zip(hi[..half].iter_mut()).zip(cos).zip(sin) {
                let (a, b) = (*x1, *x2);
                *x1 = a * c - b * s;
                *x2 = b * c + a * s;
            }
        }
    };
    // A training batch repeats positions 0..T for every sequence: compute each position's
    // (cos, sin) once (libm's sin/cos dominate otherwise) — the same f32 values, so the same bits.
    let max_pos = positions[..n].iter().copied().max().unwrap_or(0) as usize;
    if (max_pos + 1) * 2 <= n {
        let mut table = vec![0f32; (max_pos + 1) * 2 * half];
        table.par_chunks_mut(2 * half).enumerate().for_each(|(p, t)| {
            let (c, s) = t.split_at_mut(half);
            angles(p as u32, c, s);
        });
        x.par_chunks_mut(width).zip(positions.par_iter()).for_each(|(row, &pos)| {
            let t = &table[pos as usize * 2 * half..][..2 * half];
            apply(row, &t[..half], &t[half..]);
        });
    } else {
        x.par_chunks_mut(width).zip(positions.par_iter()).for_each_init(
            || vec![0f32; 2 * half],
            |cs, (row, &pos)| {
                let (c, s) = cs.split_at_mut(half);
                angles(pos, c, s);
                apply(row, c, s);
            },
        );
    }
}

/// In place: x (N,H,D) rotated by each row's position. positions: (N) inv_freq: (D/2)
pub fn rope_fwd(x: &mut [f32], n_heads: usize, head_dim: usize, positions: &[u32], inv_freq: &[f32]) {
    rotate(x, n_heads, head_dim, positions, inv_freq, 1.0);
}

/// In place: dx = Rᵀ·dy, the rotation by the opposite angle (`=`: the buffer is overwritten).
pub fn rope_bwd(dx: &mut [f32], n_heads: usize, head_dim: usize, positions: &[u32], inv_freq: &[f32]) {
    rotate(dx, n_heads, head_dim, positions, inv_freq, -1.0);
}
