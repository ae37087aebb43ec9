//! Fuzz / property test of okapi's input parsers: safetensors files, the shard index,
//! config.json (with the layout of the config it gives), record files (loglik requests,
//! instruction records for SFT and as PPO prompts, ranking and scoring records), the evaluation
//! files of every task, prompt templates, tokenizer.json and trainer_state.json.
//!
//! Each parser gets inputs mutated deterministically from valid seeds (the fixtures, the bundled
//! data, files written by okapi's own savers): bit flips, byte inserts / deletes / duplicated
//! ranges, truncation, splices of two seeds, dictionary tokens (huge, negative and fractional
//! numbers, NaN-like words, lone surrogates, non-UTF-8 bytes), JSON-aware edits (a value replaced
//! by one of another type, keys dropped, renamed, added or duplicated, deep nesting, long strings)
//! and, for safetensors, edits of the header length, dtypes, shapes, data_offsets, `__metadata__`
//! and the data length (then, often, the offsets made consistent again so the edit reaches past
//! the offset checks). Every input runs inside `catch_unwind` and must:
//! (a) not panic: a panic prints the parser, the case index, the seed and the input;
//! (b) if refused, be refused with a message of one line that names the file (or source label);
//! (c) keep the round trips checked where cheap: safetensors saved by okapi read back equal,
//!     `ModelConfig::to_json` → `from_value` gives the same config, record and eval files parse to
//!     the same records after whitespace-only changes, a template expands as a naive substitution.
//! The unmutated seeds must all parse, and every parser must both accept and refuse a fair share of
//! its mutated inputs (so the test cannot pass by mutating nothing or by breaking everything).
//!
//! Inputs per parser by default (CI): 6000 for safetensors, 4000 each for the shard index and
//! config.json, 5000 each for the record parsers (loglik, SFT, PPO prompts, ranking, scoring),
//! the four eval tasks and the template, 3000 for trainer_state.json, 300 for tokenizer.json, and
//! 40 save → read round trips: about 15 s of wall time for the whole file in the test profile on
//! a 2-core x86-64 machine (two test threads), build excluded.
//! `OKAPI_FUZZ_INPUTS=<n>` sets the count of every parser (the round trips get n/100, at least
//! 40), `OKAPI_FUZZ_SEED=<s>` the seed (default 0); `OKAPI_FUZZ_CASE=<i>` runs case i alone, to
//! reproduce a failure with the seed it printed (a failing input longer than 4 KiB is also saved
//! under the temporary directory). The long run: benches/FUZZ.md.
mod common;

use common::{fixture, Scratch};
use okapi::data::ranking::parse_scoring_records;
use okapi::data::{parse_instructions, parse_rankings, records_from_str, InstructRecord, LoadStats, LoglikRequest, PromptTemplate, RankRecord, Tokenizer};
use okapi::model::weights::{parse_index, parse_safetensors, save, weight_files};
use okapi::model::{DType, Layout, ModelConfig, Rng};
use okapi::rlhf::checkpoint::{parse_state, TrainerState};
use okapi::rlhf::eval::{parse_records, Doc, Task};
use serde_json::{json, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

// ---------------------------------------------------------------------------------------------
// settings, random numbers

struct Settings {
    inputs: Option<usize>,
    seed: u64,
    case: Option<usize>,
}

fn settings() -> Settings {
    let var = |name: &str| std::env::var(name).ok().map(|v| v.trim().parse::<u64>().unwrap_or_else(|_| panic!("{name}={v}: expected a non-negative integer")));
    Settings { inputs: var("OKAPI_FUZZ_INPUTS").map(|n| n as usize), seed: var("OKAPI_FUZZ_SEED").unwrap_or(0), case: var("OKAPI_FUZZ_CASE").map(|c| c as usize) }
}

/// okapi's splitmix64 with the draws a fuzzer needs.
struct Gen(Rng);

impl Gen {
    /// The generator of one case: a function of the seed, the parser and the case index only, so
    /// one case can be replayed alone.
    fn for_case(seed: u64, parser: &str, case: usize) -> Gen {
        let name = parser.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
        Gen(Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ name ^ (case as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)))
    }
    /// uniform in 0..n (0 when n is 0)
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.0.next_u64() % n as u64) as usize
        }
    }
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn u64(&mut self) -> u64 {
        self.0.next_u64()
    }
}

// ---------------------------------------------------------------------------------------------
// the driver

/// What a parser did with an input: parsed it (properties held) or refused it with this message.
type Outcome = Result<(), String>;

/// A parser under test.
struct Parser {
    name: &'static str,
    /// The path (or source label) the input is read as: every error message must name it.
    source: &'static str,
    /// Parses the input, checks the properties of a success (panicking when one fails) and
    /// returns the message of a refusal.
    parse: fn(&[u8], &mut Gen) -> Outcome,
}

/// Makes one input from the seeds (the pool of dictionary keys at hand).
type Mutator = fn(&mut Gen, &[Vec<u8>], &[String]) -> Vec<u8>;

enum Attempt {
    Parsed,
    Refused(String),
    Failed(String),
}

thread_local! {
    /// Set while a parser runs: its panics are recorded here (with their location), not printed.
    static CAUGHT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// A panic hook that records the panics of parsers under test in `CAUGHT` and leaves every
/// other panic (the test's own assertions) to the default hook.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let recorded = CAUGHT.with(|c| {
                let mut c = c.borrow_mut();
                let record = c.is_some();
                if record {
                    let at = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
                    let msg = info.payload().downcast_ref::<String>().cloned().or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                    *c = Some(format!("{msg}{at}"));
                }
                record
            });
            if !recorded {
                default(info);
            }
        }));
    });
}

fn attempt(p: &Parser, input: &[u8], g: &mut Gen) -> Attempt {
    install_panic_hook();
    CAUGHT.with(|c| *c.borrow_mut() = Some(String::new()));
    let result = catch_unwind(AssertUnwindSafe(|| (p.parse)(input, g)));
    let panic = CAUGHT.with(|c| c.borrow_mut().take()).unwrap_or_default();
    match result {
        Ok(Ok(())) => Attempt::Parsed,
        Ok(Err(msg)) if msg.contains(['\n', '\r']) => Attempt::Failed(format!("error message of several lines: {msg:?}")),
        Ok(Err(msg)) if !msg.contains(p.source) => Attempt::Failed(format!("error message does not name {}: {msg:?}", p.source)),
        Ok(Err(msg)) => Attempt::Refused(msg),
        Err(_) => Attempt::Failed(format!("panicked: {panic}")),
    }
}

/// The input of a failure, to reproduce it: inline when small (escaped text or hex), else in a
/// file under the temporary directory.
fn show_input(parser: &str, case: usize, input: &[u8]) -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    if input.len() <= 4096 {
        return match std::str::from_utf8(input) {
            Ok(s) => format!("input (text, {} bytes): {s:?}", input.len()),
            Err(_) => format!("input (bytes, hex, {} bytes): {}", input.len(), hex(input)),
        };
    }
    let file = std::env::temp_dir().join(format!("okapi-fuzz-{parser}-{case}.bin"));
    let saved = std::fs::write(&file, input).map(|_| format!("written to {}", file.display())).unwrap_or_else(|e| format!("not saved: {e}"));
    format!("input: {} bytes, {saved}; the first 256 (hex): {}", input.len(), hex(&input[..256]))
}

