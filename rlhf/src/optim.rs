//! AdamW over a model's trainable parameters (torch semantics, fused kernel on the backend),
//! global-norm clipping and the optimizer state that checkpoints carry.

use okapi_model::{Grads, Model};
use okapi_runtime::{AdamW, Backend};

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl AdamWConfig {
    /// Refuses values that cannot train (β outside [0, 1), ε ≤ 0, a negative or non-finite
    /// weight decay), naming the flag.
    pub fn validate(&self) -> Result<(), crate::TrainError> {
        let bad = |setting: &'static str, problem: String| Err(crate::TrainError::Setting { setting, problem });
        if !((0.0..1.0).contains(&self.beta1) && (0.0..1.0).contains(&self.beta2)) {
            return bad("--adam-betas", format!("{},{}: expected each in [0, 1)", self.beta1, self.beta2));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("--adam-eps", format!("{}: expected a finite positive number", self.eps));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("--weight-decay", format!("{}: expected a finite non-negative number", self.weight_decay));
        }
        Ok(())
    }

    /// The settings as flags, for a resume's check.
    pub fn settings(&self) -> [(&'static str, serde_json::Value); 3] {
        [("--adam-betas", format!("{},{}", self.beta1, self.beta2).into()), ("--adam-eps", self.eps.into()), ("--weight-decay", self.weight_decay.into())]
    }
}

/// First and second moments of every trainable parameter (`None` where frozen).
pub struct Optimizer<B: Backend> {
    pub cfg: AdamWConfig,
    pub m: Vec<Option<B::Buf>>,
    pub v: Vec<Option<B::Buf>>,
    /// optimizer steps taken (torch's `state['step']`)
    pub step: u64,
    norms: B::Buf,
}

impl<B: Backend> Optimizer<B> {
    pub fn new(model: &Model<B>, grads: &Grads<B>, cfg: AdamWConfig) -> Self {
        let be = &model.be;
        let zeros = |i: usize| grads.bufs[i].as_ref().map(|_| be.zeros(model.info[i].numel()));
        Optimizer {
            cfg,
            m: (0..model.info.len()).map(zeros).collect(),
            v: (0..model.info.len()).map(zeros).collect(),
            step: 0,
            norms: be.zeros(model.info.len().max(1)),
        }
    }

    /// Global L2 norm of the gradients (as `clip_grad_norm_` returns it, before clipping).
    pub fn grad_norm(&mut self, model: &Model<B>, grads: &Grads<B>) -> f64 {
        let be = &model.be;
        let mut any = false;
        for (i, g) in grads.bufs.iter().enumerate() {
            // frozen parameters' slots stay at the 0 they were created with
            if let Some(g) = g {
                be.sum_squares(&mut self.norms, i, g, model.info[i].numel());
                any = true;
            }
        }
        if !any {
            return 0.0;
        }
        be.read(&self.norms, model.info.len()).iter().map(|&x| x as f64).sum::<f64>().sqrt()
    }

    /// One AdamW step at learning rate `lr`, gradients multiplied by `grad_scale` first (the
    /// clip coefficient). Weight decay only on tensors with ≥ 2 dims.
    pub fn step(&mut self, model: &mut Model<B>, grads: &Grads<B>, lr: f32, grad_scale: f32) {
        self.step += 1;
        let Model { be, values, info, .. } = model;
        for (i, g) in grads.bufs.iter().enumerate() {
            let (Some(g), Some(m), Some(v)) = (g, self.m[i].as_mut(), self.v[i].as_mut()) else { continue };
            let h = AdamW {
                lr,
                beta1: self.cfg.beta1,
                beta2: self.cfg.beta2,
                eps: self.cfg.eps,
                weight_decay: if info[i].decays() { self.cfg.weight_decay } else { 0.0 },
                step: self.step,
                grad_scale,
            };
            be.adamw(&mut values[i], g, m, v, &h, info[i].numel());
        }
    }
}

/// torch's `clip_grad_norm_` coefficient: `min(1, max_norm / (norm + 1e-6))`; no clipping when
/// `max_norm` ≤ 0.
pub fn clip_coef(norm: f64, max_norm: f64) -> f32 {
    if max_norm <= 0.0 {
        1.0
    } else {
        (max_norm / (norm + 1e-6)).min(1.0) as f32
    }
}
