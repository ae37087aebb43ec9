//! The multilingual data bundled into the binary: small SFT, ranking (reward model) and RL
//! prompt sets in English and Okapi's 26 languages, plus ARC / HellaSwag / MMLU-style evaluation
//! items in Okapi's `m_arc` / `m_hellaswag` / `m_mmlu` formats. Written for okapi (not copied from
//! any dataset); see `data/assets/README.md` for the formats and counts.
//!
//! Every file is embedded with `include_str!`, so the binary needs no data directory to run the
//! tiny end-to-end pipeline. Texts are JSON arrays; parse them with `serde_json`.

/// English plus Okapi's 26 languages, in Okapi's order.
pub const LANGS: &[&str] = &["en", "ru", "de", "zh", "fr", "es", "it", "nl", "vi", "id", "ar", "hu", "ro", "da", "sk", "uk", "ca", "sr", "hr", "hi", "bn", "ta", "ne", "ml", "mr", "te", "kn"];

/// One embedded file: its language, its path under `data/assets/` and its UTF-8 text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asset {
    pub lang: &'static str,
    /// Path under `data/assets/`, e.g. `sft/en.json` or `eval/m_arc/en_validation.json`.
    pub name: &'static str,
    pub text: &'static str,
}

/// SFT records `{"instruction", "input", "output"}`, one file per language of [`LANGS`].
pub const SFT: &[Asset] = &[
    Asset { lang: "en", name: "sft/en.json", text: include_str!("../assets/sft/en.json") },
    Asset { lang: "ru", name: "sft/ru.json", text: include_str!("../assets/sft/ru.json") },
    Asset { lang: "de", name: "sft/de.json", text: include_str!("../assets/sft/de.json") },
    Asset { lang: "zh", name: "sft/zh.json", text: include_str!("../assets/sft/zh.json") },
    Asset { lang: "fr", name: "sft/fr.json", text: include_str!("../assets/sft/fr.json") },
    Asset { lang: "es", name: "sft/es.json", text: include_str!("../assets/sft/es.json") },
    Asset { lang: "it", name: "sft/it.json", text: include_str!("../assets/sft/it.json") },
    Asset { lang: "nl", name: "sft/nl.json", text: include_str!("../assets/sft/nl.json") },
    Asset { lang: "vi", name: "sft/vi.json", text: include_str!("../assets/sft/vi.json") },
    Asset { lang: "id", name: "sft/id.json", text: include_str!("../assets/sft/id.json") },
    Asset { lang: "ar", name: "sft/ar.json", text: include_str!("../assets/sft/ar.json") },
    Asset { lang: "hu", name: "sft/hu.json", text: include_str!("../assets/sft/hu.json") },
    Asset { lang: "ro", name: "sft/ro.json", text: include_str!("../assets/sft/ro.json") },
    Asset { lang: "da", name: "sft/da.json", text: include_str!("../assets/sft/da.json") },
    Asset { lang: "sk", name: "sft/sk.json", text: include_str!("../assets/sft/sk.json") },
    Asset { lang: "uk", name: "sft/uk.json", text: include_str!("../assets/sft/uk.json") },
    Asset { lang: "ca", name: "sft/ca.json", text: include_str!("../assets/sft/ca.json") },
    Asset { lang: "sr", name: "sft/sr.json", text: include_str!("../assets/sft/sr.json") },
    Asset { lang: "hr", name: "sft/hr.json", text: include_str!("../assets/sft/hr.json") },
    Asset { lang: "hi", name: "sft/hi.json", text: include_str!("../assets/sft/hi.json") },
    Asset { lang: "bn", name: "sft/bn.json", text: include_str!("../assets/sft/bn.json") },
    Asset { lang: "ta", name: "sft/ta.json", text: include_str!("../assets/sft/ta.json") },
    Asset { lang: "ne", name: "sft/ne.json", text: include_str!("../assets/sft/ne.json") },
    Asset { lang: "ml", name: "sft/ml.json", text: include_str!("../assets/sft/ml.json") },
    Asset { lang: "mr", name: "sft/mr.json", text: include_str!("../assets/sft/mr.json") },
    Asset { lang: "te", name: "sft/te.json", text: include_str!("../assets/sft/te.json") },
    Asset { lang: "kn", name: "sft/kn.json", text: include_str!("../assets/sft/kn.json") },
];

