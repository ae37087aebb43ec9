//! LoRA adapters with PEFT's semantics: a targeted linear layer computes
//! y = W x + b + s·B(A x), s = α/r (α/√r with rsLoRA), A (r, d_in) Kaiming-uniform with a = √5
//! (U(±1/√d_in)), B (d_out, r) zero; the base weights stay frozen. The low-rank path is two thin
//! matmuls in the forward and three (plus the base's) in the backward; W + BA is never formed
//! during training ([`Model::merge_lora`] forms it once, for `okapi-train merge`).
//!
//! Adapters are saved and loaded in PEFT's layout: `adapter_config.json` and
//! `adapter_model.safetensors` with keys `base_model.model.<module>.lora_A.weight` /
//! `lora_B.weight` (and `base_model.model.score.weight` for a reward model's score head, PEFT's
//! `modules_to_save`). BLOOM's fused `query_key_value` carries one adapter: A shared by q, k and
//! v, B split by head like the fused weight.

use crate::error::{ModelError, Result};
use crate::model::{fuse_qkv, split_qkv, Linear, Model};
use crate::rng::Rng;
use crate::Head;
use okapi_runtime::{Backend, Dropout, Gemm};
use std::path::Path;

/// The adapter of one linear layer: its A and B parameters, rank and scale.
#[derive(Clone, Copy, Debug)]
pub struct Lora {
    /// A (r, d_in); shared by BLOOM's q, k and v
    pub a: usize,
    /// B (d_out, r); for BLOOM's q, k and v, that layer's rows of the fused B
    pub b: usize,
    pub r: usize,
    pub scale: f32,
    /// dropout on the adapter's input while training (PEFT's `lora_dropout`)
    pub dropout: f32,
    /// the adapted module's index (its dropout mask's stream; BLOOM's q, k, v share one)
    pub site: u32,
}

/// Which linear modules get adapters.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// every linear layer of the blocks (PEFT's `all-linear`: not the output head)
    AllLinear,
    /// module names, matched as PEFT does: the whole name or its last dotted parts
    Names(Vec<String>),
}

/// An adapter's settings (PEFT's `LoraConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Targets,
    pub rslora: bool,
}

impl LoraConfig {
    /// s = α/r, or α/√r with rsLoRA.
    pub fn scale(&self) -> f32 {
        let r = self.r as f64;
        (if self.rslora { self.alpha / r.sqrt() } else { self.alpha / r }) as f32
    }

    /// Refuses settings PEFT would not train with, naming the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Other(m));
        if self.r == 0 {
            return bad("--lora-r 0: expected a rank of at least 1".into());
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return bad(format!("--lora-alpha {}: expected a positive number", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("--lora-dropout {}: expected a probability in [0, 1)", self.dropout));
        }
        if let Targets::Names(n) = &self.targets {
            if n.is_empty() || n.iter().any(|t| t.is_empty()) {
                return bad("--lora-targets: expected module names separated by commas, or all-linear".into());
            }
        }
        Ok(())
    }

    /// The adapters' parameters on a model of `cfg` (r·(d_in + d_out) per adapted module; an
    /// unknown target counts nothing, `Model::add_lora` refuses it).
    pub fn param_count(&self, cfg: &crate::ModelConfig) -> u128 {
        let (c, f) = (cfg.hidden_size as u128, cfg.intermediate_size as u128);
        let (qw, kw) = (cfg.n_heads as u128 * cfg.head_dim as u128, cfg.n_kv_heads as u128 * cfg.head_dim as u128);
        // (module, d_in, d_out) of one block by role; a fused q, k, v is one module
        let names = cfg.arch.names();
        let gated = cfg.features.mlp.gated();
        let dims = [(c, qw), (c, kw), (c, kw), (qw, c), (c, f), (c, f), (f, c)];
        let modules: Vec<(&str, u128, u128)> = if names.fused_qkv {
            vec![(names.linears[0], c, qw + 2 * kw), (names.linears[3], qw, c), (names.linears[5], c, f), (names.linears[6], f, c)]
        } else {
            (0..7).filter(|&role| role != 4 || gated).map(|role| (names.linears[role], dims[role].0, dims[role].1)).collect()
        };
        let r = self.r as u128;
        (0..cfg.n_layers)
            .flat_map(|l| modules.iter().map(move |&(m, i, o)| (format!("{}.{m}", names.block(l)), i, o)))
            .filter(|(name, _, _)| match &self.targets {
                Targets::AllLinear => true,
                Targets::Names(n) => n.iter().any(|t| matches(name, t)),
            })
            .map(|(_, i, o)| r * (i + o))
            .sum()
    }

