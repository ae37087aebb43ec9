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

/// First and second moments of every trainable parameter (`None` where frozen), on the device
/// — or, offloaded, on the host with fp32 master weights ([`Offload`]).
pub struct Optimizer<B: Backend> {
    pub cfg: AdamWConfig,
    pub m: Vec<Option<B::Buf>>,
    pub v: Vec<Option<B::Buf>>,
    /// optimizer steps taken (torch's `state['step']`)
    pub step: u64,
    norms: B::Buf,
    /// `Model::offload_optimizer`: the state in host memory, stepped on the CPU
    pub offload: Option<Offload>,
    /// the tensors whose moments this optimizer holds and steps (all trainable ones, or with
    /// ZeRO-1 this rank's share)
    pub owned: Vec<bool>,
    /// the whole moments of every trainable tensor, gathered from the ranks for a checkpoint
    /// (ZeRO-1), read instead of `m`/`v` while set
    pub gathered: Option<Vec<Option<[Vec<f32>; 2]>>>,
}

/// Optimizer state offloaded to the host (ZeRO-Offload's split): fp32 master weights and both
/// AdamW moments per trainable parameter live in host memory; each step reads the gradients
/// from the device, runs the fused AdamW kernel on the CPU (vectorised, threads) and writes
/// the updated weights back. The device keeps only weights and gradients.
pub struct Offload {
    pub master: Vec<Option<Vec<f32>>>,
    pub m: Vec<Option<Vec<f32>>>,
    pub v: Vec<Option<Vec<f32>>>,
}

impl<B: Backend> Optimizer<B> {
    /// Zero moments for every trainable parameter (those with a gradient buffer): on the
    /// device, or on the host with fp32 master weights when `model.offload_optimizer`.
    pub fn new(model: &Model<B>, grads: &Grads<B>, cfg: AdamWConfig) -> Self {
        Self::new_owned(model, grads, cfg, &vec![true; model.info.len()])
    }

    /// An optimizer of the trainable tensors `owned` marks (ZeRO-1: this rank's share): the
    /// others get no moments, and [`Optimizer::step`] leaves them as they are.
    pub fn new_owned(model: &Model<B>, grads: &Grads<B>, cfg: AdamWConfig, owned: &[bool]) -> Self {
        let be = &model.be;
        let n = model.info.len();
        let trains = |i: usize| grads.bufs[i].is_some() && owned[i];
        let none = || (0..n).map(|_| None).collect::<Vec<_>>();
        let on_device = || (0..n).map(|i| trains(i).then(|| be.zeros(model.info[i].numel()))).collect::<Vec<_>>();
        let on_host = || (0..n).map(|i| trains(i).then(|| vec![0f32; model.info[i].numel()])).collect::<Vec<_>>();
        let (m, v, offload) = if model.offload_optimizer {
            let master = (0..n).map(|i| trains(i).then(|| model.host_value(i))).collect();
            (none(), none(), Some(Offload { master, m: on_host(), v: on_host() }))
        } else {
            (on_device(), on_device(), None)
        };
        Optimizer { cfg, m, v, step: 0, norms: be.zeros(n.max(1)), offload, owned: owned.to_vec(), gathered: None }
    }

    /// With the state offloaded: the master weights copied again from the model (after a resume
    /// replaced its weights).
    pub fn refresh_master(&mut self, model: &Model<B>) {
        if let Some(off) = self.offload.as_mut() {
            for (i, w) in off.master.iter_mut().enumerate() {
                if let Some(w) = w {
                    *w = model.host_value(i);
                }
            }
        }
    }

    /// Moment `which` (0: m, 1: v) of parameter `i` on the host, wherever it lives.
    pub fn moment_host(&self, model: &Model<B>, i: usize, which: usize) -> Option<Vec<f32>> {
        if let Some(all) = &self.gathered {
            return all[i].as_ref().map(|mv| mv[which].clone());
        }
        match &self.offload {
            Some(off) => [&off.m, &off.v][which][i].clone(),
            None => [&self.m, &self.v][which][i].as_ref().map(|b| model.be.read(b, model.info[i].numel())),
        }
    }

    /// Sets moment `which` of parameter `i` (a trainable one) from host values.
    pub fn set_moment(&mut self, model: &Model<B>, i: usize, which: usize, data: &[f32]) {
        match self.offload.as_mut() {
            Some(off) => {
                if let Some(dst) = [&mut off.m, &mut off.v][which][i].as_mut() {
                    dst.copy_from_slice(data);
                }
            }
            None => {
                if let Some(dst) = [&mut self.m, &mut self.v][which][i].as_mut() {
                    model.be.write(dst, data);
                }
            }
        }
    }

    /// Whether parameter `i` has optimizer state (it trains).
    pub fn has_state(&self, i: usize) -> bool {
        match &self.offload {
            Some(off) => off.m[i].is_some(),
            None => self.m[i].is_some(),
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
            let Some(g) = g else { continue };
            let h = AdamW {
                lr,
                beta1: self.cfg.beta1,
                beta2: self.cfg.beta2,
                eps: self.cfg.eps,
                weight_decay: if info[i].decays() { self.cfg.weight_decay } else { 0.0 },
                step: self.step,
                grad_scale,
            };
            let n = info[i].numel();
            match self.offload.as_mut() {
                Some(off) => {
                    let (Some(p), Some(m), Some(v)) = (off.master[i].as_mut(), off.m[i].as_mut(), off.v[i].as_mut()) else { continue };
                    let gh = be.read(g, n);
                    okapi_kernels::adamw::adamw(p, &gh, m, v, &h);
                    be.write(&mut values[i], p);
                }
                None => {
                    let (Some(m), Some(v)) = (self.m[i].as_mut(), self.v[i].as_mut()) else { continue };
                    be.adamw(&mut values[i], g, m, v, &h, n);
                }
            }
        }
    }
}