/// Ranked responses `{"instruction", "input", "responses": [best, .., worst]}` for the reward
/// model, one file per language of [`LANGS`].
pub const RANKING: &[Asset] = &[
    Asset { lang: "en", name: "ranking/en.json", text: include_str!("../assets/ranking/en.json") },
    Asset { lang: "ru", name: "ranking/ru.json", text: include_str!("../assets/ranking/ru.json") },
    Asset { lang: "de", name: "ranking/de.json", text: include_str!("../assets/ranking/de.json") },
    Asset { lang: "zh", name: "ranking/zh.json", text: include_str!("../assets/ranking/zh.json") },
    Asset { lang: "fr", name: "ranking/fr.json", text: include_str!("../assets/ranking/fr.json") },
    Asset { lang: "es", name: "ranking/es.json", text: include_str!("../assets/ranking/es.json") },
    Asset { lang: "it", name: "ranking/it.json", text: include_str!("../assets/ranking/it.json") },
    Asset { lang: "nl", name: "ranking/nl.json", text: include_str!("../assets/ranking/nl.json") },
    Asset { lang: "vi", name: "ranking/vi.json", text: include_str!("../assets/ranking/vi.json") },
    Asset { lang: "id", name: "ranking/id.json", text: include_str!("../assets/ranking/id.json") },
    Asset { lang: "ar", name: "ranking/ar.json", text: include_str!("../assets/ranking/ar.json") },
    Asset { lang: "hu", name: "ranking/hu.json", text: include_str!("../assets/ranking/hu.json") },
    Asset { lang: "ro", name: "ranking/ro.json", text: include_str!("../assets/ranking/ro.json") },
    Asset { lang: "da", name: "ranking/da.json", text: include_str!("../assets/ranking/da.json") },
    Asset { lang: "sk", name: "ranking/sk.json", text: include_str!("../assets/ranking/sk.json") },
    Asset { lang: "uk", name: "ranking/uk.json", text: include_str!("../assets/ranking/uk.json") },
    Asset { lang: "ca", name: "ranking/ca.json", text: include_str!("../assets/ranking/ca.json") },
    Asset { lang: "sr", name: "ranking/sr.json", text: include_str!("../assets/ranking/sr.json") },
    Asset { lang: "hr", name: "ranking/hr.json", text: include_str!("../assets/ranking/hr.json") },
    Asset { lang: "hi", name: "ranking/hi.json", text: include_str!("../assets/ranking/hi.json") },
    Asset { lang: "bn", name: "ranking/bn.json", text: include_str!("../assets/ranking/bn.json") },
    Asset { lang: "ta", name: "ranking/ta.json", text: include_str!("../assets/ranking/ta.json") },
    Asset { lang: "ne", name: "ranking/ne.json", text: include_str!("../assets/ranking/ne.json") },
    Asset { lang: "ml", name: "ranking/ml.json", text: include_str!("../assets/ranking/ml.json") },
    Asset { lang: "mr", name: "ranking/mr.json", text: include_str!("../assets/ranking/mr.json") },
    Asset { lang: "te", name: "ranking/te.json", text: include_str!("../assets/ranking/te.json") },
    Asset { lang: "kn", name: "ranking/kn.json", text: include_str!("../assets/ranking/kn.json") },
];

