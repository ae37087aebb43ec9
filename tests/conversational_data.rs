//! Conversational data through the binary: SFT on `messages`, reward and DPO on TRL's
//! `{prompt, chosen, rejected}` records (strings and message lists, explicit and implicit
//! prompts), Okapi's records through `--template chat`, `--data` as directories and globs, and
//! every bad input as one error line that leaves the output untouched.

mod common;

use common::{fixture, one_error_line, Scratch};
use okapi::data::{collate, load_sft_records, ChatTemplate, RecordFormat, SftEncoding, Tokenizer};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const BIN: &str = env!("CARGO_BIN_EXE_okapi-train");

/// A tiny LLaMA whose tokenizer and tokenizer_config.json are the Qwen2.5 chat fixture's
/// (ChatML template, control tokens 400–402), built once per test process.
fn chat_model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("okapi-convo-{}-model", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let src = fixture("chat_qwen2_5");
        let o = Command::new(BIN).args(["init", "--arch", "llama", "--preset", "tiny", "--max-positions", "256", "--tokenizer"]).arg(src.join("tokenizer.json")).arg("--out").arg(&dir).output().unwrap();
        assert!(o.status.success(), "{}", err(&o));
        std::fs::copy(src.join("tokenizer_config.json"), dir.join("tokenizer_config.json")).unwrap();
        dir
    })
}

/// llama_gqa with the Mistral fixture's tokenizer_config.json (same tokenizer): a model whose
/// template raises on conversations whose roles do not alternate.
fn mistral_model(s: &Scratch) -> PathBuf {
    let dir = s.root.join("mistral");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(fixture("llama_gqa")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::copy(fixture("chat_mistral/tokenizer_config.json"), dir.join("tokenizer_config.json")).unwrap();
    dir
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "okapi-train failed: {}", err(o));
    err(o)
}


const TRAIN: &[&str] = &["--max-steps", "1", "--lr", "1e-3", "--no-shuffle", "--val-fraction", "0", "--log-every", "1"];

const MESSAGES: &str = r#"{"messages": [{"role": "user", "content": "Chào bạn!"}, {"role": "assistant", "content": "Xin chào, tôi có thể giúp gì?"}]}
{"messages": [{"role": "system", "content": "Trả lời ngắn gọn."}, {"role": "user", "content": "ما هي عاصمة مصر؟"}, {"role": "assistant", "content": "القاهرة."}, {"role": "user", "content": "和中国的首都？"}, {"role": "assistant", "content": "北京。"}], "lang": "ar"}
{"messages": [{"role": "user", "content": "नमस्ते"}, {"role": "assistant", "content": "नमस्ते! आप कैसे हैं?"}]}
"#;

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn sft_on_conversations_trains_on_the_assistant_messages() {
    let s = Scratch::new("sft-messages");
    let data = s.root.join("chat.jsonl");
    std::fs::write(&data, MESSAGES).unwrap();
    let out = s.root.join("out");
    let e = ok(&run(&[&["sft", "--model", p(chat_model()), "--data", p(&data), "--out", p(&out), "--batch-size", "3"][..], TRAIN].concat()));
    assert!(e.contains("3 records read, 3 kept"), "{e}");
    // the step's targets are exactly the assistant tokens the chat template's masks give
    let tok = Tokenizer::load(chat_model()).unwrap();
    let format = RecordFormat::chat(ChatTemplate::load(chat_model()).unwrap().unwrap());
    let enc = SftEncoding { max_len: 512, mask_prompt: true, eos: 2 };
    let (records, _) = load_sft_records(&[data], None).unwrap();
    let examples: Vec<_> = records.iter().map(|r| r.encode(&tok, &format, &enc).unwrap().unwrap()).collect();
    let want = collate(&examples.iter().collect::<Vec<_>>(), 0).n_targets();
    let m = metrics(&out);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["targets"].as_u64().unwrap() as usize, want);
    // the two-turn conversation has loss on both assistant messages
    let runs = |labels: &[i64]| labels.windows(2).filter(|w| w[0] == -100 && w[1] != -100).count();
    assert_eq!(examples.iter().map(|e| runs(&e.labels)).collect::<Vec<_>>(), vec![1, 2, 1]);
    // the saved model keeps its chat template
    assert_eq!(std::fs::read(out.join("tokenizer_config.json")).unwrap(), std::fs::read(chat_model().join("tokenizer_config.json")).unwrap());
}