    /// `--lora-targets`: `all-linear` or comma-separated module names.
    pub fn parse_targets(s: &str) -> Targets {
        if s == "all-linear" {
            Targets::AllLinear
        } else {
            Targets::Names(s.split(',').map(|t| t.trim().to_string()).collect())
        }
    }
}

/// PEFT's match of a module name against one target: the whole name, or its last dotted parts.
fn matches(module: &str, target: &str) -> bool {
    module == target || module.ends_with(&format!(".{target}"))
}

/// One adapted module of the model: its full HF name, the roles it covers in its block, and
/// its parameters (A, and B per role).
#[derive(Clone, Debug)]
pub struct LoraModule {
    pub name: String,
    pub layer: usize,
    pub roles: Vec<usize>,
    pub a: usize,
    pub b: Vec<usize>,
}

/// The adapters a model carries.
#[derive(Clone, Debug)]
pub struct Adapters {
    pub cfg: LoraConfig,
    pub modules: Vec<LoraModule>,
}

impl<B: Backend> Model<B> {
    /// The modules `targets` selects: (layer, module name relative to the block, roles).
    fn lora_sites(&self, targets: &Targets) -> Vec<(usize, &'static str, Vec<usize>)> {
        let names = self.cfg.arch.names();
        let mut sites: Vec<(usize, &'static str, Vec<usize>)> = Vec::new();
        for (l, blk) in self.blocks.iter().enumerate() {
            for (role, lin) in blk.linears().iter().enumerate() {
                if lin.is_none() {
                    continue;
                }
                let module = names.linears[role];
                let full = format!("{}.{module}", names.block(l));
                let hit = match targets {
                    Targets::AllLinear => true,
                    Targets::Names(names) => names.iter().any(|t| matches(&full, t)),
                };
                match sites.last_mut() {
                    Some((sl, sm, roles)) if hit && *sl == l && *sm == module => roles.push(role),
                    _ if hit => sites.push((l, module, vec![role])),
                    _ => {}
                }
            }
        }
        sites
    }

    /// Puts LoRA adapters on the modules `cfg.targets` names: A drawn Kaiming-uniform (a = √5)
    /// from `seed`, B zero. Refuses a target that matches no module, and a model that already
    /// has adapters.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<()> {
        cfg.validate()?;
        if self.adapters.is_some() {
            return Err(ModelError::Other("the model already carries LoRA adapters".into()));
        }
        if let Targets::Names(names) = &cfg.targets {
            let all = self.lora_sites(&Targets::AllLinear);
            let known: Vec<String> = all.iter().map(|(l, m, _)| format!("{}.{m}", self.cfg.arch.names().block(*l))).collect();
            if let Some(t) = names.iter().find(|t| !known.iter().any(|k| matches(k, t))) {
                let mut kinds: Vec<&str> = all.iter().map(|(_, m, _)| m.rsplit('.').next().unwrap()).collect();
                kinds.sort();
                kinds.dedup();
                return Err(ModelError::Other(format!("target `{t}` matches no module of this {} model (its linear modules: {}, or all-linear)", self.cfg.arch.name(), kinds.join(", "))));
            }
        }
        let mut rng = Rng::new(seed ^ 0x10_4A);
        let mut modules = Vec::new();
        for (l, module, roles) in self.lora_sites(&cfg.targets) {
            let name = format!("{}.{module}", self.cfg.arch.names().block(l));
            let d_in = self.blocks[l].linears()[roles[0]].unwrap().d_in;
            let bound = 1.0 / (d_in as f64).sqrt();
            let a_init: Vec<f32> = (0..cfg.r * d_in).map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32).collect();
            let a = self.push_param(format!("{name}.lora_A.weight"), vec![cfg.r, d_in], &a_init);
            let (mut b, site) = (Vec::new(), modules.len() as u32);
            for &role in &roles {
                let lin = self.blocks[l].linears()[role].unwrap();
                let suffix = if roles.len() > 1 { ["[q]", "[k]", "[v]"][role] } else { "" };
                let bi = self.push_param(format!("{name}.lora_B.weight{suffix}"), vec![lin.d_out, cfg.r], &vec![0.0; lin.d_out * cfg.r]);
                *self.blocks[l].linear_mut(role) = Linear { lora: Some(Lora { a, b: bi, r: cfg.r, scale: cfg.scale(), dropout: cfg.dropout as f32, site }), ..lin };
                b.push(bi);
            }
            modules.push(LoraModule { name, layer: l, roles, a, b });
        }
        // the dropped input needs scratch as wide as the widest adapted input
        let widest = modules.iter().map(|m| self.info[m.a].shape[1]).max().unwrap_or(0);
        self.adapters = Some(Adapters { cfg: cfg.clone(), modules });
        self.cfg.lora_rank = cfg.r;
        self.cfg.lora_x_width = if cfg.dropout > 0.0 { widest } else { 0 };
        Ok(())
    }

    /// The adapters' parameters (A and every B).
    pub fn lora_params(&self) -> Vec<usize> {
        self.adapters.iter().flat_map(|ad| ad.modules.iter()).flat_map(|m| std::iter::once(m.a).chain(m.b.iter().copied())).collect()
    }

    /// The adapter's tensors under PEFT's key names with their shapes and the parameters each
    /// gathers (one, or BLOOM's q, k, v parts of B, fused by head as its weight is).
    fn lora_layout(&self) -> Vec<(String, Vec<usize>, Vec<usize>)> {
        let Some(ad) = &self.adapters else { return vec![] };
        let mut out = Vec::new();
        for m in &ad.modules {
            out.push((format!("base_model.model.{}.lora_A.weight", m.name), self.info[m.a].shape.clone(), vec![m.a]));
            let rows: usize = m.b.iter().map(|&i| self.info[i].shape[0]).sum();
            out.push((format!("base_model.model.{}.lora_B.weight", m.name), vec![rows, ad.cfg.r], m.b.clone()));
        }
        if let Some(s) = self.score {
            out.push(("base_model.model.score.weight".into(), self.info[s].shape.clone(), vec![s]));
        }
        out
    }

    /// The adapter tensors under PEFT's key names, from per-parameter host data (values or
    /// gradients).
    pub fn lora_tensors(&self, host: &dyn Fn(usize) -> Vec<f32>) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let gather = |params: &[usize], cols: usize| match params {
            [q, k, v] => fuse_qkv([&host(*q), &host(*k), &host(*v)], self.cfg.n_heads, self.cfg.head_dim, cols),
            _ => host(params[0]),
        };
        self.lora_layout().into_iter().map(|(name, shape, params)| (name, shape.clone(), gather(&params, shape[1]))).collect()
    }

    /// `adapter_config.json` as PEFT writes it for these adapters.
    pub fn adapter_config_json(&self, base: &Path) -> Result<serde_json::Value> {
        let ad = self.adapters.as_ref().ok_or_else(|| ModelError::Other("the model carries no LoRA adapters".into()))?;
        let mut targets: Vec<String> = ad.modules.iter().map(|m| m.name.rsplit('.').next().unwrap().to_string()).collect();
        targets.sort();
        targets.dedup();
        let (task, save) = match self.cfg.head {
            Head::Score => ("SEQ_CLS", serde_json::json!(["score"])),
            Head::CausalLm => ("CAUSAL_LM", serde_json::Value::Null),
        };
        Ok(serde_json::json!({
            "peft_type": "LORA", "task_type": task, "base_model_name_or_path": base.display().to_string(),
            "r": ad.cfg.r, "lora_alpha": ad.cfg.alpha, "lora_dropout": ad.cfg.dropout, "use_rslora": ad.cfg.rslora,
            "target_modules": targets, "modules_to_save": save, "bias": "none", "fan_in_fan_out": false,
            "init_lora_weights": true, "inference_mode": true, "use_dora": false, "lora_bias": false,
            "layers_to_transform": null, "layers_pattern": null, "rank_pattern": {}, "alpha_pattern": {},
        }))
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` (f32) into `dir`, with the
    /// base's path in the config and, when given, `tokenizer.json` beside them.
    pub fn save_adapter(&self, dir: &Path, base: &Path, tokenizer_json: Option<&Path>) -> Result<()> {
        let cfg = self.adapter_config_json(base)?;
        std::fs::create_dir_all(dir).map_err(crate::error::io_err(dir))?;
        crate::weights::save_file(&dir.join("adapter_model.safetensors"), &self.lora_tensors(&|i| self.host_value(i)), crate::DType::F32)?;
        crate::weights::write_atomic(&dir.join("adapter_config.json"), serde_json::to_string_pretty(&cfg).unwrap().as_bytes())?;
        crate::model::copy_tokenizer(dir, tokenizer_json)
    }

    /// Reads a PEFT LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`) onto this
    /// base: its settings, every A and B (and a reward model's score head). Refuses another PEFT
    /// type, settings okapi does not run, and tensors whose names or shapes do not fit.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<()> {
        let cfg = read_adapter_config(dir)?;
        self.add_lora(&cfg, 0).map_err(|e| ModelError::Other(format!("{}: target_modules: {e}", dir.join("adapter_config.json").display())))?;
        self.set_adapter_values(dir, cfg.r)
    }

    /// The values of the adapter in `dir` into the adapters this model already carries (a
    /// checkpoint of a LoRA run); its settings must be theirs.
    pub fn load_adapter_values(&mut self, dir: &Path) -> Result<()> {
        let cfg = read_adapter_config(dir)?;
        let ours = self.adapters.as_ref().map(|a| a.cfg.clone()).ok_or_else(|| ModelError::Other("the model carries no LoRA adapters".into()))?;
        let same_targets = self.lora_sites(&cfg.targets) == self.lora_sites(&ours.targets);
        if (cfg.r, cfg.alpha, cfg.rslora) != (ours.r, ours.alpha, ours.rslora) || !same_targets {
            return Err(ModelError::Other(format!("{}: r {}, alpha {}, rslora {} on other modules than this run's adapters (r {}, alpha {}, rslora {})", dir.join("adapter_config.json").display(), cfg.r, cfg.alpha, cfg.rslora, ours.r, ours.alpha, ours.rslora)));
        }
        self.set_adapter_values(dir, cfg.r)
    }

    /// `dir`'s `adapter_model.safetensors` (rank `r`) into the adapters' parameters (and the
    /// score head), each tensor checked against this model's adapter layout.
    fn set_adapter_values(&mut self, dir: &Path, r: usize) -> Result<()> {
        let file = dir.join("adapter_model.safetensors");
        let tensors = crate::weights::read_tensors(&file)?;
        let bad = |name: &str, msg: String| ModelError::Tensor { path: file.clone(), name: name.to_string(), msg };
        let want = self.lora_layout();
        for (name, shape, _) in &want {
            let t = tensors.get(name).ok_or_else(|| bad(name, "missing: the adapter does not fit this base model (other target modules or layers)".into()))?;
            if &t.shape != shape {
                return Err(bad(name, format!("shape {:?}, but this base model needs {shape:?}", t.shape)));
            }
        }
        if let Some(extra) = tensors.keys().find(|k| !want.iter().any(|(n, _, _)| n == *k)) {
            return Err(bad(extra, "is not a tensor of this base model's adapter (another architecture or target modules)".into()));
        }
        let modules = self.adapters.as_ref().unwrap().modules.clone();
        for m in &modules {
            self.set_host_value(m.a, &tensors[&format!("base_model.model.{}.lora_A.weight", m.name)].data);
            let b = &tensors[&format!("base_model.model.{}.lora_B.weight", m.name)].data;
            if m.b.len() == 3 {
                let parts = split_qkv(b, self.cfg.n_heads, self.cfg.head_dim, r);
                for (&i, p) in m.b.iter().zip(parts.iter()) {
                    self.set_host_value(i, p);
                }
            } else {
                self.set_host_value(m.b[0], b);
            }
        }
        if let Some(s) = self.score {
            self.set_host_value(s, &tensors["base_model.model.score.weight"].data);
        }
        Ok(())
    }
}