/// RL prompts `{"instruction", "input"}` (no outputs), one file per language of [`LANGS`].
pub const RL_PROMPTS: &[Asset] = &[
    Asset { lang: "en", name: "rl/en.json", text: include_str!("../assets/rl/en.json") },
    Asset { lang: "ru", name: "rl/ru.json", text: include_str!("../assets/rl/ru.json") },
    Asset { lang: "de", name: "rl/de.json", text: include_str!("../assets/rl/de.json") },
    Asset { lang: "zh", name: "rl/zh.json", text: include_str!("../assets/rl/zh.json") },
    Asset { lang: "fr", name: "rl/fr.json", text: include_str!("../assets/rl/fr.json") },
    Asset { lang: "es", name: "rl/es.json", text: include_str!("../assets/rl/es.json") },
    Asset { lang: "it", name: "rl/it.json", text: include_str!("../assets/rl/it.json") },
    Asset { lang: "nl", name: "rl/nl.json", text: include_str!("../assets/rl/nl.json") },
    Asset { lang: "vi", name: "rl/vi.json", text: include_str!("../assets/rl/vi.json") },
    Asset { lang: "id", name: "rl/id.json", text: include_str!("../assets/rl/id.json") },
    Asset { lang: "ar", name: "rl/ar.json", text: include_str!("../assets/rl/ar.json") },
    Asset { lang: "hu", name: "rl/hu.json", text: include_str!("../assets/rl/hu.json") },
    Asset { lang: "ro", name: "rl/ro.json", text: include_str!("../assets/rl/ro.json") },
    Asset { lang: "da", name: "rl/da.json", text: include_str!("../assets/rl/da.json") },
    Asset { lang: "sk", name: "rl/sk.json", text: include_str!("../assets/rl/sk.json") },
    Asset { lang: "uk", name: "rl/uk.json", text: include_str!("../assets/rl/uk.json") },
    Asset { lang: "ca", name: "rl/ca.json", text: include_str!("../assets/rl/ca.json") },
    Asset { lang: "sr", name: "rl/sr.json", text: include_str!("../assets/rl/sr.json") },
    Asset { lang: "hr", name: "rl/hr.json", text: include_str!("../assets/rl/hr.json") },
    Asset { lang: "hi", name: "rl/hi.json", text: include_str!("../assets/rl/hi.json") },
    Asset { lang: "bn", name: "rl/bn.json", text: include_str!("../assets/rl/bn.json") },
    Asset { lang: "ta", name: "rl/ta.json", text: include_str!("../assets/rl/ta.json") },
    Asset { lang: "ne", name: "rl/ne.json", text: include_str!("../assets/rl/ne.json") },
    Asset { lang: "ml", name: "rl/ml.json", text: include_str!("../assets/rl/ml.json") },
    Asset { lang: "mr", name: "rl/mr.json", text: include_str!("../assets/rl/mr.json") },
    Asset { lang: "te", name: "rl/te.json", text: include_str!("../assets/rl/te.json") },
    Asset { lang: "kn", name: "rl/kn.json", text: include_str!("../assets/rl/kn.json") },
];

/// ARC-style multiple choice in Okapi's `m_arc` format.
pub const EVAL_ARC: &[Asset] = &[
    Asset { lang: "en", name: "eval/m_arc/en_validation.json", text: include_str!("../assets/eval/m_arc/en_validation.json") },
    Asset { lang: "ru", name: "eval/m_arc/ru_validation.json", text: include_str!("../assets/eval/m_arc/ru_validation.json") },
    Asset { lang: "zh", name: "eval/m_arc/zh_validation.json", text: include_str!("../assets/eval/m_arc/zh_validation.json") },
    Asset { lang: "vi", name: "eval/m_arc/vi_validation.json", text: include_str!("../assets/eval/m_arc/vi_validation.json") },
    Asset { lang: "ar", name: "eval/m_arc/ar_validation.json", text: include_str!("../assets/eval/m_arc/ar_validation.json") },
    Asset { lang: "hi", name: "eval/m_arc/hi_validation.json", text: include_str!("../assets/eval/m_arc/hi_validation.json") },
    Asset { lang: "bn", name: "eval/m_arc/bn_validation.json", text: include_str!("../assets/eval/m_arc/bn_validation.json") },
    Asset { lang: "ta", name: "eval/m_arc/ta_validation.json", text: include_str!("../assets/eval/m_arc/ta_validation.json") },
];

