//! `--config FILE.toml|yaml|yml|json` on every command: the command's flags read from a file.
//!
//! - Keys are the flags' names with `_` or `-` (`batch_size = 8`, `batch-size: 8`); values are
//!   what the flag takes: a number or a string, `true`/`false` for a switch (`false` leaves it
//!   off), a list for a flag that takes several values (`data = ["a.json", "b.json"]`) or, for
//!   one that takes a comma list, either form (`adam_betas = [0.9, 0.95]` or `"0.9,0.95"`);
//!   `null` leaves a flag unset.
//! - Flags on the command line win over the file (per flag: a list on the command line replaces
//!   the file's list). Everything then goes through the same parsing and checks as typed flags.
//! - A run's `args.json` is a config: its `flags` object holds the value of every flag of the
//!   run (the defaults included, `--resume`/`--overwrite` left out), and its `command` must be the
//!   command it is given to. `okapi-train sft --config RUN/args.json --out NEW` repeats RUN.
//!
//! Bad files (unreadable, unparsable, not a table, an unknown key, a key of the wrong type, an
//! args.json of another command) are refused in one line naming the file and the key.

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Flags a run's `args.json` leaves out: how to treat the output directory, not the run.
const NOT_RECORDED: &[&str] = &["resume", "overwrite", "help", "version", "config"];

/// What the parse recorded for args.json: the config file (if any) and every flag's value.
struct Recorded {
    file: Option<PathBuf>,
    flags: Value,
}

static RECORDED: OnceLock<Recorded> = OnceLock::new();

/// The `--config` help, added to every subcommand (the flag itself is taken out of the command
/// line before clap parses it).
pub fn add_flag(cmd: Command) -> Command {
    cmd.arg(
        clap::Arg::new("config")
            .long("config")
            .value_name("FILE")
            .help("Flags from a TOML, YAML or JSON file (keys = flag names; flags given here win); a run's args.json is one"),
    )
}

/// A command line with its `--config FILE` taken out.
#[derive(Debug)]
pub struct Split {
    pub argv: Vec<OsString>,
    pub file: Option<PathBuf>,
}

/// Takes `--config FILE` / `--config=FILE` out of `argv` (after the subcommand, before any `--`).
pub fn split(argv: Vec<OsString>) -> Result<Split, String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut file = None;
    let mut it = argv.into_iter().enumerate();
    let mut ended = false;
    while let Some((i, a)) = it.next() {
        let s = a.to_string_lossy().into_owned();
        if i < 2 || ended {
            out.push(a);
            continue;
        }
        ended = s == "--";
        let value = if s == "--config" {
            Some(it.next().map(|(_, v)| PathBuf::from(v)).ok_or("--config: expected a file (FILE.toml, FILE.yaml or FILE.json)")?)
        } else {
            s.strip_prefix("--config=").map(PathBuf::from)
        };
        match value {
            Some(_) if file.is_some() => return Err("--config given twice: give one file (flags on the command line override it)".into()),
            Some(v) => file = Some(v),
            None => out.push(a),
        }
    }
    Ok(Split { argv: out, file })
}

/// A command line with a config file's flags added.
pub struct Merged {
    pub argv: Vec<OsString>,
    /// (`--flag`, the file's key) of each flag the file gave
    pub from_file: Vec<(String, String)>,
}