/// A PEFT `adapter_config.json` as a [`LoraConfig`], refusing what okapi does not run.
pub fn read_adapter_config(dir: &Path) -> Result<LoraConfig> {
    read_adapter(dir).map(|(cfg, _)| cfg)
}

/// [`read_adapter_config`], and whether the adapter is a reward model's (task `SEQ_CLS`: it
/// carries the score head).
pub fn read_adapter(dir: &Path) -> Result<(LoraConfig, bool)> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Other(format!("{}: {e} (an adapter directory holds adapter_config.json and adapter_model.safetensors)", path.display())))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Other(format!("{}: {e}", path.display())))?;
    let field = |k: &str, what: &str| ModelError::Other(format!("{}: field `{k}`: expected {what}", path.display()));
    let peft_type = v["peft_type"].as_str().ok_or_else(|| field("peft_type", "\"LORA\""))?;
    if peft_type != "LORA" {
        return Err(ModelError::Other(format!("{}: a {peft_type} adapter; okapi reads LoRA adapters (peft_type \"LORA\")", path.display())));
    }
    for (k, off) in [("use_dora", "false"), ("lora_bias", "false"), ("fan_in_fan_out", "false")] {
        if v[k].as_bool() == Some(true) {
            return Err(field(k, off));
        }
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if v[k].as_object().is_some_and(|o| !o.is_empty()) {
            return Err(field(k, "{} (per-module ranks or alphas are not supported)"));
        }
    }
    if !v["layers_to_transform"].is_null() || v["bias"].as_str().is_some_and(|b| b != "none") {
        return Err(field(if v["layers_to_transform"].is_null() { "bias" } else { "layers_to_transform" }, "the default (null / \"none\")"));
    }
    let r = v["r"].as_u64().filter(|&r| r > 0).ok_or_else(|| field("r", "a positive integer"))? as usize;
    let alpha = v["lora_alpha"].as_f64().ok_or_else(|| field("lora_alpha", "a number"))?;
    let targets = match &v["target_modules"] {
        serde_json::Value::String(s) if s == "all-linear" => Targets::AllLinear,
        serde_json::Value::Array(a) => Targets::Names(a.iter().map(|t| t.as_str().map(str::to_string).ok_or_else(|| field("target_modules", "module names"))).collect::<Result<_>>()?),
        _ => return Err(field("target_modules", "a list of module names or \"all-linear\" (a regular expression is not supported)")),
    };
    let cfg = LoraConfig { r, alpha, dropout: v["lora_dropout"].as_f64().unwrap_or(0.0), targets, rslora: v["use_rslora"].as_bool().unwrap_or(false) };
    cfg.validate().map_err(|e| ModelError::Other(format!("{}: {e}", path.display())))?;
    Ok((cfg, v["task_type"] == "SEQ_CLS"))
}