/// HellaSwag-style sentence completion in Okapi's `m_hellaswag` format.
pub const EVAL_HELLASWAG: &[Asset] = &[
    Asset { lang: "en", name: "eval/m_hellaswag/en_validation.json", text: include_str!("../assets/eval/m_hellaswag/en_validation.json") },
    Asset { lang: "ru", name: "eval/m_hellaswag/ru_validation.json", text: include_str!("../assets/eval/m_hellaswag/ru_validation.json") },
    Asset { lang: "vi", name: "eval/m_hellaswag/vi_validation.json", text: include_str!("../assets/eval/m_hellaswag/vi_validation.json") },
];

/// MMLU-style multiple choice in Okapi's `m_mmlu` format.
pub const EVAL_MMLU: &[Asset] = &[
    Asset { lang: "en", name: "eval/m_mmlu/en_validation.json", text: include_str!("../assets/eval/m_mmlu/en_validation.json") },
    Asset { lang: "vi", name: "eval/m_mmlu/vi_validation.json", text: include_str!("../assets/eval/m_mmlu/vi_validation.json") },
    Asset { lang: "hi", name: "eval/m_mmlu/hi_validation.json", text: include_str!("../assets/eval/m_mmlu/hi_validation.json") },
];

/// The asset of `set` for `lang`, if there is one.
pub fn find(set: &'static [Asset], lang: &str) -> Option<&'static Asset> {
    set.iter().find(|a| a.lang == lang)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value};
    use std::collections::HashSet;

    type Record = Map<String, Value>;

    /// The longest output / best response the tiny CPU runs are sized for (characters).
    const MAX_OUTPUT_CHARS: usize = 300;

    fn parse(a: &Asset) -> Vec<Record> {
        let v: Value = serde_json::from_str(a.text).unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", a.name));
        let arr = v.as_array().unwrap_or_else(|| panic!("{}: not a JSON array", a.name));
        arr.iter()
            .enumerate()
            .map(|(i, r)| r.as_object().unwrap_or_else(|| panic!("{}: record {} is not an object", a.name, i + 1)).clone())
            .collect()
    }

    fn keys(a: &Asset, i: usize, r: &Record, expected: &[&str]) {
        let got: HashSet<&str> = r.keys().map(String::as_str).collect();
        let want: HashSet<&str> = expected.iter().copied().collect();
        assert_eq!(got, want, "{}: record {}: fields", a.name, i + 1);
    }

    fn s<'a>(a: &Asset, i: usize, r: &'a Record, key: &str) -> &'a str {
        r.get(key).and_then(Value::as_str).unwrap_or_else(|| panic!("{}: record {}: `{key}` is not a string", a.name, i + 1))
    }

    fn nonempty<'a>(a: &Asset, i: usize, r: &'a Record, key: &str) -> &'a str {
        let v = s(a, i, r, key);
        assert!(!v.trim().is_empty(), "{}: record {}: `{key}` is empty", a.name, i + 1);
        v
    }

    fn no_duplicate_instructions(a: &Asset, records: &[Record]) -> HashSet<String> {
        let mut seen = HashSet::new();
        for (i, r) in records.iter().enumerate() {
            let ins = nonempty(a, i, r, "instruction");
            assert!(seen.insert(ins.to_string()), "{}: record {}: duplicate instruction {ins:?}", a.name, i + 1);
        }
        seen
    }

    /// Each language of LANGS exactly once, in order, named `{dir}/{lang}.json`.
    fn one_per_lang(set: &[Asset], dir: &str) {
        let langs: Vec<&str> = set.iter().map(|a| a.lang).collect();
        assert_eq!(langs, LANGS, "{dir}: languages");
        for a in set {
            assert_eq!(a.name, format!("{dir}/{}.json", a.lang));
        }
    }

    fn eval_names(set: &'static [Asset], dir: &str, required: &[&str]) {
        for lang in required {
            assert!(find(set, lang).is_some(), "{dir}: no file for {lang}");
        }
        let mut seen = HashSet::new();
        for a in set {
            assert!(LANGS.contains(&a.lang), "{}: unknown language {}", a.name, a.lang);
            assert!(seen.insert(a.lang), "{dir}: {} twice", a.lang);
            assert_eq!(a.name, format!("eval/{dir}/{}_validation.json", a.lang));
        }
    }

    #[test]
    fn langs_are_english_and_okapis_26() {
        assert_eq!(LANGS.len(), 27);
        assert_eq!(LANGS[0], "en");
        assert_eq!(LANGS.iter().collect::<HashSet<_>>().len(), 27, "duplicate language code");
        for l in ["ru", "de", "zh", "fr", "es", "it", "nl", "vi", "id", "ar", "hu", "ro", "da", "sk", "uk", "ca", "sr", "hr", "hi", "bn", "ta", "ne", "ml", "mr", "te", "kn"] {
            assert!(LANGS.contains(&l), "{l} missing");
        }
    }

    #[test]
    fn sft_files() {
        one_per_lang(SFT, "sft");
        for a in SFT {
            let recs = parse(a);
            assert!(recs.len() >= 12, "{}: {} records, want at least 12", a.name, recs.len());
            no_duplicate_instructions(a, &recs);
            let mut with_input = 0;
            for (i, r) in recs.iter().enumerate() {
                keys(a, i, r, &["instruction", "input", "output"]);
                if !s(a, i, r, "input").is_empty() {
                    with_input += 1;
                }
                let out = nonempty(a, i, r, "output");
                assert!(out.chars().count() <= MAX_OUTPUT_CHARS, "{}: record {}: output too long", a.name, i + 1);
            }
            // About a third of the records carry an input.
            assert!(with_input * 4 >= recs.len() && with_input * 2 <= recs.len(), "{}: {with_input} of {} records have an input", a.name, recs.len());
        }
    }

    #[test]
    fn ranking_files() {
        one_per_lang(RANKING, "ranking");
        for a in RANKING {
            let recs = parse(a);
            assert!(recs.len() >= 4, "{}: {} prompts, want at least 4", a.name, recs.len());
            no_duplicate_instructions(a, &recs);
            for (i, r) in recs.iter().enumerate() {
                keys(a, i, r, &["instruction", "input", "responses"]);
                s(a, i, r, "input");
                let resp = r["responses"].as_array().unwrap_or_else(|| panic!("{}: record {}: responses is not an array", a.name, i + 1));
                assert_eq!(resp.len(), 4, "{}: record {}: want 4 ranked responses", a.name, i + 1);
                let texts: Vec<&str> = resp
                    .iter()
                    .map(|x| x.as_str().filter(|t| !t.trim().is_empty()).unwrap_or_else(|| panic!("{}: record {}: empty or non-string response", a.name, i + 1)))
                    .collect();
                assert_eq!(texts.iter().collect::<HashSet<_>>().len(), 4, "{}: record {}: responses must differ", a.name, i + 1);
                assert!(texts[0].chars().count() <= MAX_OUTPUT_CHARS, "{}: record {}: best response too long", a.name, i + 1);
            }
        }
    }

    #[test]
    fn rl_prompt_files() {
        one_per_lang(RL_PROMPTS, "rl");
        for a in RL_PROMPTS {
            let recs = parse(a);
            assert!(recs.len() >= 8, "{}: {} prompts, want at least 8", a.name, recs.len());
            let prompts = no_duplicate_instructions(a, &recs);
            for (i, r) in recs.iter().enumerate() {
                keys(a, i, r, &["instruction", "input"]);
                s(a, i, r, "input");
            }
            let sft = find(SFT, a.lang).unwrap();
            let sft_ins: HashSet<String> = parse(sft).iter().enumerate().map(|(i, r)| s(sft, i, r, "instruction").to_string()).collect();
            let shared: Vec<&String> = prompts.intersection(&sft_ins).collect();
            assert!(shared.is_empty(), "{}: RL prompts repeat SFT instructions: {shared:?}", a.name);
        }
    }

    fn check_choice(a: &Asset, i: usize, r: &Record, letters: &str) -> char {
        let ans = s(a, i, r, "answer");
        let mut chars = ans.chars();
        let letter = match (chars.next(), chars.next()) {
            (Some(c), None) if letters.contains(c) => c,
            _ => panic!("{}: record {}: answer {ans:?} is not one of {letters}", a.name, i + 1),
        };
        let key = format!("option_{}", letter.to_ascii_lowercase());
        nonempty(a, i, r, &key);
        letter
    }

    #[test]
    fn arc_files() {
        eval_names(EVAL_ARC, "m_arc", &["en", "vi", "ar", "hi", "zh", "ru", "bn", "ta"]);
        let mut ids = HashSet::new();
        for a in EVAL_ARC {
            let recs = parse(a);
            assert!(recs.len() >= 10, "{}: {} items, want at least 10", a.name, recs.len());
            no_duplicate_instructions(a, &recs);
            let mut letters = HashSet::new();
            for (i, r) in recs.iter().enumerate() {
                keys(a, i, r, &["id", "instruction", "option_a", "option_b", "option_c", "option_d", "option_e", "answer"]);
                assert!(ids.insert(nonempty(a, i, r, "id").to_string()), "{}: record {}: duplicate id", a.name, i + 1);
                for k in ["option_a", "option_b", "option_c"] {
                    nonempty(a, i, r, k);
                }
                s(a, i, r, "option_d");
                assert_eq!(s(a, i, r, "option_e"), "", "{}: record {}: option_e", a.name, i + 1);
                letters.insert(check_choice(a, i, r, "ABCD"));
            }
            assert!(letters.len() >= 3, "{}: answers should be spread over the letters", a.name);
        }
    }

    #[test]
    fn hellaswag_files() {
        eval_names(EVAL_HELLASWAG, "m_hellaswag", &["en", "vi", "ru"]);
        for a in EVAL_HELLASWAG {
            let recs = parse(a);
            assert!(recs.len() >= 5, "{}: {} items, want at least 5", a.name, recs.len());
            let mut inds = HashSet::new();
            for (i, r) in recs.iter().enumerate() {
                keys(a, i, r, &["ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "label"]);
                let ind = r["ind"].as_u64().unwrap_or_else(|| panic!("{}: record {}: ind is not an integer", a.name, i + 1));
                assert!(inds.insert(ind), "{}: record {}: duplicate ind", a.name, i + 1);
                nonempty(a, i, r, "activity_label");
                let ctx = format!("{} {}", nonempty(a, i, r, "ctx_a"), nonempty(a, i, r, "ctx_b"));
                assert_eq!(s(a, i, r, "ctx"), ctx, "{}: record {}: ctx must be ctx_a + \" \" + ctx_b", a.name, i + 1);
                let endings = r["endings"].as_array().unwrap_or_else(|| panic!("{}: record {}: endings is not an array", a.name, i + 1));
                assert_eq!(endings.len(), 4, "{}: record {}: want 4 endings", a.name, i + 1);
                assert!(endings.iter().all(|e| e.as_str().is_some_and(|t| !t.trim().is_empty())), "{}: record {}: empty ending", a.name, i + 1);
                assert!(["0", "1", "2", "3"].contains(&s(a, i, r, "label")), "{}: record {}: label must be \"0\"..\"3\"", a.name, i + 1);
            }
        }
    }

    #[test]
    fn mmlu_files() {
        eval_names(EVAL_MMLU, "m_mmlu", &["en", "vi", "hi"]);
        let mut ids = HashSet::new();
        for a in EVAL_MMLU {
            let recs = parse(a);
            assert!(recs.len() >= 5, "{}: {} items, want at least 5", a.name, recs.len());
            no_duplicate_instructions(a, &recs);
            for (i, r) in recs.iter().enumerate() {
                keys(a, i, r, &["id", "instruction", "option_a", "option_b", "option_c", "option_d", "answer"]);
                assert!(ids.insert(nonempty(a, i, r, "id").to_string()), "{}: record {}: duplicate id", a.name, i + 1);
                for k in ["option_a", "option_b", "option_c", "option_d"] {
                    nonempty(a, i, r, k);
                }
                check_choice(a, i, r, "ABCD");
            }
        }
    }

    #[test]
    fn find_by_language() {
        assert_eq!(find(SFT, "sr").map(|a| a.name), Some("sft/sr.json"));
        assert_eq!(find(EVAL_ARC, "bn").map(|a| a.name), Some("eval/m_arc/bn_validation.json"));
        assert!(find(EVAL_MMLU, "kn").is_none());
    }
}
