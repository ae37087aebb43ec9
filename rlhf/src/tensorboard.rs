//! TensorBoard event files (`--tensorboard DIR`): every numeric field of a metrics line as a
//! scalar at the line's step, and text (PPO's samples) through TensorBoard's text plugin.
//!
//! The format, written here without TensorFlow or protobuf crates:
//! - a file `events.out.tfevents.<unix seconds>.<host>.<pid>.okapi` is a sequence of TFRecords:
//!   `u64 length (LE) · u32 masked CRC-32C of those 8 bytes · data · u32 masked CRC-32C of
//!   data`, masked = `((crc >> 15) | (crc << 17)) + 0xa282ead8`;
//! - each record's data is a serialized `tensorflow.Event` protobuf: `wall_time` (1, double),
//!   `step` (2, int64) and one of `file_version` (3, string: the first record,
//!   `"brain.Event:2"`), `summary` (5) or `session_log` (7);
//! - `Summary` (repeated `value` = 1); `Summary.Value`: `tag` (1), `simple_value` (2, float),
//!   `metadata` (9: `plugin_data` (1) { `plugin_name` (1), `content` (2) }), `tensor` (8:
//!   `dtype` (1, DT_STRING = 7), `tensor_shape` (2, empty: a scalar), `string_val` (8));
//! - a resumed run starts a new file with a `SessionLog` START (status 1) at the first step it
//!   computes: TensorBoard then drops the events of the earlier files from that step on (the
//!   steps the resume computes again; `EventAccumulator` keeps the steps below a START's).
//!
//! [`read_events`] parses the files back (CRCs checked) for the tests.

use serde_json::Value;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bytewise with a table.
fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Protobuf encoding: a message as a byte buffer with field writers.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }
    fn int(&mut self, field: u32, v: u64) -> &mut Self {
        self.key(field, 0);
        self.varint(v);
        self
    }
    fn double(&mut self, field: u32, v: f64) -> &mut Self {
        self.key(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn msg(&mut self, field: u32, m: &Pb) -> &mut Self {
        self.bytes(field, &m.0)
    }
}

/// A failed TensorBoard write of a training run, named by its flag.
pub(crate) fn flag_error(problem: String) -> crate::TrainError {
    crate::TrainError::Setting { setting: "--tensorboard", problem }
}

/// Appends TensorBoard events to one file of a log directory. Errors name the file.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// A new event file in `dir` (created if needed); `resumed_from`: the step a resumed run
    /// continues after (a START session log at the next step).
    pub fn create(dir: &Path, resumed_from: Option<u64>) -> Result<EventWriter, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into());
        let path = dir.join(format!("events.out.tfevents.{now}.{host}.{}.okapi", std::process::id()));
        let file = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut w = EventWriter { path, out: BufWriter::new(file) };
        w.event(0, |e| {
            e.bytes(3, b"brain.Event:2");
        })?;
        if let Some(step) = resumed_from {
            w.event(step + 1, |e| {
                e.msg(7, Pb::default().int(1, 1));
            })?;
        }
        w.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn event(&mut self, step: u64, body: impl FnOnce(&mut Pb)) -> Result<(), String> {
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let mut e = Pb::default();
        e.double(1, wall).int(2, step);
        body(&mut e);
        let len = (e.0.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(e.0.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
        rec.extend_from_slice(&e.0);
        rec.extend_from_slice(&masked_crc(&e.0).to_le_bytes());
        self.out.write_all(&rec).map_err(|err| format!("{}: {err}", self.path.display()))
    }

    /// Scalars `(tag, value)` at `step`, in one event.
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<(), String> {
        if values.is_empty() {
            return Ok(());
        }
        self.event(step, |e| {
            let mut summary = Pb::default();
            for (tag, v) in values {
                summary.msg(1, Pb::default().bytes(1, tag.as_bytes()).float(2, *v as f32));
            }
            e.msg(5, &summary);
        })
    }

    /// Every numeric field of a metrics line but `step_key` itself, at the line's `step_key`
    /// (a line without it is skipped). Non-finite numbers are written as they are.
    pub fn metrics_line(&mut self, line: &Value, step_key: &str) -> Result<(), String> {
        let Some(step) = line.get(step_key).and_then(Value::as_u64) else { return Ok(()) };
        let values: Vec<(String, f64)> = line.as_object().into_iter().flatten().filter(|(k, _)| k.as_str() != step_key && k.as_str() != "step").filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x))).collect();
        self.scalars(step, &values)
    }

    /// A text (Markdown, as TensorBoard's text plugin renders it) under `tag` at `step`.
    pub fn text(&mut self, step: u64, tag: &str, text: &str) -> Result<(), String> {
        self.event(step, |e| {
            let mut tensor = Pb::default();
            tensor.int(1, 7).msg(2, &Pb::default()).bytes(8, text.as_bytes());
            let mut plugin = Pb::default();
            plugin.bytes(1, b"text");
            let mut value = Pb::default();
            value.bytes(1, tag.as_bytes()).msg(9, Pb::default().msg(1, &plugin)).msg(8, &tensor);
            e.msg(5, Pb::default().msg(1, &value));
        })
    }

    /// Writes what is buffered to the file (after each metrics line: a kill loses at most the
    /// line in flight).
    pub fn flush(&mut self) -> Result<(), String> {
        self.out.flush().map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

/// One event read back: its step and what it holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    FileVersion(String),
    Scalar { step: u64, tag: String, value: f32 },
    Text { step: u64, tag: String, text: String },
    SessionStart { step: u64 },
}