/// A linear layer with its input x (N, d_in) over N rows, as its backward reads it.
#[derive(Clone, Copy)]
pub(crate) struct LayerIn<'a, B: Backend> {
    pub x: &'a B::Buf,
    pub lin: &'a Linear,
    pub n: usize,
}

impl<B: Backend> Model<B> {
    /// The dropout of adapter `l`'s input in this step, when it has one and the model trains.
    fn lora_dropout(&self, l: &Lora) -> Option<Dropout> {
        (self.training && l.dropout > 0.0).then(|| {
            // one mask per module and optimizer step, the same in the forward and the backward
            let seed = self.dropout_step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((l.site as u64) << 40 | 0xD0);
            Dropout::new(seed, l.dropout)
        })
    }

    /// out (N, d_out) += s·B(A·drop(x)) for a linear with an adapter; `[u, xd]` (N·r, and N·d_in
    /// with dropout) are scratch.
    pub(crate) fn lora_fwd(&self, out: &mut B::Buf, x: &B::Buf, lin: &Linear, n: usize, [u, xd]: [&mut B::Buf; 2]) {
        let Some(l) = lin.lora.filter(|_| !self.lora_disabled) else { return };
        let x = match self.lora_dropout(&l) {
            Some(d) => {
                self.be.dropout(xd, x, &d, n * lin.d_in);
                &*xd
            }
            None => x,
        };
        // u (N,r) = x·Aᵀ; out += s·u·Bᵀ
        self.be.matmul(u, x, &self.values[l.a], &Gemm::new(n, l.r, lin.d_in).trans_b());
        self.be.matmul(out, u, &self.values[l.b], &Gemm::new(n, lin.d_out, l.r).trans_b().accumulate().alpha(l.scale));
    }