/// The command line with the config file's flags added for every flag the command line does not
/// set; `sub` is the subcommand's definition.
pub fn merge(sub: &Command, argv: Vec<OsString>, file: &Path) -> Result<Merged, String> {
    let table = read_table(file, sub.get_name())?;
    let given = given_on_command_line(sub, &argv);
    let mut extra = Vec::new();
    let mut from_file = Vec::new();
    for (key, value) in table {
        let id = key.replace('-', "_");
        if value.is_object() {
            return Err(format!("--config {}: key `{key}`: a table; flags are flat keys (e.g. lora_r = 8, not [lora] r = 8)", file.display()));
        }
        // the flag's id, or one of its long names (`tasks` for eval's `--task`)
        let dashed = id.replace('_', "-");
        let named = |a: &&clap::Arg| a.get_id().as_str() == id || a.get_long_and_visible_aliases().is_some_and(|names| names.contains(&dashed.as_str())) || a.get_all_aliases().is_some_and(|names| names.contains(&dashed.as_str()));
        let arg = sub.get_arguments().find(|a| named(a) && !NOT_RECORDED.contains(&a.get_id().as_str()));
        let Some(arg) = arg else {
            return Err(format!("--config {}: key `{key}`: not a flag of `okapi-train {}` (see `okapi-train {} --help`)", file.display(), sub.get_name(), sub.get_name()));
        };
        let Some(long) = arg.get_long() else {
            return Err(format!("--config {}: key `{key}`: a positional argument; give it on the command line", file.display()));
        };
        if given.contains(arg.get_id().as_str()) {
            continue;
        }
        let tokens = tokens(arg, long, &value).map_err(|why| format!("--config {}: key `{key}`: {why}", file.display()))?;
        if !tokens.is_empty() {
            from_file.push((format!("--{long}"), key.clone()));
        }
        extra.extend(tokens.into_iter().map(OsString::from));
    }
    // after the command line's own tokens (a positional list there must not swallow them), before `--`
    let at = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    let mut merged = argv;
    merged.splice(at..at, extra);
    Ok(Merged { argv: merged, from_file })
}

/// The flags the command line sets (a lenient parse: required flags may still come from the file).
fn given_on_command_line(sub: &Command, argv: &[OsString]) -> HashSet<String> {
    let lenient = Command::new("okapi-train").subcommand(sub.clone()).ignore_errors(true);
    let Ok(m) = lenient.try_get_matches_from(argv) else { return HashSet::new() };
    let Some((_, m)) = m.subcommand() else { return HashSet::new() };
    m.ids().filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine)).map(|id| id.to_string()).collect()
}

/// The command-line tokens for one flag's value from the file.
fn tokens(arg: &clap::Arg, long: &str, value: &Value) -> Result<Vec<String>, String> {
    let flag = format!("--{long}");
    // several values after one flag (`--data a b`), or the flag repeated (`--model=a --model=b`)
    let list = arg.get_num_args().is_some_and(|n| n.max_values() > 1);
    let repeated = matches!(arg.get_action(), ArgAction::Append) && !list;
    Ok(match (arg.get_action(), value) {
        (_, Value::Null) => vec![],
        (ArgAction::SetTrue, Value::Bool(b)) => if *b { vec![flag] } else { vec![] },
        (ArgAction::SetTrue, other) => return Err(format!("expected true or false, found {other}")),
        (_, Value::Array(items)) if list || repeated => {
            let items = items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?;
            if items.is_empty() {
                return Err("an empty list (leave the key out to leave the flag unset)".into());
            }
            if list {
                std::iter::once(flag).chain(items).collect()
            } else {
                items.into_iter().map(|v| format!("{flag}={v}")).collect()
            }
        }
        (_, Value::Array(items)) => {
            let sep = arg.get_value_delimiter().unwrap_or(',');
            vec![format!("{flag}={}", items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?.join(&sep.to_string()))]
        }
        (_, v) => vec![format!("{flag}={}", scalar(v)?)],
    })
}

/// A scalar as the command line would spell it.
fn scalar(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("expected a number, a string or true/false, found {other}")),
    }
}

