//! `okapi-train grpo` and `okapi-train rloo`: G completions per prompt, a group baseline instead
//! of a critic (TRL's GRPOTrainer / RLOOTrainer). Two commands rather than `ppo --algo`, as TRL
//! has two trainers and `trl grpo` / `trl rloo`: their flags are TRL's (--num-generations,
//! --beta, --epsilon, --num-iterations, --scale-rewards, --loss-type), and none of PPO's critic,
//! GAE or KL-controller flags applies. Every setting flag is optional: unset, it takes
//! okapi-rlhf's `PpoConfig::grpo` / `PpoConfig::rloo`.

use super::ppo::{ppo_need, PpoMemory};
use super::rl_flags::{err, run_rl, shown_common, Method, RlArgs};
use super::train_flags::annotate_arg;
use okapi_model::ModelConfig;
use okapi_rlhf::ppo::group::{Algo, GroupCfg};
use okapi_rlhf::ppo::{LossType, ScaleRewards};
use okapi_rlhf::PpoConfig;
use okapi_runtime::Backend;

#[derive(clap::Args, Debug)]
pub struct GroupArgs {
    #[command(flatten)]
    pub rl: RlArgs,
    /// Completions sampled per prompt (G ≥ 2); --rollouts must be a multiple
    #[arg(long)]
    pub num_generations: Option<usize>,
    /// Completions per optimizer step
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Passes over each iteration's completions (TRL's num_iterations; > 1 reuses old log-probs)
    #[arg(long)]
    pub num_iterations: Option<usize>,
    /// Weight of the k3 KL to the reference in the loss (0: no reference model is loaded)
    #[arg(long)]
    pub beta: Option<f64>,
    /// Clip range ε of the ratio
    #[arg(long)]
    pub epsilon: Option<f64>,
    /// GRPO: divide the centred rewards by the group's std (group), the batch's (batch) or
    /// nothing (none)
    #[arg(long)]
    pub scale_rewards: Option<String>,
    /// grpo: each completion's token mean, averaged; bnpo: the token mean of the optimizer
    /// step; dr_grpo: the token sum / (completions × --max-new-tokens)
    #[arg(long)]
    pub loss_type: Option<String>,
}

fn base(algo: Algo) -> PpoConfig {
    match algo {
        Algo::Rloo => PpoConfig::rloo(),
        Algo::Grpo => PpoConfig::grpo(),
    }
}

impl GroupArgs {
    /// The method's defaults with every flag that is set applied over it, validated.
    fn resolve(&self, algo: Algo) -> Result<PpoConfig, String> {
        let r = base(algo);
        let g = r.group.expect("group recipes set it");
        if algo == Algo::Rloo && self.scale_rewards.is_some() {
            return Err("--scale-rewards: RLOO's baseline is the other completions' mean (no scaling); it is GRPO's flag".into());
        }
        let mut c = PpoConfig { ppo_epochs: self.num_iterations.unwrap_or(r.ppo_epochs), minibatch: self.batch_size.unwrap_or(r.minibatch), ..self.rl.apply(&r)? };
        let mut loss = g.loss;
        loss.beta = self.beta.unwrap_or(loss.beta);
        loss.epsilon = self.epsilon.unwrap_or(loss.epsilon);
        loss.loss_type = self.loss_type.as_deref().map(LossType::parse).transpose().map_err(err)?.unwrap_or(loss.loss_type);
        loss.max_completion_len = c.sampling.max_new_tokens;
        let scale_rewards = self.scale_rewards.as_deref().map(ScaleRewards::parse).transpose().map_err(err)?.unwrap_or(g.scale_rewards);
        c.group = Some(GroupCfg { algo, num_generations: self.num_generations.unwrap_or(g.num_generations), scale_rewards, loss });
        c.validate().map_err(err)?;
        Ok(c)
    }

    fn memory(&self) -> PpoMemory<'_> {
        let zero_ranks = if self.rl.zero >= 1 { super::ranks::comm().world() } else { 0 };
        PpoMemory { separate_critic: false, hydra: self.rl.reference == "hydra", flags: &self.rl.memory, lora: &self.rl.lora, zero_ranks, zero_grads: self.rl.zero == 2 }
    }
}

/// The values `--help` shows, by argument id.
fn shown(c: &PpoConfig) -> Vec<(&'static str, String)> {
    let g = c.group.expect("group recipes set it");
    let mut v = shown_common(c);
    v.extend([
        ("num_generations", g.num_generations.to_string()),
        ("batch_size", c.minibatch.to_string()),
        ("num_iterations", c.ppo_epochs.to_string()),
        ("beta", g.loss.beta.to_string()),
        ("epsilon", g.loss.epsilon.to_string()),
        ("scale_rewards", g.scale_rewards.as_str().into()),
        ("loss_type", g.loss.loss_type.as_str().into()),
    ]);
    v
}

/// `grpo --help` / `rloo --help` with each default.
pub fn annotate(algo: Algo) -> impl FnOnce(clap::Command) -> clap::Command {
    move |mut cmd| {
        for (id, d) in shown(&base(algo)) {
            cmd = annotate_arg(cmd, id, &d, None);
        }
        cmd
    }
}

pub fn run(mut a: GroupArgs, algo: Algo) -> Result<(), String> {
    // the prompt paths, then the flags, before anything is loaded or written
    a.rl.prompts = okapi_data::expand_data_paths("--prompts", &a.rl.prompts)?;
    a.rl.check()?;
    a.resolve(algo)?;
    super::on_backend!(a.rl.backend, a.rl.precision, |be| run_on(be, &a, algo))
}

fn run_on<B: Backend>(be: B, a: &GroupArgs, algo: Algo) -> Result<(), String> {
    let cfg = a.resolve(algo)?;
    let need = |policy: &ModelConfig, rm: Option<&ModelConfig>, longest: usize| ppo_need(policy, rm, &cfg, longest, a.memory());
    let method = Method { separate_critic: false, value_head: None, args_json: args_json(a, &cfg), need: &need };
    run_rl(be, &a.rl, &cfg, method)
}

/// `args.json`: the command line, the resolved settings, and every flag's value (`flags`).
fn args_json(a: &GroupArgs, c: &PpoConfig) -> serde_json::Value {
    let g = c.group.expect("resolved with a group");
    let mut v = a.rl.args_json(g.algo.as_str(), c);
    let own = serde_json::json!({
        "num_generations": g.num_generations, "batch_size": c.minibatch, "num_iterations": c.ppo_epochs,
        "beta": g.loss.beta, "epsilon": g.loss.epsilon, "scale_rewards": g.scale_rewards.as_str(), "loss_type": g.loss.loss_type.as_str(),
    });
    if let (Some(o), serde_json::Value::Object(p)) = (v.as_object_mut(), own) {
        o.extend(p);
    }
    super::config::add_to_args_json(&mut v);
    v
}