    /// The adapter's backward for dy (N, d_out) and the layer input x (N, d_in), with xd =
    /// drop(x) (the forward's mask, recomputed): dB += s·dyᵀ·u, du = s·dy·B, dA += duᵀ·xd,
    /// dx += drop(du·A). `u`, `du` (N·r) and `xd` (N·d_in with dropout) are scratch. Call after
    /// the base layer's backward has set or added its part of dx.
    pub(crate) fn lora_bwd(&self, dx: &mut B::Buf, dy: &B::Buf, layer: LayerIn<'_, B>, grads: &mut crate::Grads<B>, [u, du, xd]: [&mut B::Buf; 3]) {
        let LayerIn { x, lin, n } = layer;
        let Some(l) = lin.lora.filter(|_| !self.lora_disabled) else { return };
        let be = &self.be;
        let drop = self.lora_dropout(&l);
        if let Some(d) = &drop {
            be.dropout(xd, x, d, n * lin.d_in);
        }
        let x = if drop.is_some() { &*xd } else { x };
        be.matmul(u, x, &self.values[l.a], &Gemm::new(n, l.r, lin.d_in).trans_b());
        if let Some(gb) = grads.get_mut(l.b) {
            be.matmul(gb, dy, u, &Gemm::new(lin.d_out, l.r, n).trans_a().accumulate().alpha(l.scale));
        }
        be.matmul(du, dy, &self.values[l.b], &Gemm::new(n, l.r, lin.d_out).alpha(l.scale));
        if let Some(ga) = grads.get_mut(l.a) {
            be.matmul(ga, du, x, &Gemm::new(l.r, lin.d_in, n).trans_a().accumulate());
        }
        match drop {
            Some(d) => {
                // dx += drop(du·A), through `xd`, which the backward no longer needs
                be.matmul(xd, du, &self.values[l.a], &Gemm::new(n, lin.d_in, l.r));
                be.dropout(dx, xd, &d.accumulate(), n * lin.d_in);
            }
            None => be.matmul(dx, du, &self.values[l.a], &Gemm::new(n, lin.d_in, l.r).accumulate()),
        }
    }
}