/// The file's flags: its top-level table, or an args.json's `flags` (its command checked).
fn read_table(file: &Path, command: &str) -> Result<Map<String, Value>, String> {
    let shown = file.display();
    let text = std::fs::read_to_string(file).map_err(|e| format!("--config {shown}: {e}"))?;
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let value = match ext.as_str() {
        "json" => serde_json::from_str::<Value>(&text).map_err(|e| format!("--config {shown}: not valid JSON: {e}"))?,
        "toml" => toml::from_str::<Value>(&text).map_err(|e| format!("--config {shown}: not valid TOML{}: {}", toml_place(&text, &e), e.message()))?,
        "yaml" | "yml" => yaml_value(&text).map_err(|e| format!("--config {shown}: {e}"))?,
        _ => return Err(format!("--config {shown}: expected a .toml, .yaml, .yml or .json file")),
    };
    let Value::Object(mut table) = value else {
        return Err(format!("--config {shown}: expected a table of flags (key = value), found {}", kind(&value)));
    };
    match (table.remove("command"), table.remove("flags")) {
        // a run's args.json: the command it ran ("demo sft": the demo's flags) and its flags
        (Some(Value::String(ran)), Some(Value::Object(flags))) => {
            if ran.split(' ').next() != Some(command) {
                return Err(format!("--config {shown}: the flags of `okapi-train {ran}`, not of `okapi-train {command}`"));
            }
            Ok(flags)
        }
        (Some(_), _) => Err(format!("--config {shown}: an args.json without its `flags` (written before okapi recorded them); give the flags in a file of its own")),
        (None, Some(_)) => Err(format!("--config {shown}: key `flags` without `command`: a table of flags has the flags at its top level")),
        (None, None) => Ok(table),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

/// " at line L, column C" of a TOML error (1-based, columns in characters).
fn toml_place(text: &str, e: &toml::de::Error) -> String {
    let Some(at) = e.span().map(|s| s.start.min(text.len())) else { return String::new() };
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!(" at line {line}, column {column}")
}

/// A YAML document as JSON values (one document; keys are strings).
fn yaml_value(text: &str) -> Result<Value, String> {
    use saphyr::LoadableYamlNode;
    let docs = saphyr::Yaml::load_from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    match docs.as_slice() {
        [] => Ok(Value::Object(Map::new())),
        [doc] => yaml_to_json(doc),
        _ => Err(format!("{} YAML documents; a config is one", docs.len())),
    }
}

fn yaml_to_json(y: &saphyr::Yaml) -> Result<Value, String> {
    use saphyr::{Scalar, Yaml};
    Ok(match y {
        Yaml::Value(Scalar::Null) => Value::Null,
        Yaml::Value(Scalar::Boolean(b)) => Value::Bool(*b),
        Yaml::Value(Scalar::Integer(i)) => Value::from(*i),
        Yaml::Value(Scalar::FloatingPoint(f)) => serde_json::Number::from_f64(f.into_inner()).map(Value::Number).ok_or_else(|| format!("{} is not a finite number", f.into_inner()))?,
        Yaml::Value(Scalar::String(s)) => Value::String(s.to_string()),
        Yaml::Sequence(items) => Value::Array(items.iter().map(yaml_to_json).collect::<Result<_, _>>()?),
        Yaml::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match yaml_to_json(k)? {
                    Value::String(s) => s,
                    other => return Err(format!("key {other}: keys are flag names (strings)")),
                };
                out.insert(key, yaml_to_json(v)?);
            }
            Value::Object(out)
        }
        Yaml::Tagged(_, inner) => yaml_to_json(inner)?,
        Yaml::Alias(_) => return Err("YAML aliases are not supported in a config".into()),
        Yaml::Representation(s, _, _) => Value::String(s.to_string()),
        Yaml::BadValue => return Err("a value YAML cannot resolve".into()),
    })
}

// ---- what args.json records -------------------------------------------------------------------

/// Records the parsed command's flags (every flag's value, the defaults included) for args.json.
pub fn record(sub: &Command, m: &ArgMatches, file: Option<PathBuf>) {
    let mut flags = Map::new();
    for arg in sub.get_arguments() {
        let id = arg.get_id().as_str();
        if NOT_RECORDED.contains(&id) || arg.get_long().is_none() {
            continue;
        }
        let Some(raw) = m.get_raw(id) else { continue };
        let raw: Vec<String> = raw.map(|v| v.to_string_lossy().into_owned()).collect();
        let many = matches!(arg.get_action(), ArgAction::Append) || arg.get_num_args().is_some_and(|n| n.max_values() > 1);
        let value = match arg.get_action() {
            ArgAction::SetTrue => Value::Bool(raw.first().is_some_and(|v| v == "true")),
            _ if many => Value::Array(raw.into_iter().map(Value::String).collect()),
            _ => raw.into_iter().next().map(typed).unwrap_or(Value::Null),
        };
        flags.insert(id.to_string(), value);
    }
    let _ = RECORDED.set(Recorded { file, flags: Value::Object(flags) });
}

