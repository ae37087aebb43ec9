//! Chat templates against transformers' `apply_chat_template` (tests/fixtures/generate_chat.py):
//! the real templates of Qwen2.5-Instruct, Llama-3.1-Instruct and Mistral-Instruct render the
//! same text and the same token ids for conversations in five scripts, the assistant-token
//! masks cover exactly the assistant messages, and what cannot work is refused in one line.

mod common;

use common::fixture;
use okapi::data::{encode_chat, ChatLoss, ChatTemplate, Message, SftEncoding, Tokenizer, IGNORE_LABEL};
use serde_json::Value;
use std::path::Path;

const FAMILIES: [&str; 3] = ["chat_qwen2_5", "chat_llama3_1", "chat_mistral"];

fn messages(case: &Value) -> Vec<Message> {
    case["messages"].as_array().unwrap().iter().map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap())).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn no_cut() -> SftEncoding {
    SftEncoding { max_len: usize::MAX, mask_prompt: true, eos: 0 }
}

#[test]
fn renders_and_tokenizes_as_transformers() {
    let mut checked = 0;
    for family in FAMILIES {
        let dir = fixture(family);
        let tpl = ChatTemplate::load(&dir).unwrap().unwrap_or_else(|| panic!("{family}: no chat template"));
        let tok = Tokenizer::load(&dir).unwrap();
        let expected = common::json(&dir.join("expected.json"));
        for case in expected["cases"].as_array().unwrap() {
            let (name, msgs, gen) = (case["name"].as_str().unwrap(), messages(case), case["add_generation_prompt"].as_bool().unwrap());
            if let Some(err) = case["error"].as_str() {
                let e = tpl.render(&msgs, gen).unwrap_err().to_string();
                assert!(e.contains(err) && e.contains("refused") && !e.contains('\n'), "{family}/{name}: {e}");
                continue;
            }
            assert_eq!(tpl.render(&msgs, gen).unwrap(), case["text"].as_str().unwrap(), "{family}/{name}: text");
            assert_eq!(tpl.encode(&tok, &msgs, gen).unwrap(), ids(&case["ids"]), "{family}/{name}: ids");
            checked += 1;
        }
    }
    // Qwen's and Llama's templates render every conversation; Mistral's refuses one
    assert_eq!(checked, 8 + 8 + 7);
}

#[test]
fn assistant_masks_match_the_reference_spans() {
    for family in FAMILIES {
        let dir = fixture(family);
        let (tpl, tok) = (ChatTemplate::load(&dir).unwrap().unwrap(), Tokenizer::load(&dir).unwrap());
        let expected = common::json(&dir.join("expected.json"));
        for case in expected["cases"].as_array().unwrap().iter().filter(|c| c.get("spans").is_some()) {
            let name = case["name"].as_str().unwrap();
            let msgs = messages(case);
            let ex = encode_chat(&tok, &tpl, &msgs, ChatLoss::Assistant, &no_cut()).unwrap().unwrap();
            let want_ids = ids(&case["ids"]);
            assert_eq!(ex.ids, want_ids, "{family}/{name}");
            let spans: Vec<(usize, usize)> = case["spans"].as_array().unwrap().iter().map(|s| (s[0].as_u64().unwrap() as usize, s[1].as_u64().unwrap() as usize)).collect();
            for (i, (&id, &label)) in ex.ids.iter().zip(&ex.labels).enumerate() {
                let inside = spans.iter().any(|&(a, b)| (a..b).contains(&i));
                assert_eq!(label, if inside { id as i64 } else { IGNORE_LABEL }, "{family}/{name}: token {i}");
            }
            assert_eq!(ex.prompt_len, spans[0].0);
            // each span decodes to its message (the template may trim it) and the end of the turn
            let assistant: Vec<&Message> = msgs.iter().filter(|m| m.role == "assistant").collect();
            for (&(a, b), m) in spans.iter().zip(assistant) {
                let text = tok.decode(&ex.ids[a..b], false).unwrap();
                assert!(text.contains(m.content.trim()), "{family}/{name}: span {text:?} lacks {:?}", m.content);
                assert!(!text.contains("user"), "{family}/{name}: span {text:?} reaches into the user's turn");
            }
            // preference completions (TRL): everything after the prompt rendered with the generation prompt
            let last = msgs.len() - 1;
            let after = encode_chat(&tok, &tpl, &msgs, ChatLoss::After(last), &no_cut()).unwrap().unwrap();
            let (a, _) = *spans.last().unwrap();
            assert!(after.labels[..a].iter().all(|&l| l == IGNORE_LABEL) && after.labels[a..].iter().all(|&l| l != IGNORE_LABEL), "{family}/{name}: completion mask");
        }
    }
}