#[test]
fn data_directories_and_globs_mix_okapi_records_and_conversations() {
    let s = Scratch::new("sft-dir");
    let dir = s.root.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("chat.jsonl"), MESSAGES).unwrap();
    std::fs::write(dir.join("vi.json"), r#"[{"instruction": "Dịch sang tiếng Anh.", "input": "Tôi yêu tiếng Việt.", "output": "I love Vietnamese."}, {"instruction": "Chào", "input": "", "output": "Xin chào!"}]"#).unwrap();
    std::fs::write(dir.join("notes.txt"), "not data").unwrap();
    // a directory: both files (sorted), Okapi's records through the chat template too
    let out = s.root.join("out-dir");
    let e = ok(&run(&[&["sft", "--model", p(chat_model()), "--data", p(&dir), "--out", p(&out), "--template", "chat"][..], TRAIN].concat()));
    assert!(e.contains("5 records read, 5 kept"), "{e}");
    // `--langs vi` keeps vi.json's records by their file name
    let out = s.root.join("out-vi");
    let e = ok(&run(&[&["sft", "--model", p(chat_model()), "--data", p(&dir), "--out", p(&out), "--langs", "vi"][..], TRAIN].concat()));
    assert!(e.contains("5 records read, 2 kept") && e.contains("3 other languages"), "{e}");
    // a glob
    let out = s.root.join("out-glob");
    let pattern = dir.join("*.jsonl");
    let e = ok(&run(&[&["sft", "--model", p(chat_model()), "--data", p(&pattern), "--out", p(&out)][..], TRAIN].concat()));
    assert!(e.contains("3 records read, 3 kept"), "{e}");
}

const PREFERENCES: &str = r#"{"prompt": [{"role": "user", "content": "Thủ đô của Việt Nam?"}], "chosen": [{"role": "assistant", "content": "Hà Nội."}], "rejected": [{"role": "assistant", "content": "Huế."}]}
{"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]}
{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
{"chosen": "Москва — столица России.", "rejected": "Москва — столица Франции."}
{"instruction": "Chào", "input": "", "chosen": "Xin chào!", "rejected": "Không."}
{"prompt": "Same", "chosen": " a", "rejected": " a"}
"#;

#[test]
fn reward_and_dpo_on_trl_preference_records() {
    let s = Scratch::new("prefs");
    let data = s.root.join("prefs.jsonl");
    std::fs::write(&data, PREFERENCES).unwrap();
    for cmd in ["reward", "dpo"] {
        let out = s.root.join(cmd);
        let e = ok(&run(&[&[cmd, "--model", p(chat_model()), "--data", p(&data), "--out", p(&out), "--batch-size", "5", "--max-steps", "2"][..], &TRAIN[2..]].concat()));
        let line = e.lines().find(|l| l.starts_with(&format!("{cmd}: 6 ranking records read"))).unwrap_or_else(|| panic!("{e}"));
        assert!(line.contains("5 kept") && line.contains("1 with identical responses") && line.contains("5 pairs"), "{line}");
        let m = metrics(&out);
        assert_eq!(m.len(), 2, "{cmd}");
        assert!(m.iter().all(|x| x["loss"].as_f64().unwrap().is_finite()), "{cmd}");
        assert!(out.join("tokenizer_config.json").is_file());
    }
}

#[test]
fn conversations_without_a_chat_template_are_one_error_line() {
    let s = Scratch::new("no-chat");
    let data = s.root.join("chat.jsonl");
    std::fs::write(&data, MESSAGES).unwrap();
    let out = s.root.join("out");
    // --template okapi refuses conversations: file, line, field
    let o = run(&["sft", "--model", p(chat_model()), "--data", p(&data), "--out", p(&out), "--template", "okapi"]);
    one_error_line(&o, &[&format!("{}:1", data.display()), "field `messages`", "--template chat"]);
    assert!(!out.exists(), "nothing written");
    // a model without a chat template: for its conversations, and for --template chat
    let o = run(&["sft", "--model", p(&fixture("llama_gqa")), "--data", p(&data), "--out", p(&out)]);
    one_error_line(&o, &[&format!("{}:1", data.display()), "field `messages`", "has none"]);
    let o = run(&["dpo", "--model", p(&fixture("llama_gqa")), "--data", p(&fixture("ranking_data.json")), "--out", p(&out), "--template", "chat"]);
    one_error_line(&o, &["--template chat", "has no chat template"]);
    let o = run(&["generate", "--model", p(&fixture("llama_gqa")), "--instruction", "Hi", "--template", "chat"]);
    one_error_line(&o, &["--template chat", "has no chat template"]);
    assert!(!out.exists(), "nothing written");
}

#[test]
fn bad_records_name_file_record_and_field() {
    let s = Scratch::new("bad-records");
    let out = s.root.join("out");
    let cases: [(&str, &str, &[&str]); 6] = [
        ("sft", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": 5}]}\n", &[":1:", "field `messages`, message 2", "\"content\": string"]),
        ("sft", "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"messages\": \"hello\"}\n", &[":2:", "field `messages`", "expected a non-empty list"]),
        ("sft", "[{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}]", &["record 1", "no message with role \"assistant\""]),
        ("reward", "{\"prompt\": \"p\", \"chosen\": [{\"role\": \"assistant\", \"content\": \"a\"}], \"rejected\": \"b\"}\n", &[":1:", "field `chosen`", "a message list, but `prompt` is a string"]),
        ("dpo", "{\"prompt\": \"p\", \"chosen\": \"a\"}\n", &[":1:", "field `rejected`: missing"]),
        ("reward", "{\"chosen\": 3, \"rejected\": \"b\", \"prompt\": \"x\"}\n", &[":1:", "field `chosen`: expected a string or a list of messages"]),
    ];
    for (i, (cmd, text, needles)) in cases.iter().enumerate() {
        let data = s.root.join(format!("bad{i}.jsonl"));
        std::fs::write(&data, text).unwrap();
        let line = one_error_line(&run(&[cmd, "--model", p(chat_model()), "--data", p(&data), "--out", p(&out)]), needles);
        assert!(line.contains(&data.display().to_string()), "{line}");
        assert!(!out.exists(), "case {i}: nothing written");
    }
}

#[test]
fn a_template_that_raises_is_one_error_line() {
    let s = Scratch::new("raises");
    let model = mistral_model(&s);
    let data = s.root.join("chat.jsonl");
    std::fs::write(&data, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\", \"content\": \"b\"}, {\"role\": \"assistant\", \"content\": \"c\"}]}\n").unwrap();
    let out = s.root.join("out");
    one_error_line(&run(&["sft", "--model", p(&model), "--data", p(&data), "--out", p(&out)]), &[&format!("{}:2", data.display()), "the chat template refused the conversation: After the optional system message, conversation roles must alternate"]);
    assert!(!out.exists());
}

#[test]
fn bad_data_paths_fail_before_anything_is_loaded() {
    let s = Scratch::new("paths");
    // an existing run stays as it is
    let out = s.root.join("run");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("args.json"), "{}").unwrap();
    let empty = s.root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let missing = s.root.join("missing.json");
    let pattern = s.root.join("*.parquet");
    let cases: [(&str, &str, String); 4] = [
        ("sft", "--data", format!("--data {}: no such file or directory", missing.display())),
        ("dpo", "--data", format!("--data {}: the directory holds no .json or .jsonl file", empty.display())),
        ("reward", "--data", format!("--data {}: no file matches the pattern", pattern.display())),
        ("ppo", "--prompts", format!("--prompts {}: no such file or directory", missing.display())),
    ];
    for (i, (cmd, flag, want)) in cases.iter().enumerate() {
        let arg = [&missing, &empty, &pattern, &missing][i];
        // the model does not exist either: the data paths are checked first
        let mut args = vec![*cmd, "--model", "/nonexistent-okapi-model", *flag, p(arg), "--out", p(&out), "--overwrite"];
        if *cmd == "ppo" {
            args = vec!["ppo", "--policy", "/nonexistent-okapi-model", "--reward", "/nonexistent-okapi-model", "--prompts", p(arg), "--out", p(&out), "--overwrite"];
        }
        one_error_line(&run(&args), &[want]);
        let files: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files, vec![std::ffi::OsString::from("args.json")], "{cmd}: the run directory is untouched");
        assert_eq!(std::fs::read_to_string(out.join("args.json")).unwrap(), "{}");
    }
}

