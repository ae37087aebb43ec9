//! Rewards of RL runs (PPO, GRPO, RLOO) composed from weighted terms, as TRL's `reward_funcs`
//! with `reward_weights`: `--reward rm=1.0,lang=0.5,length=-0.001` scores a completion
//! Σ wᵢ·rᵢ over
//!
//! - `rm`: the reward model's score of (prompt, completion);
//! - `lang`: language consistency, 1 when the completion is detected to be in the prompt's
//!   language (`okapi_data::langid`), 0 otherwise;
//! - `length`: the completion's length in tokens (its final EOS not counted); with a negative
//!   weight, a length penalty.

use crate::TrainError;

/// One reward function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RewardFn {
    Rm,
    Lang,
    Length,
}

impl RewardFn {
    pub const ALL: [RewardFn; 3] = [RewardFn::Rm, RewardFn::Lang, RewardFn::Length];

    pub fn name(self) -> &'static str {
        match self {
            RewardFn::Rm => "rm",
            RewardFn::Lang => "lang",
            RewardFn::Length => "length",
        }
    }
}

/// The weighted reward functions of a run, in the order given.
#[derive(Clone, Debug, PartialEq)]
pub struct RewardSpec {
    pub terms: Vec<(RewardFn, f64)>,
}

impl RewardSpec {
    /// The reward model alone, weight 1 (`--reward DIR`, PPO as Okapi ran it).
    pub fn rm() -> RewardSpec {
        RewardSpec { terms: vec![(RewardFn::Rm, 1.0)] }
    }

    /// `name=weight,...` with names `rm`, `lang`, `length`, each at most once, finite weights.
    pub fn parse(s: &str) -> Result<RewardSpec, TrainError> {
        let bad = |problem: String| TrainError::Setting { setting: "--reward", problem };
        let mut terms: Vec<(RewardFn, f64)> = Vec::new();
        for part in s.split(',').map(str::trim) {
            let (name, weight) = part.split_once('=').ok_or_else(|| bad(format!("{part:?}: expected name=weight (names: rm, lang, length), e.g. rm=1.0,lang=0.5")))?;
            let f = RewardFn::ALL.into_iter().find(|f| f.name() == name.trim()).ok_or_else(|| bad(format!("{:?}: unknown reward (expected rm, lang or length)", name.trim())))?;
            let w: f64 = weight.trim().parse().ok().filter(|w: &f64| w.is_finite()).ok_or_else(|| bad(format!("{name}={weight}: the weight must be a finite number")))?;
            if terms.iter().any(|(g, _)| *g == f) {
                return Err(bad(format!("{name} is given twice")));
            }
            terms.push((f, w));
        }
        Ok(RewardSpec { terms })
    }

    /// Whether this is the reward model alone at weight 1 (PPO as Okapi ran it: no per-term
    /// metrics, no `--reward` setting recorded for a resume).
    pub fn is_rm_only(&self) -> bool {
        matches!(self.terms.as_slice(), [(RewardFn::Rm, w)] if *w == 1.0)
    }

    pub fn needs_rm(&self) -> bool {
        self.terms.iter().any(|(f, _)| *f == RewardFn::Rm)
    }

    pub fn has(&self, f: RewardFn) -> bool {
        self.terms.iter().any(|(g, _)| *g == f)
    }

    /// As given on the command line (`rm=1,lang=0.5`).
    pub fn to_flag(&self) -> String {
        self.terms.iter().map(|(f, w)| format!("{}={w}", f.name())).collect::<Vec<_>>().join(",")
    }

    /// The weighted sum of one completion's term values (in the spec's order).
    pub fn total(&self, values: &[f64]) -> f64 {
        self.terms.iter().zip(values).map(|((_, w), v)| w * v).sum()
    }
}

/// Language consistency: 1.0 when `completion` is detected to be in `prompt_lang`, else 0.0
/// (also when nothing in it can be detected: an empty answer is no answer in the language).
pub fn lang_consistency(prompt_lang: &str, completion: &str) -> f64 {
    f64::from(u8::from(okapi_data::langid::detect(completion) == Some(prompt_lang)))
}

/// The language of each prompt: its record's `lang` (a field, or the file name) when it is
/// one of the languages the detector knows, else the language detected in `text`.
pub fn prompt_language(record_lang: Option<&str>, text: &str) -> Option<&'static str> {
    record_lang.and_then(|l| okapi_data::langid::LANGS.iter().copied().find(|k| *k == l)).or_else(|| okapi_data::langid::detect(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_refuse_in_one_line() {
        let s = RewardSpec::parse("rm=1.0, lang=0.5,length=-0.001").unwrap();
        assert_eq!(s.terms, vec![(RewardFn::Rm, 1.0), (RewardFn::Lang, 0.5), (RewardFn::Length, -0.001)]);
        assert!(s.needs_rm() && !s.is_rm_only());
        assert!(RewardSpec::rm().is_rm_only() && RewardSpec::parse("rm=1").unwrap().is_rm_only() && !RewardSpec::parse("rm=2").unwrap().is_rm_only());
        assert_eq!(s.to_flag(), "rm=1,lang=0.5,length=-0.001");
        assert!((s.total(&[2.0, 1.0, 10.0]) - 2.49).abs() < 1e-12);
        assert!(!RewardSpec::parse("lang=1").unwrap().needs_rm());
        for (bad, says) in [("rm", "expected name=weight"), ("bleu=1", "unknown reward"), ("rm=x", "finite number"), ("rm=inf", "finite number"), ("rm=1,rm=2", "given twice")] {
            let e = RewardSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--reward") && e.contains(says), "{bad}: {e}");
        }
    }
}