#[test]
fn truncation_and_whole_sequence_loss() {
    let dir = fixture("chat_qwen2_5");
    let (tpl, tok) = (ChatTemplate::load(&dir).unwrap().unwrap(), Tokenizer::load(&dir).unwrap());
    let msgs = [Message::new("user", "Xin chào!"), Message::new("assistant", "Chào bạn, rất vui được gặp bạn.")];
    let full = encode_chat(&tok, &tpl, &msgs, ChatLoss::Assistant, &no_cut()).unwrap().unwrap();
    let cut = encode_chat(&tok, &tpl, &msgs, ChatLoss::Assistant, &SftEncoding { max_len: full.prompt_len + 2, ..no_cut() }).unwrap().unwrap();
    assert_eq!((cut.ids.as_slice(), cut.labels.as_slice()), (&full.ids[..full.prompt_len + 2], &full.labels[..full.prompt_len + 2]));
    // the prompt alone fills max_len: nothing to learn, the caller skips it
    assert!(encode_chat(&tok, &tpl, &msgs, ChatLoss::Assistant, &SftEncoding { max_len: full.prompt_len, ..no_cut() }).unwrap().is_none());
    let whole = encode_chat(&tok, &tpl, &msgs, ChatLoss::Assistant, &SftEncoding { mask_prompt: false, ..no_cut() }).unwrap().unwrap();
    assert!(whole.labels.iter().zip(&whole.ids).all(|(&l, &id)| l == id as i64));
}

fn template_dir(name: &str, config: &Value) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("okapi-chat-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture("chat_qwen2_5/tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn a_template_that_rewrites_earlier_turns_is_refused() {
    // marks the last message: what the conversation ends with changes the earlier render
    let src = "{% for m in messages %}{% if loop.last and not add_generation_prompt %}[last]{% endif %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}";
    let dir = template_dir("unstable", &serde_json::json!({ "chat_template": src, "eos_token": "<|im_end|>" }));
    let (tpl, tok) = (ChatTemplate::load(&dir).unwrap().unwrap(), Tokenizer::load(&dir).unwrap());
    let msgs = [Message::new("user", "a"), Message::new("assistant", "b"), Message::new("user", "c"), Message::new("assistant", "d")];
    let e = encode_chat(&tok, &tpl, &msgs, ChatLoss::Assistant, &no_cut()).unwrap_err();
    assert!(e.contains("not prefix-stable") && e.contains("tokenizer_config.json") && !e.contains('\n'), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn where_the_template_comes_from() {
    // none: no tokenizer_config.json, or one without chat_template
    assert!(ChatTemplate::load(&fixture("llama_gqa")).unwrap().is_none());
    assert!(ChatTemplate::load(Path::new("/nonexistent-okapi-dir")).unwrap().is_none());
    // chat_template.jinja beside the config wins, as in transformers
    let dir = template_dir("jinja", &serde_json::json!({ "chat_template": "config", "bos_token": {"content": "<B>"} }));
    std::fs::write(dir.join("chat_template.jinja"), "jinja {{ bos_token }}{{ pad_token is defined }}").unwrap();
    let tpl = ChatTemplate::load(&dir).unwrap().unwrap();
    assert_eq!(tpl.render(&[Message::new("user", "x")], false).unwrap(), "jinja <B>False");
    // the list form without "default", and a template that does not parse: one line naming the file
    let dir = template_dir("list", &serde_json::json!({ "chat_template": [{"name": "tool_use", "template": "x"}] }));
    let e = ChatTemplate::load(&dir).unwrap_err().to_string();
    assert!(e.contains("tokenizer_config.json") && e.contains("no template named \"default\" (it has tool_use)"), "{e}");
    let dir = template_dir("broken", &serde_json::json!({ "chat_template": "{% for m in messages %}{{ m.content }" }));
    let e = ChatTemplate::load(&dir).unwrap_err().to_string();
    assert!(e.contains("chat template does not parse") && !e.contains('\n'), "{e}");
}