#[test]
fn generate_with_the_chat_template() {
    let o = run(&["generate", "--model", p(chat_model()), "--instruction", "Chào bạn!", "--template", "chat", "--max-new-tokens", "4", "--temperature", "0"]);
    let e = ok(&o);
    // the prompt is the chat template's: its tokens, not Okapi's template
    let tok = Tokenizer::load(chat_model()).unwrap();
    let tpl = ChatTemplate::load(chat_model()).unwrap().unwrap();
    let n = tpl.encode(&tok, &[okapi::data::Message::new("user", "Chào bạn!")], true).unwrap().len();
    assert!(e.contains(&format!("prompt of {n} tokens")), "{e}");
}

#[test]
fn ppo_prompts_in_the_chat_template() {
    let s = Scratch::new("ppo-chat");
    let prefs = s.root.join("prefs.jsonl");
    std::fs::write(&prefs, PREFERENCES).unwrap();
    let rm = s.root.join("rm");
    ok(&run(&[&["reward", "--model", p(chat_model()), "--data", p(&prefs), "--out", p(&rm), "--template", "chat"][..], TRAIN].concat()));
    let prompts = s.root.join("vi.json");
    std::fs::write(&prompts, r#"[{"instruction": "Chào bạn!", "input": ""}, {"instruction": "Dịch sang tiếng Anh.", "input": "Cảm ơn."}]"#).unwrap();
    let out = s.root.join("ppo");
    let args = ["ppo", "--policy", p(chat_model()), "--reward", p(&rm), "--prompts", p(&prompts), "--out", p(&out), "--iterations", "1", "--rollouts", "2", "--chunk-size", "2", "--ppo-batch-size", "2", "--max-new-tokens", "4", "--template", "chat"];
    ok(&run(&args));
    let samples = std::fs::read_to_string(out.join("samples.jsonl")).unwrap_or_default();
    let m = metrics(&out);
    assert_eq!(m.len(), 1, "{samples}");
    let args: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("args.json")).unwrap()).unwrap();
    assert_eq!(args["template"], "chat");
}
