//! okapi-data: the tokenizer (tokenizer.json through the `tokenizers` crate, and BPE training),
//! Okapi's data formats and prompt template, the model's chat template and conversational
//! data (TRL's formats), SFT examples and batches, record files with errors that name the file
//! and line, data paths (files, directories, globs), and the bundled multilingual data.
//!
//! ```
//! use okapi_data::PromptTemplate;
//! let p = PromptTemplate::okapi().prompt("Dịch sang tiếng Anh.", "Xin chào");
//! assert!(p.starts_with("Below is an instruction that describes a task, paired with an input"));
//! assert!(p.ends_with("### Input:\nXin chào\n\n### Response:\n"));
//! ```

pub mod assets;
pub mod bpe;
pub mod chat;
pub mod convo;
pub mod instruct;
mod jinja;
pub mod langid;
pub mod paths;
pub mod ranking;
pub mod records;
pub mod sft;
pub mod template;
pub mod tokenizer;

pub use chat::{encode_chat, ChatLoss, ChatTemplate, Message};
pub use convo::{load_preferences, load_sft_records, okapi_user_message, parse_preferences, parse_sft_records, PrefRecord, RecordFormat, SftRecord, Turns};
pub use instruct::{load_instructions, parse_instructions, parse_langs, InstructRecord, LoadStats, OKAPI_LANGS};
pub use ranking::{encode_group, load_rankings, parse_rankings, PromptGroup, RankRecord, RankStats};
pub use paths::expand_data_paths;
pub use records::{read_records, records_from_str, At, DataError, LoglikRequest, Origin};
pub use sft::{collate, encode_example, encode_text, Batch, Example, SftEncoding, IGNORE_LABEL};
pub use template::PromptTemplate;
pub use tokenizer::Tokenizer;