/// ZeRO-1 over `comm`: which rank owns each trainable tensor's AdamW state, and the exchanges
/// that keep every rank's model whole.
pub mod zero {
    use super::Optimizer;
    use okapi_model::{Grads, Model};
    use okapi_runtime::{Backend, Collective, CommError};

    /// The owner of each tensor (`None`: frozen): trainable tensors in order, each to the rank
    /// holding the fewest elements so far (ties to the lowest rank) — the same on every rank.
    pub fn owners<B: Backend>(model: &Model<B>, grads: &Grads<B>, world: usize) -> Vec<Option<usize>> {
        let mut load = vec![0usize; world];
        (0..model.info.len())
            .map(|i| {
                grads.bufs[i].as_ref()?;
                let r = (0..world).min_by_key(|&r| (load[r], r)).expect("a world has a rank");
                load[r] += model.info[i].numel();
                Some(r)
            })
            .collect()
    }

    /// An optimizer for `model`'s trainable tensors (those `grads` holds) under ZeRO stage
    /// `stage`: with stage 1 or 2 on several ranks, of this rank's share of the tensors only, with
    /// the trainable mask that [`share_params`] and [`gather_moments`] read; otherwise the
    /// whole state (and no mask).
    pub fn optimizer<B: Backend>(model: &Model<B>, grads: &Grads<B>, adam: super::AdamWConfig, stage: u8, comm: &dyn Collective) -> (Optimizer<B>, Option<Vec<bool>>) {
        if stage >= 1 && comm.world() > 1 {
            let owned: Vec<bool> = owners(model, grads, comm.world()).iter().map(|o| *o == Some(comm.rank())).collect();
            (Optimizer::new_owned(model, grads, adam, &owned), Some(grads.bufs.iter().map(Option::is_some).collect()))
        } else {
            (Optimizer::new(model, grads, adam), None)
        }
    }

    /// The trainable tensors' values summed over the ranks, each rank giving its own tensors
    /// and −0.0 for the others: every rank gets the owners' values exactly (x + −0 = x for
    /// every x, −0 included).
    fn exchange<B: Backend>(opt: &Optimizer<B>, model: &Model<B>, comm: &dyn Collective, trainable: &[bool]) -> Result<Vec<f32>, CommError> {
        let mut host = Vec::new();
        for i in (0..model.info.len()).filter(|&i| trainable[i]) {
            let n = model.info[i].numel();
            if opt.owned[i] {
                host.extend(model.be.read(&model.values[i], n));
            } else {
                host.extend(std::iter::repeat_n(-0.0f32, n));
            }
        }
        comm.all_reduce_sum(&mut host)?;
        Ok(host)
    }

    /// After a step: every rank's trainable tensors take their owners' new values.
    pub fn share_params<B: Backend>(opt: &Optimizer<B>, model: &mut Model<B>, comm: &dyn Collective, trainable: &[bool]) -> Result<(), CommError> {
        let host = exchange(opt, model, comm, trainable)?;
        let mut at = 0;
        for i in (0..model.info.len()).filter(|&i| trainable[i]) {
            let n = model.info[i].numel();
            if !opt.owned[i] {
                let Model { be, values, .. } = &mut *model;
                be.write(&mut values[i], &host[at..at + n]);
            }
            at += n;
        }
        Ok(())
    }

    /// Gathers the whole AdamW state into rank 0's `opt.gathered` (for a checkpoint: the same
    /// optimizer file as without ZeRO, which any world size resumes); every rank takes part.
    /// One tensor's moment at a time, so a rank other than 0 holds one tensor more, and rank 0
    /// the state it writes. [`release`] it after the checkpoint is written: until then the
    /// moments read back are the gathered ones.
    pub fn gather_moments<B: Backend>(opt: &mut Optimizer<B>, model: &Model<B>, comm: &dyn Collective, trainable: &[bool]) -> Result<(), CommError> {
        let keep = comm.rank() == 0;
        let mut all: Vec<Option<[Vec<f32>; 2]>> = (0..model.info.len()).map(|_| None).collect();
        for i in (0..model.info.len()).filter(|&i| trainable[i]) {
            let n = model.info[i].numel();
            let mut pair: [Vec<f32>; 2] = Default::default();
            for (which, moment) in pair.iter_mut().enumerate() {
                // the owner gives its moment, the others −0.0 (exact, as in `exchange`)
                *moment = if opt.owned[i] { opt.moment_host(model, i, which).expect("an owned tensor has moments") } else { vec![-0.0f32; n] };
                comm.all_reduce_sum(moment)?;
            }
            if keep {
                all[i] = Some(pair);
            }
        }
        opt.gathered = keep.then_some(all);
        Ok(())
    }

    /// Drops the state [`gather_moments`] gathered.
    pub fn release<B: Backend>(opt: &mut Optimizer<B>) {
        opt.gathered = None;
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