/// A flag's text as a JSON number where it reads back as the same text, else as a string.
fn typed(s: String) -> Value {
    if let Ok(i) = s.parse::<i64>() {
        if i.to_string() == s {
            return Value::from(i);
        }
    }
    if let Ok(f) = s.parse::<f64>() {
        if let Some(n) = serde_json::Number::from_f64(f).filter(|n| n.to_string() == s) {
            return Value::Number(n);
        }
    }
    Value::String(s)
}

/// Adds `flags` (every flag's value) and `config` (the file they were read from, if any) to a
/// run's args.json.
pub fn add_to_args_json(args: &mut Value) {
    if let (Some(o), Some(r)) = (args.as_object_mut(), RECORDED.get()) {
        o.insert("config".into(), r.file.as_ref().map_or(Value::Null, |f| Value::String(f.display().to_string())));
        o.insert("flags".into(), r.flags.clone());
    }
}

/// Prefixes clap's error for a flag that came from the file with the file and key.
pub fn blame(e: &clap::Error, from_file: &[(String, String)], file: &Path) -> Option<String> {
    let arg = e.get(clap::error::ContextKind::InvalidArg)?.to_string();
    let (_, key) = from_file.iter().find(|(flag, _)| arg == *flag || arg.starts_with(&format!("{flag} ")) || arg.starts_with(&format!("{flag}=")))?;
    Some(format!("--config {}: key `{key}`", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_stay_numbers_only_where_they_read_back_the_same() {
        assert_eq!(typed("8".into()), Value::from(8));
        assert_eq!(typed("0.001".into()), serde_json::json!(0.001));
        assert_eq!(typed("1e-3".into()), Value::String("1e-3".into()));
        assert_eq!(typed("007".into()), Value::String("007".into()));
        assert_eq!(typed("vi,ar".into()), Value::String("vi,ar".into()));
    }

    #[test]
    fn yaml_reads_as_json_values() {
        let v = yaml_value("lr: 1.0e-5\nbatch_size: 8\ndata: [a.json, b.json]\nno_shuffle: true\nlangs: vi,ar\nseed: null\n").unwrap();
        assert_eq!(v, serde_json::json!({ "lr": 1e-5, "batch_size": 8, "data": ["a.json", "b.json"], "no_shuffle": true, "langs": "vi,ar", "seed": null }));
        assert!(yaml_value("a: 1\n---\nb: 2\n").unwrap_err().contains("2 YAML documents"));
        assert!(yaml_value("a: [1\n").unwrap_err().starts_with("not valid YAML"));
    }

    #[test]
    fn split_takes_the_config_out_of_the_command_line() {
        let argv = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let s = split(argv(&["okapi-train", "sft", "--lr", "1", "--config", "c.toml", "--out", "x"])).unwrap();
        assert_eq!((s.argv, s.file), (argv(&["okapi-train", "sft", "--lr", "1", "--out", "x"]), Some(PathBuf::from("c.toml"))));
        let s = split(argv(&["okapi-train", "sft", "--config=c.yaml", "--", "--config", "y"])).unwrap();
        assert_eq!((s.argv, s.file), (argv(&["okapi-train", "sft", "--", "--config", "y"]), Some(PathBuf::from("c.yaml"))));
        assert!(split(argv(&["okapi-train", "sft", "--config", "a.json", "--config", "b.json"])).unwrap_err().contains("twice"));
        assert!(split(argv(&["okapi-train", "sft", "--config"])).unwrap_err().contains("expected a file"));
    }
}