/// Runs `p` on its seeds (all must parse) and on `ci_inputs` mutated inputs (or the count of
/// `OKAPI_FUZZ_INPUTS`); fails with every failure found (the first 5 in full).
fn fuzz(p: &Parser, seeds: &[Vec<u8>], mutate: Mutator, ci_inputs: usize) {
    let s = settings();
    assert!(!seeds.is_empty(), "{}: no seeds", p.name);
    let keys = dictionary_keys(seeds);
    let mut failures = Vec::new();
    for (i, seed) in seeds.iter().enumerate() {
        if let Attempt::Failed(why) | Attempt::Refused(why) = attempt(p, seed, &mut Gen::for_case(s.seed, "seed", i)) {
            failures.push(format!("{}: seed {i} (unmutated) does not parse: {why}; {}", p.name, show_input(p.name, i, seed)));
        }
    }
    let n = s.inputs.unwrap_or(ci_inputs);
    let cases = match s.case {
        Some(c) => c..c + 1,
        None => 0..n,
    };
    let (start, mut ran, mut parsed, mut refused, mut failed) = (Instant::now(), 0usize, 0usize, 0usize, 0usize);
    for case in cases {
        let mut g = Gen::for_case(s.seed, p.name, case);
        let input = mutate(&mut g, seeds, &keys);
        ran += 1;
        match attempt(p, &input, &mut g) {
            Attempt::Parsed => parsed += 1,
            Attempt::Refused(_) => refused += 1,
            Attempt::Failed(why) => {
                failed += 1;
                if failures.len() < 5 {
                    failures.push(format!("{}: case {case}, OKAPI_FUZZ_SEED={}: {why}\n  {}", p.name, s.seed, show_input(p.name, case, &input)));
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("fuzz {:<20} {ran:>9} inputs: {parsed} parsed, {refused} refused, {failed} failed; {secs:.2} s, {:.0} inputs/s, seed {}", p.name, ran as f64 / secs.max(1e-9), s.seed);
    assert!(failures.is_empty(), "{} failures of {}:\n{}", failed.max(failures.len()), p.name, failures.join("\n"));
    if s.case.is_none() {
        assert_eq!(ran, n, "{}: inputs run", p.name);
        // not vacuous: the mutations both keep inputs valid and break them, in fair shares
        assert!(parsed * 50 >= n && refused * 50 >= n, "{}: {parsed} parsed and {refused} refused of {n}: the mutations are off", p.name);
    }
}

/// Every object key of the seeds that parse as JSON (whole or line by line), and okapi's field
/// names: what JSON edits add and rename keys to.
fn dictionary_keys(seeds: &[Vec<u8>]) -> Vec<String> {
    fn collect(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if !out.contains(k) {
                        out.push(k.clone());
                    }
                    collect(x, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
            _ => {}
        }
    }
    let mut keys: Vec<String> = FIELD_NAMES.iter().map(|s| s.to_string()).collect();
    for seed in seeds {
        let text = String::from_utf8_lossy(seed);
        match serde_json::from_str::<Value>(&text) {
            Ok(v) => collect(&v, &mut keys),
            Err(_) => text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).for_each(|v| collect(&v, &mut keys)),
        }
    }
    keys
}

const FIELD_NAMES: &[&str] = &[
    "__metadata__", "dtype", "shape", "data_offsets", "weight_map", "metadata", "torch_dtype", "rope_scaling", "rope_parameters", "rope_theta", "rope_type", "type", "factor",
    "low_freq_factor", "high_freq_factor", "original_max_position_embeddings", "num_key_value_heads", "num_attention_heads", "head_dim", "hidden_size", "intermediate_size",
    "vocab_size", "num_hidden_layers", "num_labels", "id2label", "architectures", "model_type", "n_embed", "n_head", "n_layer", "apply_residual_connection_post_layernorm",
    "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "responses", "chosen", "rejected", "prefered_output", "preferred_output", "rejected_output",
    "instruction", "input", "output", "lang", "id", "ind", "answerKey", "choices", "text", "label", "labels", "mc1_targets", "mc2_targets", "mc1_targets_choices",
    "mc1_targets_labels", "mc2_targets_choices", "mc2_targets_labels", "endings", "ctx", "ctx_a", "ctx_b", "activity_label", "question", "answer", "option_a", "option_b",
    "option_c", "option_d", "option_e", "prompt_input", "prompt_no_input", "context", "continuation", "extra", "step", "model", "vocab", "merges", "added_tokens",
    "normalizer", "pre_tokenizer", "post_processor", "decoder",
];

// ---------------------------------------------------------------------------------------------
// mutations

const NUMBERS: &[&str] = &[
    "0", "-1", "1", "2", "3", "5", "26", "255", "256", "65536", "2147483648", "4294967295", "4294967296", "9007199254740993", "9223372036854775807", "9223372036854775808",
    "18446744073709551615", "18446744073709551616", "-9223372036854775808", "-18446744073709551616", "1e308", "-1e308", "1.7976931348623157e308", "5e-324", "0.5", "1.5",
    "-0.0", "1e-7", "3.0", "100000000000000000000000000000",
];

const STRINGS: &[&str] = &[
    "", " ", "A", "B", "E", "Z", "a", "0", "1", "5", "-1", "NaN", "Infinity", "{input}", "{instruction}", "{", "}", "{{input}}", "../model.safetensors", "/model.safetensors",
    "model.safetensors", "model-00001-of-00003.safetensors", "sub/model.safetensors", ".", "..", "line\nbreak", "\r", "\u{0}", "\u{feff}", "tiếng Việt", "中文", "مرحبا",
    "F32", "BF16", "F16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "F4", "llama", "bloom", "gpt2", "LlamaForCausalLM", "LlamaForSequenceClassification",
    "BloomForSequenceClassification", "float32", "bfloat16", "float16", "int8", "silu", "gelu", "linear", "llama3", "dynamic", "default", "vi", "en", "xx",
];

/// Byte strings spliced into inputs as they are.
const TOKENS: &[&[u8]] = &[
    b"NaN", b"-Infinity", b"Infinity", b"null", b"true", b"\"", b"\\", b"\\u0000", b"\\ud800", b"\\udc00\\ud800", b"{", b"}", b"[", b"]", b":", b",", b"\n", b"\r\n", b"\t",
    b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xef\xbb\xbf", b"[[[[[[[[", b"{\"a\":", b"1e308", b"-1", b"18446744073709551615", b"4294967296", b"0.5",
    b"-0", b"1e-400", b"1e400", b"00", b"01",
];

const INTERESTING_BYTES: &[u8] = &[0, 0xff, 0x7f, 0x80, b'"', b'{', b'}', b'[', b']', b'\\', b'\n', b'\r', b' ', b',', b':', b'0', b'9', b'-', 0xc3, 0xe0, 0xed];

/// A random JSON value of any type (numbers and strings from the lists above).
fn random_value(g: &mut Gen, keys: &[String], depth: usize) -> Value {
    match g.below(13) {
        0..=2 => serde_json::from_str::<Value>(g.pick::<&str>(NUMBERS)).expect("a JSON number"),
        3 | 4 => Value::String(g.pick(STRINGS).to_string()),
        5 => Value::String(g.pick(keys).clone()),
        6 => Value::String(if g.one_in(2) { "x" } else { "é" }.repeat(g.below(20_000))),
        7 => Value::Bool(g.one_in(2)),
        8 => Value::Null,
        9 if depth < 3 => Value::Array((0..g.below(4)).map(|_| random_value(g, keys, depth + 1)).collect()),
        10 if depth < 3 => Value::Object((0..g.below(4)).map(|_| (g.pick(keys).clone(), random_value(g, keys, depth + 1))).collect()),
        11 => deep_nesting(g),
        _ => Value::Array(vec![json!(0); g.below(2000)]),
    }
}

/// Arrays or objects nested around serde_json's recursion limit (128).
fn deep_nesting(g: &mut Gen) -> Value {
    let depth = *g.pick(&[2, 64, 126, 127, 128, 129, 300]);
    let mut v = json!(1);
    for _ in 0..depth {
        v = if g.one_in(2) { json!([v]) } else { json!({ "a": v }) };
    }
    v
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count_nodes).sum(),
        Value::Object(m) => m.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// The `k`-th node in pre-order.
fn nth_node<'a>(v: &'a mut Value, k: &mut usize) -> Option<&'a mut Value> {
    if *k == 0 {
        return Some(v);
    }
    *k -= 1;
    match v {
        Value::Array(a) => a.iter_mut().find_map(|x| nth_node(x, k)),
        Value::Object(m) => m.values_mut().find_map(|x| nth_node(x, k)),
        _ => None,
    }
}

/// One JSON-aware edit at a random node.
fn tree_edit(g: &mut Gen, root: &mut Value, keys: &[String]) {
    let mut k = g.below(count_nodes(root));
    let node = nth_node(root, &mut k).expect("k is below the node count");
    let replacement = match (g.below(8), &mut *node) {
        (2, Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(0.0);
            let tweaked = [json!(x + 1.0), json!(x - 1.0), json!(-x), json!(x * 4294967296.0), json!(x + 0.5), json!(n.as_i64().map(|i| i.wrapping_add(1)))];
            Some(g.pick(&tweaked).clone())
        }
        (2, Value::String(s)) => {
            let tweaked = [String::new(), s.repeat(2), format!("{s}\n"), s.to_uppercase(), s.chars().take(g.below(s.len() + 1)).collect(), format!("{{{s}}}")];
            Some(Value::String(g.pick(&tweaked).clone()))
        }
        (3, Value::Object(m)) if !m.is_empty() => {
            let key = m.keys().nth(g.below(m.len())).cloned().expect("non-empty");
            m.remove(&key);
            None
        }
        (3, Value::Array(a)) if !a.is_empty() => {
            a.remove(g.below(a.len()));
            None
        }
        (4, Value::Object(m)) => {
            m.insert(g.pick(keys).clone(), random_value(g, keys, 1));
            None
        }
        (4, Value::Array(a)) if !a.is_empty() => {
            let x = a[g.below(a.len())].clone();
            a.insert(g.below(a.len() + 1), x);
            None
        }
        (5, inner) => {
            let inner = inner.take();
            Some(if g.one_in(2) { json!([inner]) } else { Value::Object([(g.pick(keys).clone(), inner)].into_iter().collect()) })
        }
        (6, Value::Object(m)) if !m.is_empty() => {
            let key = m.keys().nth(g.below(m.len())).cloned().expect("non-empty");
            let x = m.remove(&key).expect("present");
            let new_key = if g.one_in(2) { g.pick(keys).clone() } else { g.pick(STRINGS).to_string() };
            m.insert(new_key, x);
            None
        }
        (6, Value::Array(a)) => {
            a.reverse();
            None
        }
        _ => Some(random_value(g, keys, 0)),
    };
    if let Some(v) = replacement {
        *node = v;
    }
}

/// Compact JSON; now and then an object gets one of its keys a second time (the text can say
/// what a `Value` cannot).
fn write_json(g: &mut Gen, v: &Value, keys: &[String], out: &mut String) {
    match v {
        Value::Object(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_json(g, x, keys, out);
            }
            if !m.is_empty() && g.one_in(24) {
                let (k, x) = m.iter().nth(g.below(m.len())).expect("non-empty");
                let again = if g.one_in(2) { x.clone() } else { random_value(g, keys, 1) };
                out.push_str(&format!(",{}:{}", Value::String(k.clone()), again));
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(g, x, keys, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A position in `lo..=hi`, clamped to `data`.
fn position(g: &mut Gen, data: &[u8], lo: usize, hi: usize) -> usize {
    let hi = hi.min(data.len());
    let lo = lo.min(hi);
    lo + g.below(hi - lo + 1)
}

/// One byte-level edit at a position in `lo..=hi`.
fn byte_edit(g: &mut Gen, data: &mut Vec<u8>, seeds: &[Vec<u8>], lo: usize, hi: usize) {
    let at = position(g, data, lo, hi);
    let len = data.len();
    match g.below(9) {
        0 if at < len => data[at] ^= 1 << g.below(8),
        1 if at < len => data[at] = *g.pick(INTERESTING_BYTES),
        2 => {
            let bytes: Vec<u8> = (0..1 + g.below(4)).map(|_| g.u64() as u8).collect();
            data.splice(at..at, bytes);
        }
        3 => {
            let end = (at + 1 + g.below(16)).min(len);
            data.drain(at..end);
        }
        4 => {
            let from = g.below(len + 1);
            let to = (from + 1 + g.below(64)).min(len);
            let range = data[from..to].to_vec();
            data.splice(at..at, range);
        }
        5 => data.truncate(at),
        6 => {
            let other = g.pick(seeds);
            let from = g.below(other.len() + 1);
            data.truncate(at);
            data.extend_from_slice(&other[from..]);
        }
        _ => {
            let token = g.pick(TOKENS);
            data.splice(at..at, token.iter().copied());
        }
    }
}

/// A JSON-aware edit of a whole JSON document or of one line of a JSONL file; `false` when
/// the text is neither (after earlier edits).
fn json_edit(g: &mut Gen, data: &mut Vec<u8>, keys: &[String]) -> bool {
    if let Ok(mut v) = serde_json::from_slice::<Value>(data) {
        for _ in 0..1 + g.below(3) {
            tree_edit(g, &mut v, keys);
        }
        let mut out = String::new();
        write_json(g, &v, keys, &mut out);
        *data = out.into_bytes();
        return true;
    }
    let Ok(text) = std::str::from_utf8(data) else { return false };
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let candidates: Vec<usize> = (0..lines.len()).filter(|&i| serde_json::from_str::<Value>(&lines[i]).is_ok()).collect();
    if candidates.is_empty() {
        return false;
    }
    let i = *g.pick(&candidates);
    let mut v: Value = serde_json::from_str(&lines[i]).expect("checked above");
    tree_edit(g, &mut v, keys);
    let mut out = String::new();
    write_json(g, &v, keys, &mut out);
    lines[i] = out;
    *data = lines.join("\n").into_bytes();
    true
}

/// An input for a text parser: a seed with 1 to 4 edits, JSON-aware or byte-level.
fn mutate_text(g: &mut Gen, seeds: &[Vec<u8>], keys: &[String]) -> Vec<u8> {
    let edits = 1 + g.below(4);
    mutate_text_n(g, seeds, keys, edits)
}

/// As `mutate_text` with one edit: for large files that few edits leave valid.
fn mutate_text_once(g: &mut Gen, seeds: &[Vec<u8>], keys: &[String]) -> Vec<u8> {
    mutate_text_n(g, seeds, keys, 1)
}

fn mutate_text_n(g: &mut Gen, seeds: &[Vec<u8>], keys: &[String], edits: usize) -> Vec<u8> {
    let mut data = g.pick(seeds).clone();
    for _ in 0..edits {
        if g.below(10) >= 6 || !json_edit(g, &mut data, keys) {
            let len = data.len();
            byte_edit(g, &mut data, seeds, 0, len);
        }
    }
    data
}

/// The text of bytes as a text parser receives it (files are read as UTF-8 by okapi, and a file
/// that is not UTF-8 is refused before any parser sees it).
fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

// ---------------------------------------------------------------------------------------------
// safetensors

const ST_SOURCE: &str = "fuzz/model-00001-of-00002.safetensors";

fn dtype_bits(dtype: &str) -> Option<u128> {
    Some(match dtype {
        "F64" | "I64" | "U64" | "C64" => 64,
        "F32" | "I32" | "U32" => 32,
        "F16" | "BF16" | "I16" | "U16" => 16,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" | "E8M0" => 8,
        "F6_E2M3" | "F6_E3M2" => 6,
        "F4" => 4,
        _ => return None,
    })
}

/// (header, data) of a safetensors file with a readable header.
fn split_safetensors(b: &[u8]) -> Option<(Value, &[u8])> {
    let n = usize::try_from(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)).ok()?;
    let header = serde_json::from_slice(b.get(8..n.checked_add(8)?)?).ok()?;
    Some((header, &b[8 + n..]))
}

const SHAPES: &[&str] = &[
    "[]", "[0]", "[1]", "[0, 7]", "[4294967296, 4294967296]", "[18446744073709551615]", "[18446744073709551615, 2]", "[3037000500, 3037000500]", "[2305843009213693951]",
    "[1152921504606846976]", "[-1]", "[1.5]", "\"x\"", "[2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]", "[3]", "[2, 2]",
];

const DTYPES: &[&str] = &["F32", "BF16", "F16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "E8M0", "F6_E2M3", "F4", "C64", "XX", "", "f32"];

/// One edit of a tensor's entry in a safetensors header.
fn edit_tensor_entry(g: &mut Gen, header: &mut Value, data_len: usize) {
    let Some(obj) = header.as_object_mut() else { return };
    let names: Vec<String> = obj.keys().filter(|k| *k != "__metadata__").cloned().collect();
    if names.is_empty() {
        return;
    }
    let name = g.pick(&names).clone();
    let other = obj.get(g.pick(&names)).and_then(|t| t.get("data_offsets")).cloned().unwrap_or(Value::Null);
    let edit = g.below(7);
    if edit == 6 {
        // another tensor on the same bytes
        let copy = obj[&name].clone();
        obj.insert(format!("{name}.copy"), copy);
        return;
    }
    let Some(entry) = obj.get_mut(&name).and_then(Value::as_object_mut) else { return };
    let (s, e) = match entry.get("data_offsets").and_then(Value::as_array).map(|a| a.iter().map(|x| x.as_u64().unwrap_or(0)).collect::<Vec<_>>()) {
        Some(o) if o.len() == 2 => (o[0], o[1]),
        _ => (0, 0),
    };
    match edit {
        0 => drop(entry.insert("dtype".into(), Value::String(g.pick(DTYPES).to_string()))),
        1 => drop(entry.insert("shape".into(), serde_json::from_str::<Value>(g.pick::<&str>(SHAPES)).expect("a JSON shape"))),
        2 => {
            let d = data_len as u64;
            let offsets = [json!([e, s]), json!([s, e.saturating_add(1)]), json!([s, e.saturating_sub(1)]), json!([s, d.saturating_add(1)]), json!([0, 0]), json!([u64::MAX - 1, u64::MAX]), other, json!([s]), json!([s, e, e]), json!([-1, e]), json!(["0", e]), json!([s, u64::MAX])];
            entry.insert("data_offsets".into(), g.pick(&offsets).clone());
        }
        3 => drop(entry.remove(*g.pick(&["dtype", "shape", "data_offsets"]))),
        4 => drop(entry.insert(g.pick(STRINGS).to_string(), json!(1))),
        _ => drop(entry.insert("shape".into(), json!([g.below(5), g.below(5)]))),
    }
}

/// `__metadata__` of another type or with values that are not strings.
fn edit_metadata(g: &mut Gen, header: &mut Value) {
    let variants = [json!(1), json!([]), json!("x"), Value::Null, json!({"format": 1}), json!({"format": {"a": 1}}), json!({"format": "pt", "k": "v"}), json!({}), json!({"format": null})];
    if let Some(obj) = header.as_object_mut() {
        obj.insert("__metadata__".into(), g.pick(&variants).clone());
    }
}

/// Tensors of `U8 [size]` back to back up to near 2^64 (8 to 10 of them: a shape's bit count
/// must fit in 64 bits), offsets consistent: the data end plus the header length overflows.
fn fill_address_space(g: &mut Gen, header: &mut Value) {
    let Some(obj) = header.as_object_mut() else { return };
    let k = 8 + g.below(3) as u64;
    let size = (u64::MAX - g.below(256) as u64) / k;
    obj.retain(|name, _| name == "__metadata__");
    for i in 0..k {
        obj.insert(format!("huge.{i}"), json!({"dtype": "U8", "shape": [size], "data_offsets": [i * size, (i + 1) * size]}));
    }
}

/// The data_offsets laid out again back to back from each tensor's shape and dtype, so that the
/// header passes the offset checks and an edit of a shape or dtype reaches what comes after.
fn rebase_offsets(header: &mut Value) -> u128 {
    let Some(obj) = header.as_object_mut() else { return 0 };
    let mut names: Vec<(u64, String)> =
        obj.iter().filter(|(k, _)| *k != "__metadata__").map(|(k, t)| (t.get("data_offsets").and_then(|o| o.get(0)).and_then(Value::as_u64).unwrap_or(0), k.clone())).collect();
    names.sort();
    let mut start: u128 = 0;
    for (_, name) in names {
        let t = &mut obj[&name];
        let bits = t.get("dtype").and_then(Value::as_str).and_then(dtype_bits);
        let dims: Option<Vec<u128>> = t.get("shape").and_then(Value::as_array).map(|a| a.iter().map(|d| d.as_u64().unwrap_or(0) as u128).collect());
        let (Some(bits), Some(dims)) = (bits, dims) else { continue };
        let Some(size) = dims.iter().try_fold(bits, |a, &d| a.checked_mul(d)).map(|b| b / 8) else { continue };
        let end = start + size;
        if end > u64::MAX as u128 {
            continue;
        }
        t["data_offsets"] = json!([start as u64, end as u64]);
        start = end;
    }
    start
}

/// A safetensors input: a seed's header edited (then often made consistent again), written
/// back with a header length that is right or wrong, before data of the right or a wrong length.
fn mutate_safetensors(g: &mut Gen, seeds: &[Vec<u8>], keys: &[String]) -> Vec<u8> {
    let seed = g.pick(seeds);
    let Some((mut header, data)) = split_safetensors(seed).filter(|_| !g.one_in(5)) else {
        let mut data = seed.clone();
        let header_end = split_safetensors(seed).map_or(64, |(h, _)| h.to_string().len() + 8);
        for _ in 0..1 + g.below(4) {
            let hi = if g.one_in(4) { data.len() } else { header_end };
            byte_edit(g, &mut data, seeds, 0, hi);
        }
        return data;
    };
    for _ in 0..1 + g.below(3) {
        match g.below(40) {
            0..=24 => edit_tensor_entry(g, &mut header, data.len()),
            25..=29 => edit_metadata(g, &mut header),
            30 => fill_address_space(g, &mut header),
            _ => tree_edit(g, &mut header, keys),
        }
    }
    let mut data = data.to_vec();
    if !g.one_in(3) {
        let end = rebase_offsets(&mut header);
        if end <= 1 << 20 && !g.one_in(4) {
            data.resize(end as usize, 0x3c);
        }
    }
    let mut h = String::new();
    write_json(g, &header, keys, &mut h);
    if g.one_in(2) {
        h.push_str(&" ".repeat((8 - h.len() % 8) % 8));
    }
    match g.below(8) {
        0 => data.truncate(g.below(data.len() + 1)),
        1 => data.extend((0..1 + g.below(16)).map(|_| g.u64() as u8)),
        2 => data.clear(),
        _ => {}
    }
    let true_len = h.len() as u64;
    let total = (h.len() + data.len()) as u64;
    let lengths = [true_len, true_len, true_len, true_len, true_len, 0, u64::MAX, 1 << 40, total + 1 + g.below(8) as u64, true_len.saturating_sub(1), 100_000_001, g.u64()];
    let mut out = g.pick(&lengths).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&data);
    out
}

fn parse_safetensors_input(bytes: &[u8], _: &mut Gen) -> Outcome {
    let tensors = parse_safetensors(bytes, Path::new(ST_SOURCE)).map_err(|e| e.to_string())?;
    for (name, t, _) in &tensors {
        let n = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        assert_eq!(n, Some(t.data.len()), "tensor {name:?}: shape {:?} with {} values", t.shape, t.data.len());
    }
    Ok(())
}

const SAFETENSORS: Parser = Parser { name: "safetensors", source: ST_SOURCE, parse: parse_safetensors_input };

/// Small random tensors `(name, shape, values)`: 0 to 3 dims of 0 to 4, special values included.
fn random_tensors(g: &mut Gen, finite_only: bool) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let specials = [0.0, -0.0, 1.0, -1.5, f32::MAX, f32::MIN_POSITIVE, 1e-40, f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
    (0..1 + g.below(6))
        .map(|i| {
            let shape: Vec<usize> = (0..g.below(4)).map(|_| g.below(5)).collect();
            let n: usize = shape.iter().product();
            let data = (0..n)
                .map(|_| if g.one_in(4) { *g.pick(&specials[..if finite_only { 7 } else { specials.len() }]) } else { (g.u64() as i64 as f64 / 1e18) as f32 })
                .collect();
            (format!("model.layers.{i}.weight"), shape, data)
        })
        .collect()
}

/// Seeds written by okapi's saver (a single file, and shards with their index), then the
/// fixtures' weight files.
fn safetensors_seeds(scratch: &Scratch) -> (Vec<Vec<u8>>, Vec<u8>) {
    let mut seeds = Vec::new();
    let mut index = Vec::new();
    for (i, (dtype, max_shard)) in [(DType::F32, usize::MAX), (DType::BF16, usize::MAX), (DType::F16, 48), (DType::F32, 1)].into_iter().enumerate() {
        let dir = scratch.root.join(format!("seed{i}"));
        save(&dir, &random_tensors(&mut Gen::for_case(1, "safetensors seeds", i), false), dtype, max_shard).unwrap();
        for f in weight_files(&dir).unwrap() {
            seeds.push(std::fs::read(f).unwrap());
        }
        if let Ok(text) = std::fs::read(dir.join("model.safetensors.index.json")) {
            index = text;
        }
    }
    assert!(!index.is_empty(), "a sharded seed with its index");
    for f in ["llama_gqa/model-00001-of-00003.safetensors", "llama_gqa/model-00003-of-00003.safetensors", "bloom_6h/model.safetensors"] {
        seeds.push(std::fs::read(fixture(f)).unwrap());
    }
    (seeds, index)
}

#[test]
fn fuzz_safetensors() {
    let scratch = Scratch::new("fuzz-safetensors");
    let (seeds, _) = safetensors_seeds(&scratch);
    fuzz(&SAFETENSORS, &seeds, mutate_safetensors, 6000);
}

/// Tensors written by okapi's saver read back as they were: f32 bit for bit; bf16 and f16 as a
/// fixed point (saving what was read and reading it again gives the same bits).
#[test]
fn safetensors_saved_by_okapi_read_back_equal() {
    let s = settings();
    let n = s.inputs.map_or(40, |n| (n / 100).max(40));
    let scratch = Scratch::new("fuzz-st-roundtrip");
    let read_back = |dir: &Path| -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut out: Vec<(String, Vec<usize>, Vec<f32>)> =
            weight_files(dir).unwrap().iter().flat_map(|f| parse_safetensors(&std::fs::read(f).unwrap(), f).unwrap()).map(|(name, t, _)| (name, t.shape, t.data)).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    };
    let bits = |t: &[(String, Vec<usize>, Vec<f32>)]| t.iter().map(|(n, s, d)| (n.clone(), s.clone(), d.iter().map(|x| x.to_bits()).collect::<Vec<_>>())).collect::<Vec<_>>();
    for case in 0..n {
        let mut g = Gen::for_case(s.seed, "safetensors round trip", case);
        let dtype = *g.pick(&[DType::F32, DType::BF16, DType::F16]);
        let tensors = random_tensors(&mut g, dtype != DType::F32);
        let max_shard = *g.pick(&[1, 24, 100, usize::MAX]);
        let (a, b) = (scratch.root.join(format!("{case}a")), scratch.root.join(format!("{case}b")));
        save(&a, &tensors, dtype, max_shard).unwrap();
        let first = read_back(&a);
        if let Ok(index) = std::fs::read_to_string(a.join("model.safetensors.index.json")) {
            assert_eq!(parse_index(&index, &a.join("model.safetensors.index.json"), &a).unwrap(), weight_files(&a).unwrap());
        }
        if dtype == DType::F32 {
            let mut want = tensors.clone();
            want.sort_by(|x, y| x.0.cmp(&y.0));
            assert_eq!(bits(&first), bits(&want), "case {case}: f32 tensors read back");
        } else {
            save(&b, &first, dtype, max_shard).unwrap();
            assert_eq!(bits(&read_back(&b)), bits(&first), "case {case}: {dtype:?} tensors saved again read back");
            assert_eq!(first.iter().map(|t| (&t.0, &t.1)).collect::<Vec<_>>(), tensors.iter().map(|t| (&t.0, &t.1)).collect::<Vec<_>>(), "case {case}: names and shapes");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the shard index

const INDEX_DIR: &str = "fuzz/model";
const INDEX_SOURCE: &str = "fuzz/model/model.safetensors.index.json";

fn parse_index_input(bytes: &[u8], _: &mut Gen) -> Outcome {
    let files = parse_index(&text(bytes), Path::new(INDEX_SOURCE), Path::new(INDEX_DIR)).map_err(|e| e.to_string())?;
    for f in &files {
        assert_eq!(f.parent(), Some(Path::new(INDEX_DIR)), "shard {} is not a file of the model directory", f.display());
    }
    assert!(files.windows(2).all(|w| w[0] < w[1]), "shards sorted, each once: {files:?}");
    Ok(())
}

const SHARD_INDEX: Parser = Parser { name: "shard_index", source: INDEX_SOURCE, parse: parse_index_input };

#[test]
fn fuzz_shard_index() {
    let scratch = Scratch::new("fuzz-index");
    let (_, saved_index) = safetensors_seeds(&scratch);
    let seeds = vec![std::fs::read(fixture("llama_gqa/model.safetensors.index.json")).unwrap(), saved_index];
    fuzz(&SHARD_INDEX, &seeds, mutate_text, 4000);
}

// ---------------------------------------------------------------------------------------------
// config.json

const CONFIG_SOURCE: &str = "fuzz/model/config.json";

/// The layout of a config with more layers is not computed: `Layout::new` builds a table entry
/// per tensor of every layer (see the report in benches/FUZZ.md).
const LAYOUT_MAX_LAYERS: usize = 4096;

/// A config without its raw JSON, for comparisons.
fn config_fields(cfg: &ModelConfig) -> String {
    let mut c = cfg.clone();
    c.raw = Value::Null;
    format!("{c:?}")
}

fn parse_config_input(bytes: &[u8], _: &mut Gen) -> Outcome {
    let path = PathBuf::from(CONFIG_SOURCE);
    let cfg = ModelConfig::from_json(&text(bytes), path.clone()).map_err(|e| e.to_string())?;
    if cfg.n_layers <= LAYOUT_MAX_LAYERS {
        let layout = Layout::new(&cfg);
        let numel: usize = layout.info.iter().map(|p| p.numel()).fold(0, usize::saturating_add);
        assert!(numel > 0, "a layout with parameters");
    }
    let again = ModelConfig::from_value(cfg.to_json(cfg.dtype), path.clone()).expect("to_json of a parsed config parses");
    assert_eq!(config_fields(&again), config_fields(&cfg), "to_json → from_value");
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let saved_as = ModelConfig::from_value(cfg.to_json(dtype), path.clone()).expect("to_json of a parsed config parses");
        assert_eq!(saved_as.dtype, dtype, "to_json({dtype:?}) → from_value: the dtype saved");
    }
    Ok(())
}

const CONFIG: Parser = Parser { name: "config", source: CONFIG_SOURCE, parse: parse_config_input };

#[test]
fn fuzz_config() {
    let seeds: Vec<Vec<u8>> = ["llama_gqa", "bloom_6h", "llama_rope_linear", "llama_rope_llama3", "rm_llama_gqa/model", "ppo_llama_gqa/reference"]
        .iter()
        .map(|d| std::fs::read(fixture(d).join("config.json")).unwrap())
        .collect();
    fuzz(&CONFIG, &seeds, mutate_text, 4000);
}

// ---------------------------------------------------------------------------------------------
// record files

/// `text` with only the whitespace between JSON tokens changed (after structural characters,
/// blank lines between JSONL records, CRLF line ends): a file that means the same.
fn respace(g: &mut Gen, text: &str) -> String {
    let jsonl = !text.trim_start().starts_with('[');
    let crlf = g.one_in(3);
    let spaces: &[&str] = if jsonl { &[" ", "\t", "  "] } else { &[" ", "\t", "\n", "\r\n", "  \n  "] };
    let mut out = String::with_capacity(text.len() * 2);
    if g.one_in(2) {
        out.push_str(if jsonl { "\n  \n" } else { " \n\t" });
    }
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if c == '\n' && jsonl {
            // a JSONL record ends at its line, even a malformed one with an open string
            (in_string, escaped) = (false, false);
        }
        if in_string {
            in_string = escaped || c != '"';
            escaped = !escaped && c == '\\';
            out.push(c);
            continue;
        }
        match c {
            '"' => in_string = true,
            '\n' if crlf && !out.ends_with('\r') => out.push('\r'),
            _ => {}
        }
        out.push(c);
        if c == '\n' && jsonl && g.one_in(4) {
            out.push_str(if crlf { " \r\n" } else { "\t\n" });
        }
        if "{}[],:".contains(c) && g.one_in(3) {
            out.push_str(g.pick::<&str>(spaces));
        }
    }
    if g.one_in(2) {
        out.push_str(if crlf { "\r\n\r\n" } else { "\n \n" });
    }
    out
}

const RECORDS_SOURCE: &str = "fuzz/data/vi_records.jsonl";

fn parse_loglik_input(bytes: &[u8], g: &mut Gen) -> Outcome {
    let text = text(bytes);
    let reqs: Vec<LoglikRequest> = records_from_str(&text, Path::new(RECORDS_SOURCE)).map_err(|e| e.to_string())?;
    if g.one_in(3) {
        let again: Vec<LoglikRequest> = records_from_str(&respace(g, &text), Path::new(RECORDS_SOURCE)).expect("the same file respaced parses");
        assert_eq!(again, reqs, "respaced");
    }
    Ok(())
}

const LOGLIK: Parser = Parser { name: "records_loglik", source: RECORDS_SOURCE, parse: parse_loglik_input };

/// A JSONL version of a JSON array file.
fn to_jsonl(array: &[u8]) -> Vec<u8> {
    let v: Vec<Value> = serde_json::from_slice(array).unwrap();
    v.iter().map(|x| x.to_string() + "\n").collect::<String>().into_bytes()
}

/// A JSON array version of a JSONL file.
fn to_array(jsonl: &[u8]) -> Vec<u8> {
    let v: Vec<Value> = String::from_utf8_lossy(jsonl).lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
    serde_json::to_vec_pretty(&v).unwrap()
}

fn read_all(paths: &[&str]) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    paths.iter().map(|p| std::fs::read(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))).collect()
}

#[test]
fn fuzz_records_loglik() {
    let mut seeds = read_all(&["tests/fixtures/llama_gqa/loglik.jsonl", "tests/fixtures/bloom_6h/loglik.jsonl", "tests/fixtures/eval/arc_0shot_requests.jsonl"]);
    seeds.push(to_array(&seeds[0]));
    fuzz(&LOGLIK, &seeds, mutate_text, 5000);
}

/// (instruction, input, output, lang, id) of a record.
type InstructContent = (String, String, String, Option<String>, Option<String>);

/// Instruction records without their origins (which name lines, and move when lines do).
fn contents(recs: &[InstructRecord]) -> Vec<InstructContent> {
    recs.iter().map(|r| (r.instruction.clone(), r.input.clone(), r.output.clone(), r.lang.clone(), r.id.clone())).collect()
}

/// The languages kept: all (most often), or a few.
fn random_langs(g: &mut Gen) -> Option<Vec<String>> {
    g.one_in(3).then(|| vec!["vi".to_string(), "en".to_string()])
}

fn check_instructions(bytes: &[u8], g: &mut Gen, need_output: bool) -> Result<(Vec<InstructRecord>, LoadStats), String> {
    let text = text(bytes);
    let langs = random_langs(g);
    let (recs, stats) = parse_instructions(&text, Path::new(RECORDS_SOURCE), langs.as_deref(), need_output).map_err(|e| e.to_string())?;
    assert_eq!(stats.kept, recs.len());
    assert!(recs.iter().all(|r| r.origin.starts_with(RECORDS_SOURCE)), "origins name the file");
    if g.one_in(3) {
        let (again, again_stats) = parse_instructions(&respace(g, &text), Path::new(RECORDS_SOURCE), langs.as_deref(), need_output).expect("the same file respaced parses");
        assert_eq!((contents(&again), again_stats), (contents(&recs), stats.clone()), "respaced");
    }
    Ok((recs, stats))
}

fn parse_sft_input(bytes: &[u8], g: &mut Gen) -> Outcome {
    check_instructions(bytes, g, true).map(drop)
}

/// The fixture policy's tokenizer, loaded once.
fn policy_tokenizer() -> &'static Tokenizer {
    static TOKENIZER: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
    TOKENIZER.get_or_init(|| Tokenizer::load(&fixture("llama_gqa")).unwrap())
}

/// PPO's prompts (`okapi-train ppo`'s `load_prompts`): instruction records without outputs, each
/// put in Okapi's template and tokenized.
fn parse_ppo_input(bytes: &[u8], g: &mut Gen) -> Outcome {
    let (recs, _) = check_instructions(bytes, g, false)?;
    let tpl = PromptTemplate::okapi();
    // tokenizing is most of the time: one input in four
    let tokenize = g.one_in(4);
    for r in &recs {
        let prompt = tpl.prompt(&r.instruction, &r.input);
        assert!(prompt.contains(&r.instruction), "the prompt holds the instruction");
        if tokenize {
            policy_tokenizer().encode(&prompt, true).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

const SFT: Parser = Parser { name: "records_sft", source: RECORDS_SOURCE, parse: parse_sft_input };
const PPO: Parser = Parser { name: "records_ppo_prompts", source: RECORDS_SOURCE, parse: parse_ppo_input };

#[test]
fn fuzz_records_sft() {
    let mut seeds = read_all(&["tests/fixtures/sft_data.json", "data/assets/sft/vi.json", "data/assets/sft/zh.json", "data/assets/sft/ar.json"]);
    seeds.push(to_jsonl(&seeds[0]));
    fuzz(&SFT, &seeds, mutate_text, 5000);
}

#[test]
fn fuzz_records_ppo_prompts() {
    let mut seeds = read_all(&["data/assets/rl/en.json", "data/assets/rl/vi.json", "data/assets/rl/hi.json", "tests/fixtures/sft_data.json"]);
    seeds.push(to_jsonl(&seeds[0]));
    fuzz(&PPO, &seeds, mutate_text, 5000);
}

fn rank_contents(recs: &[RankRecord]) -> Vec<(String, String, Vec<String>, Option<String>)> {
    recs.iter().map(|r| (r.instruction.clone(), r.input.clone(), r.responses.clone(), r.lang.clone())).collect()
}

fn parse_ranking_input(bytes: &[u8], g: &mut Gen) -> Outcome {
    let text = text(bytes);
    let langs = random_langs(g);
    let (recs, stats) = parse_rankings(&text, Path::new(RECORDS_SOURCE), langs.as_deref()).map_err(|e| e.to_string())?;
    assert!(recs.iter().all(|r| r.responses.len() >= 2 && r.origin.starts_with(RECORDS_SOURCE)), "kept records have two responses or more");
    if g.one_in(3) {
        let (again, again_stats) = parse_rankings(&respace(g, &text), Path::new(RECORDS_SOURCE), langs.as_deref()).expect("the same file respaced parses");
        assert_eq!((rank_contents(&again), again_stats), (rank_contents(&recs), stats), "respaced");
    }
    Ok(())
}

fn parse_scoring_input(bytes: &[u8], g: &mut Gen) -> Outcome {
    let text = text(bytes);
    let recs = parse_scoring_records(&text, Path::new(RECORDS_SOURCE)).map_err(|e| e.to_string())?;
    if g.one_in(3) {
        let again = parse_scoring_records(&respace(g, &text), Path::new(RECORDS_SOURCE)).expect("the same file respaced parses");
        assert_eq!(rank_contents(&again), rank_contents(&recs), "respaced");
    }
    Ok(())
}

const RANKING: Parser = Parser { name: "records_ranking", source: RECORDS_SOURCE, parse: parse_ranking_input };
const SCORING: Parser = Parser { name: "records_scoring", source: RECORDS_SOURCE, parse: parse_scoring_input };

#[test]
fn fuzz_records_ranking() {
    let mut seeds = read_all(&["tests/fixtures/ranking_data.json", "data/assets/ranking/vi.json", "data/assets/ranking/ru.json"]);
    seeds.push(to_jsonl(&seeds[0]));
    fuzz(&RANKING, &seeds, mutate_text, 5000);
}

#[test]
fn fuzz_records_scoring() {
    let mut seeds = read_all(&["tests/fixtures/ranking_data.json", "tests/fixtures/sft_data.json", "data/assets/ranking/en.json"]);
    seeds.push(to_jsonl(&seeds[0]));
    fuzz(&SCORING, &seeds, mutate_text, 5000);
}

// ---------------------------------------------------------------------------------------------
// evaluation files

const EVAL_SOURCE: &str = "fuzz/eval/vi_validation.json";

/// A document has two choices or more and its gold answers among them.
fn doc_ok(doc: &Doc) -> bool {
    match doc {
        Doc::Arc { options, gold, .. } | Doc::Mmlu { options, gold, .. } => options.len() >= 2 && *gold < options.len(),
        Doc::Hellaswag { endings, gold, .. } => endings.len() >= 2 && *gold < endings.len(),
        Doc::TruthfulQa { mc1, mc1_gold, mc2, mc2_true, .. } => mc1.len() >= 2 && *mc1_gold < mc1.len() && mc2.len() >= 2 && mc2.len() == mc2_true.len(),
    }
}

fn check_eval(task: Task, bytes: &[u8], g: &mut Gen) -> Outcome {
    let text = text(bytes);
    let parsed = parse_records(task, &text, EVAL_SOURCE)?;
    for m in &parsed.skipped {
        assert!(!m.contains(['\n', '\r']) && m.contains(EVAL_SOURCE), "a skip message of one line naming the file: {m:?}");
    }
    for r in &parsed.records {
        assert!(doc_ok(&r.doc), "record {}: {:?}", r.id, r.doc);
    }
    if g.one_in(3) {
        let again = parse_records(task, &respace(g, &text), EVAL_SOURCE).expect("the same file respaced parses");
        assert_eq!((&again.records, again.skipped.len()), (&parsed.records, parsed.skipped.len()), "respaced");
    }
    Ok(())
}

fn parse_arc_input(bytes: &[u8], g: &mut Gen) -> Outcome {
    check_eval(Task::Arc, bytes, g)
}
fn parse_hellaswag_input(bytes: &[u8], g: &mut Gen) -> Outcome {
    check_eval(Task::Hellaswag, bytes, g)
}
fn parse_mmlu_input(bytes: &[u8], g: &mut Gen) -> Outcome {
    check_eval(Task::Mmlu, bytes, g)
}
fn parse_truthfulqa_input(bytes: &[u8], g: &mut Gen) -> Outcome {
    check_eval(Task::TruthfulQa, bytes, g)
}

const EVAL_ARC: Parser = Parser { name: "eval_arc", source: EVAL_SOURCE, parse: parse_arc_input };
const EVAL_HELLASWAG: Parser = Parser { name: "eval_hellaswag", source: EVAL_SOURCE, parse: parse_hellaswag_input };
const EVAL_MMLU: Parser = Parser { name: "eval_mmlu", source: EVAL_SOURCE, parse: parse_mmlu_input };
const EVAL_TRUTHFULQA: Parser = Parser { name: "eval_truthfulqa", source: EVAL_SOURCE, parse: parse_truthfulqa_input };

const AI2_ARC: &str = r#"[{"id": "Mercury_1", "question": "Which gas do plants take in?", "choices": {"text": ["Oxygen", "Carbon dioxide", "Nitrogen"], "label": ["A", "B", "C"]}, "answerKey": "B"},
{"id": "Mercury_2", "question": "What melts ice?", "choices": {"text": ["Heat", "Cold", "Dark", "Wind"], "label": ["1", "2", "3", "4"]}, "answerKey": "1"}]"#;
const MMLU_CHOICES: &str = "{\"question\": \"2 + 2 = ?\", \"choices\": [\"3\", \"4\", \"5\", \"22\"], \"answer\": 1}\n{\"question\": \"Sky?\", \"choices\": [\"blue\", \"green\"], \"answer\": \"A\"}\n";
const TRUTHFULQA: &str = r#"[{"question": "Can pigs fly?", "mc1_targets": {"choices": ["No.", "Yes."], "labels": [1, 0]}, "mc2_targets": {"choices": ["No.", "Not on their own.", "Yes."], "labels": [1, 1, 0]}},
{"question": "Is water wet?", "mc1_targets_choices": ["It depends.", "Always."], "mc1_targets_labels": [0, 1], "mc2_targets_choices": ["Yes.", "No."], "mc2_targets_labels": [true, false]}]"#;

fn eval_seeds(task: Task) -> Vec<Vec<u8>> {
    match task {
        Task::Arc => {
            let mut s = read_all(&["tests/fixtures/eval/arc_ru.jsonl", "tests/fixtures/eval/arc_vi.json", "data/assets/eval/m_arc/en_validation.json", "data/assets/eval/m_arc/zh_validation.json"]);
            s.push(AI2_ARC.as_bytes().to_vec());
            s
        }
        Task::Hellaswag => read_all(&["data/assets/eval/m_hellaswag/en_validation.json", "data/assets/eval/m_hellaswag/ru_validation.json"]),
        Task::Mmlu => {
            let mut s = read_all(&["data/assets/eval/m_mmlu/en_validation.json", "data/assets/eval/m_mmlu/hi_validation.json"]);
            s.push(MMLU_CHOICES.as_bytes().to_vec());
            s
        }
        Task::TruthfulQa => vec![TRUTHFULQA.as_bytes().to_vec(), to_jsonl(TRUTHFULQA.as_bytes())],
    }
}

fn fuzz_eval(p: &Parser, task: Task) {
    let seeds = eval_seeds(task);
    for (i, seed) in seeds.iter().enumerate() {
        let parsed = parse_records(task, &text(seed), EVAL_SOURCE).unwrap();
        assert!(!parsed.records.is_empty() && parsed.skipped.is_empty(), "{task} seed {i}: {:?}", parsed.skipped);
    }
    // another task's files, as seeds to mutate
    let mut pool = seeds;
    pool.extend(Task::ALL.into_iter().filter(|&t| t != task).map(|t| eval_seeds(t).swap_remove(0)));
    fuzz(p, &pool, mutate_text, 5000);
}

#[test]
fn fuzz_eval_arc() {
    fuzz_eval(&EVAL_ARC, Task::Arc);
}

#[test]
fn fuzz_eval_hellaswag() {
    fuzz_eval(&EVAL_HELLASWAG, Task::Hellaswag);
}

#[test]
fn fuzz_eval_mmlu() {
    fuzz_eval(&EVAL_MMLU, Task::Mmlu);
}

#[test]
fn fuzz_eval_truthfulqa() {
    fuzz_eval(&EVAL_TRUTHFULQA, Task::TruthfulQa);
}

// ---------------------------------------------------------------------------------------------
// prompt templates

const TEMPLATE_SOURCE: &str = "fuzz/templates/alpaca.json";

/// Texts a prompt is made of: placeholders and lone braces among them.
const PROMPT_TEXTS: &[&str] = &["", "x", "{input}", "{instruction}", "{", "}", "{{input}}", "Dịch {input} sang tiếng Anh.", "a\nb", "{in", "put}", "中文 {instruction}"];

/// The reference expansion: each placeholder of the template replaced by a marker no text
/// holds, then the markers by the texts, so a text is never expanded again.
fn naive_prompt(t: &PromptTemplate, instruction: &str, input: &str) -> String {
    let tpl = if input.is_empty() { &t.prompt_no_input } else { &t.prompt_input };
    tpl.replace("{instruction}", "\u{1}I\u{1}").replace("{input}", "\u{1}N\u{1}").replace("\u{1}I\u{1}", instruction).replace("\u{1}N\u{1}", input)
}

fn parse_template_input(bytes: &[u8], g: &mut Gen) -> Outcome {
    let t = PromptTemplate::from_json(&text(bytes), Path::new(TEMPLATE_SOURCE)).map_err(|e| e.to_string())?;
    if t.prompt_input.contains('\u{1}') || t.prompt_no_input.contains('\u{1}') {
        return Ok(());
    }
    // pieces of texts and single characters: near-placeholders such as `{inp{input}` too
    let piece = |g: &mut Gen| -> String {
        (0..g.below(6)).map(|_| if g.one_in(2) { g.pick(PROMPT_TEXTS).to_string() } else { g.pick(&['{', '}', 'i', 'n', 'p', 'u', 't', 's', 'r', 'c', 'o', 'é', '\n', '中']).to_string() }).collect()
    };
    for _ in 0..4 {
        let (instruction, input) = (piece(g), piece(g));
        assert_eq!(t.prompt(&instruction, &input), naive_prompt(&t, &instruction, &input), "prompt({instruction:?}, {input:?})");
    }
    Ok(())
}

const TEMPLATE: Parser = Parser { name: "template", source: TEMPLATE_SOURCE, parse: parse_template_input };

#[test]
fn fuzz_template() {
    let okapi = PromptTemplate::okapi();
    let seeds: Vec<Vec<u8>> = [
        json!({"description": "Template used by Alpaca-LoRA.", "prompt_input": okapi.prompt_input, "prompt_no_input": okapi.prompt_no_input, "response_split": "### Response:"}),
        json!({"prompt_input": "{instruction}\n{input}\n", "prompt_no_input": "{instruction}\n"}),
        json!({"prompt_input": "{{x}} {instruction} } { {input} {in", "prompt_no_input": "{ {instruction}{"}),
    ]
    .iter()
    .map(|v| serde_json::to_vec_pretty(v).unwrap())
    .collect();
    fuzz(&TEMPLATE, &seeds, mutate_text, 5000);
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json

const TOKENIZER_SOURCE: &str = "fuzz/model/tokenizer.json";

fn parse_tokenizer_input(bytes: &[u8], _: &mut Gen) -> Outcome {
    let tok = Tokenizer::from_json(&text(bytes), Path::new(TOKENIZER_SOURCE)).map_err(|e| e.to_string())?;
    let ids = tok.encode("Xin chào {input}, мир! 中文", true).map_err(|e| e.to_string())?;
    tok.decode(&ids, true).map_err(|e| e.to_string())?;
    Ok(())
}

const TOKENIZER: Parser = Parser { name: "tokenizer", source: TOKENIZER_SOURCE, parse: parse_tokenizer_input };

#[test]
fn fuzz_tokenizer() {
    let seeds = read_all(&["tests/fixtures/llama_gqa/tokenizer.json", "tests/fixtures/bloom_6h/tokenizer.json"]);
    fuzz(&TOKENIZER, &seeds, mutate_text_once, 300);
}

// ---------------------------------------------------------------------------------------------
// trainer_state.json

const STATE_SOURCE: &str = "fuzz/out/checkpoint/trainer_state.json";

fn parse_state_input(bytes: &[u8], _: &mut Gen) -> Outcome {
    let state = parse_state(&text(bytes), Path::new(STATE_SOURCE)).map_err(|e| e.to_string())?;
    let again = parse_state(&serde_json::to_string(&state).unwrap(), Path::new(STATE_SOURCE)).expect("a state written parses");
    assert_eq!(again, state, "write → read");
    Ok(())
}

const TRAINER_STATE: Parser = Parser { name: "trainer_state", source: STATE_SOURCE, parse: parse_state_input };

#[test]
fn fuzz_trainer_state() {
    let state = |command: &str, step: u64, extra: Value| TrainerState {
        command: command.into(),
        step,
        total_steps: 2 * step + 1,
        epoch: 1,
        micro_in_epoch: 7,
        seed: 42,
        model_fingerprint: "llama hidden=64 layers=2 heads=4/2 head_dim=16 ffn=112 vocab=400 tied=false".into(),
        data_fingerprint: "cbf29ce484222325".into(),
        tokens_seen: 123_456,
        elapsed_s: 12.5,
        extra,
        settings: [("--lr".to_string(), json!(1e-5)), ("--no-shuffle".to_string(), json!(false))].into(),
    };
    let seeds: Vec<Vec<u8>> = [state("sft", 3, Value::Null), state("ppo", 10, json!({"kl_coef": 0.05, "iteration": 10})), state("reward", u64::MAX / 2, json!([1, "x"]))]
        .iter()
        .map(|s| serde_json::to_vec_pretty(s).unwrap())
        .collect();
    fuzz(&TRAINER_STATE, &seeds, mutate_text, 3000);
}

// ---------------------------------------------------------------------------------------------
// regressions: inputs the fuzzer found, kept as fixed cases

/// What a parser must do with a fixed input now.
enum Expect {
    Parsed,
    /// refused, with a message holding this text
    Refused(&'static str),
}

/// A fixture's JSON file with top-level keys set (`Value::Null` here removes the key).
fn fixture_json_with(path: &str, set: &[(&str, Value)]) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&std::fs::read(fixture(path)).unwrap()).unwrap();
    let obj = v.as_object_mut().unwrap();
    for (k, x) in set {
        match x {
            Value::Null => drop(obj.remove(*k)),
            x => drop(obj.insert(k.to_string(), x.clone())),
        }
    }
    serde_json::to_vec_pretty(&v).unwrap()
}

/// A safetensors file of this header and `data_len` bytes of data.
fn safetensors_with_header(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + data_len, 0);
    out
}

/// A safetensors file of `n` tensors `U8 [size]` back to back, no data.
fn huge_safetensors(n: u64, size: u64) -> Vec<u8> {
    let header: serde_json::Map<String, Value> = (0..n).map(|i| (format!("t{i}"), json!({"dtype": "U8", "shape": [size], "data_offsets": [i * size, (i + 1) * size]}))).collect();
    let h = Value::Object(header).to_string();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out
}

fn regression_cases() -> Vec<(&'static Parser, Vec<u8>, Expect)> {
    let llama = "llama_gqa/config.json";
    let index = |file: &str| json!({"metadata": {}, "weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors", "model.norm.weight": file}}).to_string().into_bytes();
    let mut cases = vec![
        // config: products that overflowed in Layout (a panic with overflow checks), BLOOM's 4 × hidden_size
        (&CONFIG, fixture_json_with(llama, &[("intermediate_size", json!(9223372036854775807u64))]), Expect::Refused("intermediate_size")),
        (&CONFIG, fixture_json_with(llama, &[("vocab_size", json!(4294967296u64)), ("hidden_size", json!(4294967296u64)), ("head_dim", Value::Null)]), Expect::Refused("overflows")),
        (&CONFIG, fixture_json_with("bloom_6h/config.json", &[("hidden_size", json!(18446744073709551614u64)), ("n_head", json!(2))]), Expect::Refused("hidden_size")),
        (&CONFIG, fixture_json_with(llama, &[("num_attention_heads", json!(4294967296u64)), ("num_key_value_heads", json!(4294967296u64)), ("head_dim", json!(4294967296u64))]), Expect::Refused("head_dim")),
        // config: a token id past u32 was truncated to another id
        (&CONFIG, fixture_json_with(llama, &[("eos_token_id", json!(4294967298u64))]), Expect::Refused("eos_token_id")),
        (&CONFIG, fixture_json_with(llama, &[("bos_token_id", json!([4294967296u64, 2]))]), Expect::Refused("bos_token_id")),
        // config: strings of the file quoted raw made messages of several lines
        (&CONFIG, fixture_json_with(llama, &[("model_type", json!("\r"))]), Expect::Refused("model_type")),
        (&CONFIG, fixture_json_with(llama, &[("architectures", json!(["LlamaForCausalLM\n"]))]), Expect::Refused("architectures")),
        (&CONFIG, fixture_json_with(llama, &[("hidden_act", json!("gelu\nx"))]), Expect::Refused("hidden_act")),
        (&CONFIG, fixture_json_with(llama, &[("rope_parameters", json!({"rope_theta": 10000.0, "rope_type": "default\n"}))]), Expect::Refused("rope_type")),
        // config: with both `dtype` and `torch_dtype`, to_json updated the one from_value does not read
        (&CONFIG, fixture_json_with(llama, &[("torch_dtype", json!("bfloat16"))]), Expect::Parsed),
        // shard index: names outside the model directory were accepted
        (&SHARD_INDEX, index("../model-00002-of-00002.safetensors"), Expect::Refused("shard path must be a file name inside the model directory")),
        (&SHARD_INDEX, index("/etc/model.safetensors"), Expect::Refused("shard path must be a file name")),
        (&SHARD_INDEX, index(""), Expect::Refused("shard path must be a file name")),
        (&SHARD_INDEX, index("."), Expect::Refused("shard path must be a file name")),
        (&SHARD_INDEX, index("sub/model.safetensors"), Expect::Refused("shard path must be a file name")),
        (&SHARD_INDEX, index("model.safetensors/"), Expect::Refused("shard path must be a file name")),
        (&SHARD_INDEX, br#"{"weight_map": {"a\nb": 1}}"#.to_vec(), Expect::Refused("expected a file name")),
        (&SHARD_INDEX, index("model-00002-of-00002.safetensors"), Expect::Parsed),
        // safetensors: data_offsets ending near 2^64 overflowed inside the safetensors crate
        (&SAFETENSORS, huge_safetensors(8, u64::MAX / 8), Expect::Refused("data_offsets")),
        (&SAFETENSORS, huge_safetensors(10, u64::MAX / 10), Expect::Refused("data_offsets")),
        // safetensors: the file's strings quoted raw in messages (serde's unknown variant, a tensor's name)
        (&SAFETENSORS, safetensors_with_header(r#"{"w":{"dtype":"F32\n","shape":[1],"data_offsets":[0,4]}}"#, 4), Expect::Refused("unknown variant")),
        (&SAFETENSORS, safetensors_with_header(r#"{"a\nb":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#, 8), Expect::Refused("not supported")),
        // loglik records: an unknown field's name quoted raw by serde (line breaks included)
        (&LOGLIK, b"{\"context\": \"a\", \"continuation\": \"b\", \"x\\ny\": 1}\n".to_vec(), Expect::Refused("unknown field")),
        (&LOGLIK, b"[{\"context\": \"a\", \"continu\\r\\nation\": \"b\"}]".to_vec(), Expect::Refused("record 1")),
        // eval: a record id quoted raw in the skip message
        (&EVAL_ARC, b"{\"id\": \"q\\n1\", \"instruction\": \"Q?\", \"option_a\": \"x\", \"answer\": \"A\"}\n{\"id\": \"q2\", \"instruction\": \"Q?\", \"option_a\": \"x\", \"option_b\": \"y\", \"answer\": \"B\"}\n".to_vec(), Expect::Parsed),
        // tokenizer.json: tokenizers 0.22 panics on a syntax error inside `decoder`
        (&TOKENIZER, br#"{"decoder": tru}"#.to_vec(), Expect::Refused("malformed tokenizer.json")),
    ];
    let tok = std::fs::read_to_string(fixture("llama_gqa/tokenizer.json")).unwrap();
    let at = tok.find("\"decoder\"").expect("a decoder");
    let broken = format!("{}\"decoder\": {{\"type\": \"Sequence\", \"decoders\": [nul]}}, {}", &tok[..at], &tok[at..]);
    cases.push((&TOKENIZER, broken.into_bytes(), Expect::Refused("malformed tokenizer.json")));
    // tokenizer.json: a token of the file quoted raw in the tokenizers crate's message
    let mut v: Value = serde_json::from_str(&tok).unwrap();
    v["model"]["merges"][0] = json!(["line\nbreak", "x"]);
    cases.push((&TOKENIZER, v.to_string().into_bytes(), Expect::Refused("out of vocabulary")));
    // tokenizer.json: a template naming a special token the file does not define loads, then
    // tokenizers 0.22 panics when it encodes
    let mut v: Value = serde_json::from_str(&tok).unwrap();
    v["post_processor"]["special_tokens"] = json!({});
    cases.push((&TOKENIZER, v.to_string().into_bytes(), Expect::Refused("encoding failed: the tokenizers crate failed")));
    cases
}

#[test]
fn regressions() {
    let mut failures = Vec::new();
    for (i, (parser, input, expect)) in regression_cases().into_iter().enumerate() {
        let got = attempt(parser, &input, &mut Gen::for_case(0, "regression", i));
        let ok = match (&got, &expect) {
            (Attempt::Parsed, Expect::Parsed) => true,
            (Attempt::Refused(msg), Expect::Refused(needle)) => msg.contains(needle),
            _ => false,
        };
        if !ok {
            let got = match got {
                Attempt::Parsed => "parsed".to_string(),
                Attempt::Refused(msg) => format!("refused: {msg}"),
                Attempt::Failed(why) => why,
            };
            failures.push(format!("regression {i} ({}): {got}; {}", parser.name, show_input(parser.name, i, &input)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A file that is not UTF-8 never reaches a text parser: each file reader refuses it with one
/// line naming the file. (The fuzzed text parsers get such bytes as U+FFFD.)
#[test]
fn file_readers_refuse_non_utf8() {
    use okapi::data::{load_instructions, load_rankings, read_records};
    use okapi::rlhf::checkpoint::read_state;
    use okapi::rlhf::eval::EvalSource;
    let scratch = Scratch::new("fuzz-non-utf8");
    let bytes = b"[{\"instruction\": \"caf\xe9\", \"input\": \"\", \"output\": \"\xff\xfe\"}]\n";
    let file = |name: &str| -> PathBuf {
        let p = scratch.root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let (records, sft, ranking, scoring, template) = (file("loglik.jsonl"), file("vi.json"), file("ranking.json"), file("scoring.json"), file("template.json"));
    let (config, index, tokenizer, state, eval) = (file("m/config.json"), file("m/model.safetensors.index.json"), file("m/tokenizer.json"), file("ckpt/trainer_state.json"), file("arc.json"));
    let refusals: Vec<(&PathBuf, Option<String>)> = vec![
        (&records, read_records::<LoglikRequest>(&records).err().map(|e| e.to_string())),
        (&sft, load_instructions(std::slice::from_ref(&sft), None, true).err().map(|e| e.to_string())),
        (&ranking, load_rankings(std::slice::from_ref(&ranking), None).err().map(|e| e.to_string())),
        (&scoring, okapi::data::ranking::load_scoring_records(&scoring).err().map(|e| e.to_string())),
        (&template, PromptTemplate::load(&template).err().map(|e| e.to_string())),
        (&config, ModelConfig::load(config.parent().unwrap()).err().map(|e| e.to_string())),
        (&index, weight_files(index.parent().unwrap()).err().map(|e| e.to_string())),
        (&tokenizer, Tokenizer::load(&tokenizer).err().map(|e| e.to_string())),
        (&state, read_state(state.parent().unwrap()).err().map(|e| e.to_string())),
        (&eval, EvalSource::from_file(&eval, None).err()),
    ];
    for (path, msg) in refusals {
        let msg = msg.unwrap_or_else(|| panic!("{}: a file that is not UTF-8 was read", path.display()));
        assert!(!msg.contains(['\n', '\r']) && msg.contains(&path.display().to_string()), "{msg:?}");
    }
}

/// The checkpoint readers that read safetensors directly (a model's parameters, the optimizer
/// state) refuse offsets ending near 2^64 too, before the safetensors crate overflows on them.
#[test]
fn checkpoint_readers_refuse_offsets_past_any_file() {
    use okapi::model::{preset_config, Arch, Model};
    use okapi::rlhf::checkpoint::{load_optimizer_file, load_params};
    use okapi::rlhf::{AdamWConfig, Optimizer};
    use okapi::runtime::CpuBackend;
    let scratch = Scratch::new("fuzz-ckpt-offsets");
    let path = scratch.root.join("optimizer.safetensors");
    std::fs::write(&path, huge_safetensors(8, u64::MAX / 8)).unwrap();
    let mut model = Model::init(CpuBackend, preset_config(Arch::Llama, "tiny", Some(50), 16).unwrap(), 0);
    let grads = model.new_grads(|_| true);
    let mut opt = Optimizer::new(&model, &grads, AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 });
    let errors = [load_optimizer_file(&path, &model, &mut opt).err().map(|e| e.to_string()), load_params(&path, &mut model, false).err().map(|e| e.to_string())];
    for msg in errors {
        let msg = msg.expect("refused");
        assert!(msg.contains("data_offsets") && msg.contains(&path.display().to_string()), "{msg}");
    }
}
