//! Per-item metrics and their aggregation, as lm-evaluation-harness v0.3 computes them.
//!
//! - `acc`: `argmax(logliks) == gold` (numpy's argmax: the first maximum).
//! - `acc_norm`: `argmax(loglik_i / len(choice_i)) == gold`, `len` the number of characters
//!   (code points) of the choice string as the harness holds it in `doc["choices"]` — WITHOUT
//!   the leading space of the continuation: harness v0.3 `lm_eval/base.py`
//!   `MultipleChoiceTask.process_results`, `completion_len = np.array([float(len(i)) for i in
//!   doc["choices"]])` (v0.4's `ConfigurableTask.process_results` likewise divides by
//!   `len(choice)` of `doc_to_choice`, without the target delimiter).
//! - TruthfulQA (`truthfulqa.py` `TruthfulQAMultipleChoice.process_results`): `mc1` =
//!   `argmax(mc1 logliks) == gold` (the harness assumes the true answer first; okapi reads it
//!   from the labels), `mc2` = the probability mass of the true mc2 answers,
//!   `Σ_true exp(ll) / Σ_all exp(ll)` (computed shifted by the maximum: equal to the harness's
//!   value, finite where its unshifted `np.exp` would underflow to 0/0).
//! - `acc_bytes` (harness v0.4 only, `--harness v0.4`): `argmax(loglik_i / bytes(choice_i))
//!   == gold`, bytes the UTF-8 length of the same string — 0.4's
//!   `ConfigurableTask.process_results` (lm_eval/api/task.py, `byte_length` / `pred_byte`);
//!   it differs from `acc_norm` where choices mix scripts of different bytes per character.
//! - Aggregation: the mean; standard error the harness's `mean_stderr`
//!   (`lm_eval/metrics.py`: `sample_stddev(arr) / sqrt(len(arr))`, the sample standard
//!   deviation with n − 1; undefined (None) for n = 1).

/// numpy's `argmax`: the first maximum; a NaN, if any, wins (the first NaN).
pub fn argmax(xs: &[f64]) -> usize {
    if let Some(i) = xs.iter().position(|x| x.is_nan()) {
        return i;
    }
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// One item's predictions and scores.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemMetrics {
    pub pred: usize,
    pub pred_norm: usize,
    pub acc: f64,
    pub acc_norm: f64,
    /// TruthfulQA's mc2
    pub mc2: Option<f64>,
    /// harness v0.4: the prediction normalised by UTF-8 bytes, and its accuracy
    pub pred_bytes: Option<usize>,
    pub acc_bytes: Option<f64>,
}

/// Metrics of one item from its choices' logliks (`choices` as the harness holds them).
pub fn item_metrics(logliks: &[f64], choices: &[String], gold: usize, mc2: Option<(&[f64], &[bool])>) -> ItemMetrics {
    assert_eq!(logliks.len(), choices.len());
    let pred = argmax(logliks);
    let normed: Vec<f64> = logliks.iter().zip(choices).map(|(&ll, c)| ll / c.chars().count() as f64).collect();
    let pred_norm = argmax(&normed);
    ItemMetrics { pred, pred_norm, acc: (pred == gold) as u8 as f64, acc_norm: (pred_norm == gold) as u8 as f64, mc2: mc2.map(|(ll, t)| mc2_score(ll, t)), pred_bytes: None, acc_bytes: None }
}

/// [`item_metrics`] plus harness v0.4's `acc_bytes` (TruthfulQA has none: its 0.4 tasks list
/// only `acc`).
pub fn item_metrics_v04(logliks: &[f64], choices: &[String], gold: usize, mc2: Option<(&[f64], &[bool])>) -> ItemMetrics {
    let mut m = item_metrics(logliks, choices, gold, mc2);
    if mc2.is_none() {
        let per_byte: Vec<f64> = logliks.iter().zip(choices).map(|(&ll, c)| ll / c.len() as f64).collect();
        let pred = argmax(&per_byte);
        m.pred_bytes = Some(pred);
        m.acc_bytes = Some((pred == gold) as u8 as f64);
    }
    m
}

