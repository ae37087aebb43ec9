//! okapi-data: the tokenizer (tokenizer.json through the `tokenizers` crate), record files
//! (JSONL / JSON arrays) with errors that name the file and line, and request formats.

pub mod records;
pub mod tokenizer;

pub use records::{read_records, DataError, LoglikRequest};
pub use tokenizer::Tokenizer;
