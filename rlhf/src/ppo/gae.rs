//! PPO's per-token rewards, generalised advantage estimation and whitening (trlx semantics).

/// r_t = −β·(log π_old(a_t) − log π_ref(a_t)), plus the clipped score at the last token.
pub fn token_rewards(old_logprobs: &[f32], ref_logprobs: &[f32], score: f32, beta: f64, clip: f32) -> Vec<f64> {
    let mut r: Vec<f64> = old_logprobs.iter().zip(ref_logprobs).map(|(&o, &rf)| -beta * (o as f64 - rf as f64)).collect();
    if let Some(last) = r.last_mut() {
        *last += score.clamp(-clip, clip) as f64;
    }
    r
}

/// GAE over one response: δ_t = r_t + γV_{t+1} − V_t (V after the last token is 0),
/// A_t = δ_t + γλA_{t+1}; returns (advantages, returns = A + V).
pub fn gae(rewards: &[f64], values: &[f32], gamma: f64, lam: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut adv = vec![0f64; n];
    let mut next_adv = 0.0;
    for t in (0..n).rev() {
        let next_v = if t + 1 < n { values[t + 1] as f64 } else { 0.0 };
        let delta = rewards[t] + gamma * next_v - values[t] as f64;
        next_adv = delta + gamma * lam * next_adv;
        adv[t] = next_adv;
    }
    let ret = adv.iter().zip(values).map(|(&a, &v)| a + v as f64).collect();
    (adv, ret)
}

/// trlx's `whiten(shift_mean=True)` over every token of every sequence together:
/// (x − mean)·rsqrt(var + 1e-8), var with Bessel's correction (torch.var_mean's default).
pub fn whiten(seqs: &mut [Vec<f64>]) {
    whiten_with(seqs, 1);
}

/// [`whiten`] with the biased variance of trlx's `get_global_statistics` (its whitening pooled
/// across processes); one token whitens to 0.
pub fn whiten_pooled(seqs: &mut [Vec<f64>]) {
    whiten_with(seqs, 0);
}

fn whiten_with(seqs: &mut [Vec<f64>], correction: usize) {
    let n: usize = seqs.iter().map(Vec::len).sum();
    if n <= correction {
        return;
    }
    let mean = seqs.iter().flatten().sum::<f64>() / n as f64;
    let var = seqs.iter().flatten().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - correction) as f64;
    let inv = 1.0 / (var + 1e-8).sqrt();
    seqs.iter_mut().flatten().for_each(|x| *x = (*x - mean) * inv);
}
