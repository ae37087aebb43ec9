//! The KL coefficient β of PPO's reward: trlx's `AdaptiveKLController` (Ziegler et al. 2019)
//! or a fixed one.

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KlController {
    pub beta: f64,
    /// `None`: fixed β
    pub target: Option<f64>,
    pub horizon: f64,
}

impl KlController {
    /// β ← β·(1 + clip(KL/target − 1, ±0.2)·n_steps/horizon) for the adaptive controller.
    pub fn update(&mut self, current_kl: f64, n_steps: usize) {
        if let Some(target) = self.target {
            let err = (current_kl / target - 1.0).clamp(-0.2, 0.2);
            self.beta *= 1.0 + err * n_steps as f64 / self.horizon;
        }
    }
}