/// A protobuf field read back: (number, wire type, varint value, bytes).
type Field<'b> = (u32, u8, u64, &'b [u8]);

/// A protobuf message's fields.
fn fields(mut b: &[u8]) -> Result<Vec<Field<'_>>, String> {
    fn varint(b: &mut &[u8]) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&x, rest) = b.split_first().ok_or("truncated varint")?;
            *b = rest;
            v |= ((x & 0x7f) as u64) << shift;
            if x < 0x80 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let (field, wire) = ((key >> 3) as u32, (key & 7) as u8);
        fn take<'b>(b: &mut &'b [u8], n: usize, field: u32) -> Result<&'b [u8], String> {
            if b.len() < n {
                return Err(format!("field {field}: {n} bytes past the end"));
            }
            let (x, rest) = b.split_at(n);
            *b = rest;
            Ok(x)
        }
        match wire {
            0 => out.push((field, wire, varint(&mut b)?, &[][..])),
            1 => out.push((field, wire, 0, take(&mut b, 8, field)?)),
            5 => out.push((field, wire, 0, take(&mut b, 4, field)?)),
            2 => {
                let n = varint(&mut b)? as usize;
                out.push((field, wire, 0, take(&mut b, n, field)?));
            }
            w => return Err(format!("field {field}: wire type {w} not used by Event")),
        }
    }
    Ok(out)
}

fn text_of(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a string field that is not UTF-8".to_string())
}

/// The events of one `Summary.Value` at `step`.
fn summary_value(step: u64, b: &[u8]) -> Result<Event, String> {
    let (mut tag, mut scalar, mut text) = (String::new(), None, None);
    for (f, _, _, data) in fields(b)? {
        match f {
            1 => tag = text_of(data)?,
            2 => scalar = Some(f32::from_le_bytes(data.try_into().map_err(|_| "simple_value: not 4 bytes")?)),
            8 => {
                for (tf, _, _, td) in fields(data)? {
                    if tf == 8 {
                        text = Some(text_of(td)?);
                    }
                }
            }
            _ => {}
        }
    }
    match (scalar, text) {
        (Some(value), _) => Ok(Event::Scalar { step, tag, value }),
        (None, Some(text)) => Ok(Event::Text { step, tag, text }),
        _ => Err(format!("summary value `{tag}` holds neither a scalar nor a text")),
    }
}

/// The events of one file, CRCs and framing checked.
pub fn read_events(path: &Path) -> Result<Vec<Event>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = |off: usize, why: &str| format!("{}: record at byte {off}: {why}", path.display());
    let (mut off, mut out) = (0, Vec::new());
    while off < bytes.len() {
        let head = bytes.get(off..off + 12).ok_or_else(|| bad(off, "truncated header"))?;
        let len = u64::from_le_bytes(head[..8].try_into().unwrap()) as usize;
        if u32::from_le_bytes(head[8..12].try_into().unwrap()) != masked_crc(&head[..8]) {
            return Err(bad(off, "length CRC mismatch"));
        }
        let data = bytes.get(off + 12..off + 12 + len).ok_or_else(|| bad(off, "truncated data"))?;
        let crc = bytes.get(off + 12 + len..off + 16 + len).ok_or_else(|| bad(off, "truncated data CRC"))?;
        if u32::from_le_bytes(crc.try_into().unwrap()) != masked_crc(data) {
            return Err(bad(off, "data CRC mismatch"));
        }
        let mut step = 0;
        for (f, _, v, b) in fields(data).map_err(|e| bad(off, &e))? {
            match f {
                2 => step = v,
                3 => out.push(Event::FileVersion(text_of(b).map_err(|e| bad(off, &e))?)),
                5 => {
                    for (vf, _, _, vb) in fields(b).map_err(|e| bad(off, &e))? {
                        if vf == 1 {
                            out.push(summary_value(step, vb).map_err(|e| bad(off, &e))?);
                        }
                    }
                }
                7 => out.push(Event::SessionStart { step }),
                _ => {}
            }
        }
        off += 16 + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_values() {
        // RFC 3720 B.4 test vectors
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn events_round_trip() {
        let dir = std::env::temp_dir().join(format!("okapi-tb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = EventWriter::create(&dir, Some(3)).unwrap();
        let line = serde_json::json!({"step": 4, "loss": 2.5, "lr": 1e-4, "note": "x", "nan": null});
        w.metrics_line(&line, "step").unwrap();
        w.text(4, "samples", "**prompt** مرحبا — नमस्ते").unwrap();
        w.flush().unwrap();
        let ev = read_events(w.path()).unwrap();
        assert_eq!(ev[0], Event::FileVersion("brain.Event:2".into()));
        assert_eq!(ev[1], Event::SessionStart { step: 4 });
        assert_eq!(ev[2], Event::Scalar { step: 4, tag: "loss".into(), value: 2.5 });
        assert_eq!(ev[3], Event::Scalar { step: 4, tag: "lr".into(), value: 1e-4 });
        assert_eq!(ev[4], Event::Text { step: 4, tag: "samples".into(), text: "**prompt** مرحبا — नमस्ते".into() });
        assert_eq!(ev.len(), 5);
        // a flipped byte is caught by the CRC
        let mut bytes = std::fs::read(w.path()).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 1;
        std::fs::write(w.path(), bytes).unwrap();
        assert!(read_events(w.path()).unwrap_err().contains("data CRC mismatch"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
