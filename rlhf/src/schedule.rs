//! Learning-rate schedules with warmup, exactly as transformers' `get_*_schedule_with_warmup`:
//! the lr of optimizer step s (0-based) is `base · factor(s)`, so with warmup step 0 has lr 0.

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

impl std::str::FromStr for ScheduleKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(Self::Constant),
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            _ => Err(format!("unknown schedule `{s}` (expected constant, linear or cosine)")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub warmup: u64,
    pub total: u64,
}

impl LrSchedule {
    pub fn factor(&self, s: u64) -> f64 {
        if s < self.warmup {
            return s as f64 / self.warmup.max(1) as f64;
        }
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => (self.total.saturating_sub(s) as f64 / self.total.saturating_sub(self.warmup).max(1) as f64).max(0.0),
            ScheduleKind::Cosine => {
                let progress = (s - self.warmup) as f64 / self.total.saturating_sub(self.warmup).max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos())).max(0.0)
            }
        }
    }
    pub fn lr(&self, s: u64) -> f64 {
        self.base_lr * self.factor(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformers_values() {
        // values of transformers' schedules (LambdaLR) for base 1, warmup 2, 10 steps
        let cos = LrSchedule { kind: ScheduleKind::Cosine, base_lr: 1.0, warmup: 2, total: 10 };
        let want = [0.0, 0.5, 1.0, 0.9619397662556434, 0.8535533905932737, 0.6913417161825449, 0.5, 0.3086582838174551, 0.14644660940672627, 0.03806023374435663, 0.0];
        for (s, w) in want.iter().enumerate() {
            assert!((cos.lr(s as u64) - w).abs() < 1e-12, "cosine step {s}: {} vs {w}", cos.lr(s as u64));
        }
        let lin = LrSchedule { kind: ScheduleKind::Linear, base_lr: 2.0, warmup: 2, total: 10 };
        let want = [0.0, 1.0, 2.0, 1.75, 1.5, 1.25, 1.0, 0.75, 0.5, 0.25, 0.0];
        for (s, w) in want.iter().enumerate() {
            assert!((lin.lr(s as u64) - w).abs() < 1e-12, "linear step {s}");
        }
        let con = LrSchedule { kind: ScheduleKind::Constant, base_lr: 3.0, warmup: 0, total: 10 };
        assert_eq!(con.lr(0), 3.0);
        assert_eq!(con.lr(9), 3.0);
    }
}