/// TruthfulQA mc2: the normalized probability mass of the true answers.
pub fn mc2_score(logliks: &[f64], is_true: &[bool]) -> f64 {
    let m = logliks.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let (mut t, mut all) = (0.0, 0.0);
    for (&ll, &tr) in logliks.iter().zip(is_true) {
        let p = (ll - m).exp();
        all += p;
        if tr {
            t += p;
        }
    }
    t / all
}

pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// The harness's `mean_stderr`: sample standard deviation (n − 1) / √n; None for n < 2.
pub fn mean_stderr(xs: &[f64]) -> Option<f64> {
    let n = xs.len();
    if n < 2 {
        return None;
    }
    let mu = mean(xs);
    let var = xs.iter().map(|x| (x - mu) * (x - mu)).sum::<f64>() / (n - 1) as f64;
    Some(var.sqrt() / (n as f64).sqrt())
}

/// A metric's mean and standard error.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Stat {
    pub mean: f64,
    pub stderr: Option<f64>,
}

impl Stat {
    pub fn of(xs: &[f64]) -> Stat {
        Stat { mean: mean(xs), stderr: mean_stderr(xs) }
    }
}

/// One line of the results table (a language, or all items). For TruthfulQA `acc` is mc1,
/// `acc_norm` is None and `mc2` is set.
#[derive(Clone, Debug, PartialEq)]
pub struct LangRow {
    pub lang: String,
    pub n: usize,
    pub acc: Stat,
    pub acc_norm: Option<Stat>,
    pub mc2: Option<Stat>,
    /// harness v0.4's byte-normalised accuracy (None under v0.3 and for TruthfulQA)
    pub acc_bytes: Option<Stat>,
}

/// Aggregates items (non-empty) into a row.
pub fn aggregate(lang: &str, items: &[&ItemMetrics], truthfulqa: bool) -> LangRow {
    let col = |f: &dyn Fn(&ItemMetrics) -> f64| -> Vec<f64> { items.iter().map(|m| f(m)).collect() };
    LangRow {
        lang: lang.to_string(),
        n: items.len(),
        acc: Stat::of(&col(&|m| m.acc)),
        acc_norm: (!truthfulqa).then(|| Stat::of(&col(&|m| m.acc_norm))),
        mc2: truthfulqa.then(|| Stat::of(&col(&|m| m.mc2.unwrap_or(f64::NAN)))),
        acc_bytes: items.iter().map(|m| m.acc_bytes).collect::<Option<Vec<f64>>>().filter(|v| !v.is_empty()).map(|v| Stat::of(&v)),
    }
}

/// The unweighted mean over languages of each metric (Okapi's tables average languages).
pub fn macro_average(rows: &[LangRow]) -> (f64, Option<f64>, Option<f64>) {
    let avg = |f: &dyn Fn(&LangRow) -> Option<f64>| -> Option<f64> {
        let v: Vec<f64> = rows.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| mean(&v))
    };
    (avg(&|r| Some(r.acc.mean)).unwrap_or(f64::NAN), avg(&|r| r.acc_norm.map(|s| s.mean)), avg(&|r| r.mc2.map(|s| s.mean)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_is_numpys() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        assert_eq!(argmax(&[1.0, f64::NAN, 5.0, f64::NAN]), 1);
        assert_eq!(argmax(&[f64::NEG_INFINITY, -1.0]), 1);
    }

    #[test]
    fn stderr_is_the_harness_mean_stderr() {
        // statistics.stdev([1,0,1,1]) / sqrt(4) = 0.5 / 2
        assert!((mean_stderr(&[1.0, 0.0, 1.0, 1.0]).unwrap() - 0.25).abs() < 1e-15);
        assert_eq!(mean_stderr(&[1.0]), None);
    }

    #[test]
    fn mc2_matches_unshifted_formula() {
        let ll = [-1.0, -2.0, -0.5];
        let t = [true, false, true];
        let want = ((-1f64).exp() + (-0.5f64).exp()) / ((-1f64).exp() + (-2f64).exp() + (-0.5f64).exp());
        assert!((mc2_score(&ll, &t) - want).abs() < 1e-15);
        assert!(mc2_score(&[-2000.0, -2001.0], &[true, false]) > 0.7);
    }
}