impl<B: Backend> Model<B> {
    /// `f` on the base alone, the adapters switched off (PEFT's `disable_adapter()`): the
    /// reference of DPO and PPO with LoRA, without a second copy of the weights.
    pub fn with_adapters_off<R>(&mut self, f: impl FnOnce(&Self) -> R) -> R {
        self.lora_disabled = true;
        let out = f(self);
        self.lora_disabled = false;
        out
    }

    /// Folds every adapter into its base weight, W ← W + s·B·A (for BLOOM's q, k and v, each
    /// layer's rows of B with the shared A), and drops the adapters: the model then computes
    /// what base + adapter computed, as an ordinary model (`okapi-train merge`).
    pub fn merge_lora(&mut self) -> Result<()> {
        if self.adapters.is_none() {
            return Err(ModelError::Other("the model carries no LoRA adapters to merge".into()));
        }
        if self.packed.iter().any(|&p| p) {
            return Err(ModelError::Other("merging needs the base weights in f32 (not --frozen-bf16)".into()));
        }
        for l in 0..self.blocks.len() {
            for role in 0..7 {
                let Some(lin) = self.blocks[l].linears()[role] else { continue };
                let Some(a) = lin.lora else { continue };
                // W (d_out, d_in) += s·B (d_out, r)·A (r, d_in)
                let (w, bm, am) = (lin.w, a.b, a.a);
                let mut wv = std::mem::replace(&mut self.values[w], self.be.zeros(0));
                self.be.matmul(&mut wv, &self.values[bm], &self.values[am], &Gemm::new(lin.d_out, lin.d_in, a.r).accumulate().alpha(a.scale));
                self.values[w] = wv;
                self.blocks[l].linear_mut(role).lora = None;
            }
        }
        let params = self.lora_params();
        for i in params {
            self.values[i] = self.be.zeros(0);
        }
        self.adapters = None;
        (self.cfg.lora_rank, self.cfg.lora_x_width) = (0, 0);
        Ok(())
    }
}

