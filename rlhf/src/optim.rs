//! AdamW over a model's trainable parameters (torch semantics, fused kernel on the backend),
//! global-norm clipping and the optimizer state that checkpoints carry.

use okapi_model::{Grads, Model};
use okapi_runtime::{AdamW, Backend, HostStage};

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
}

/// Optimizer state offloaded to the host (ZeRO-Offload's split): fp32 master weights and both
/// AdamW moments per trainable parameter live in host memory; each step streams the gradients
/// down from the device, runs the fused AdamW kernel on the CPU (vectorised, threads) and
/// streams the updated weights back ([`Offload::step`]). The device keeps only weights and
/// gradients.
pub struct Offload {
    pub master: Vec<Option<Vec<f32>>>,
    pub m: Vec<Option<Vec<f32>>>,
    pub v: Vec<Option<Vec<f32>>>,
    /// elements per piece of [`Offload::step`]'s pipeline: [`OFFLOAD_PIECE`] (tests pick
    /// small ones to cut tensors into many pieces)
    pub piece: usize,
    /// two gradient and two weight stages of one piece (page-locked on CUDA), made at the
    /// first step
    stages: Option<[HostStage; 4]>,
}

pub use okapi_model::memory::OFFLOAD_PIECE;

impl Offload {
    fn new(master: Vec<Option<Vec<f32>>>) -> Offload {
        let zeros = || master.iter().map(|w| w.as_ref().map(|w| vec![0f32; w.len()])).collect::<Vec<_>>();
        Offload { m: zeros(), v: zeros(), master, piece: OFFLOAD_PIECE, stages: None }
    }

    /// The pieces (tensor, offset, length) of every tensor with state and a gradient, in order.
    fn pieces<B: Backend>(&self, grads: &Grads<B>) -> Vec<(usize, usize, usize)> {
        let with_state = |i: usize| grads.bufs[i].is_some().then(|| self.master[i].as_ref().map(Vec::len)).flatten();
        let piece = self.piece.max(1);
        (0..grads.bufs.len())
            .filter_map(|i| with_state(i).map(|n| (i, n)))
            .flat_map(|(i, n)| (0..n).step_by(piece).map(move |off| (i, off, piece.min(n - off))))
            .collect()
    }

    /// One AdamW step of the offloaded state, `hyper(i)` the settings of tensor `i`: a pipeline
    /// over the pieces. While the CPU steps piece k, piece k+1's gradients are on their way down
    /// and piece k−1's weights on their way up (on CUDA the copies are queued on the stream
    /// against page-locked stages; elsewhere they are done at once). AdamW is elementwise, so
    /// the pieces give the whole tensors' result bit for bit.
    pub fn step<B: Backend>(&mut self, be: &B, values: &mut [B::Buf], grads: &Grads<B>, hyper: &dyn Fn(usize) -> AdamW) {
        let pieces = self.pieces(grads);
        let Some(&(i0, off0, n0)) = pieces.first() else { return };
        let longest = pieces.iter().map(|p| p.2).max().unwrap_or(0);
        if self.stages.as_ref().is_none_or(|s| s[0].len() < longest) {
            self.stages = Some(std::array::from_fn(|_| be.host_stage(longest)));
        }
        let Offload { master, m, v, stages, .. } = self;
        let [g0, g1, w0, w1] = stages.as_mut().expect("made above");
        let (g, w) = ([g0, g1], [w0, w1]);
        let grad = |i: usize| grads.bufs[i].as_ref().expect("pieces have gradients");
        be.read_staged(grad(i0), off0, g[0], n0);
        for (k, &(i, off, n)) in pieces.iter().enumerate() {
            if let Some(&(j, next_off, next_n)) = pieces.get(k + 1) {
                be.read_staged(grad(j), next_off, g[(k + 1) % 2], next_n);
            }
            let span = off..off + n;
            let (Some(p), Some(mi), Some(vi)) = (master[i].as_mut(), m[i].as_mut(), v[i].as_mut()) else { unreachable!("pieces have state") };
            let p = &mut p[span.clone()];
            okapi_kernels::adamw::adamw(p, &g[k % 2].as_slice()[..n], &mut mi[span.clone()], &mut vi[span], &hyper(i));
            okapi_kernels::reduce::copy(&mut w[k % 2].as_mut_slice()[..n], p);
            be.write_staged(&mut values[i], off, w[k % 2], n);
        }
    }
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
        let (m, v, offload) = if model.offload_optimizer {
            let master = (0..n).map(|i| trains(i).then(|| model.host_value(i))).collect();
            (none(), none(), Some(Offload::new(master)))
        } else {
            (on_device(), on_device(), None)
        };
        Optimizer { cfg, m, v, step: 0, norms: be.zeros(n.max(1)), offload, owned: owned.to_vec() }
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
        let (cfg, step) = (self.cfg, self.step);
        let hyper = |i: usize| AdamW {
            lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: if info[i].decays() { cfg.weight_decay } else { 0.0 },
            step,
            grad_scale,
        };
        if let Some(off) = self.offload.as_mut() {
            return off.step(be, values, grads, &hyper);
        }
        for (i, g) in grads.bufs.iter().enumerate() {
            let (Some(g), Some(m), Some(v)) = (g, self.m[i].as_mut(), self.v[i].as_mut()) else { continue };
            be.adamw(&mut values[i], g, m, v, &hyper(i), info[i].numel());
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
    /// the trainable mask that [`share_params`] and the checkpoint's gather read; otherwise the
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

    /// Moment `which` (0: m, 1: v) of tensor `i` whole, from the rank that owns it: every rank
    /// takes part and gets it (the checkpoint writer fetches one tensor at a time, so rank 0
    /// holds one moment more, not the whole state).
    pub fn gather_moment<B: Backend>(opt: &Optimizer<B>, model: &Model<B>, comm: &dyn Collective, i: usize, which: usize) -> Result<Vec<f32>, CommError> {
        // the owner gives its moment, the others −0.0 (exact, as in `exchange`)
        let mut moment = if opt.owned[i] { opt.moment_host(model, i, which).expect("an owned tensor has moments") } else { vec![-0.0f32; model.info[i].numel()] };
        comm.all_reduce_sum(&mut moment)?;
        Ok(moment)
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
