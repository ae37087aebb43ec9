//! The Jinja environment transformers renders chat templates in (`_compile_jinja_template`):
//! `trim_blocks`, `lstrip_blocks`, loop controls, Python's string and dict methods (minijinja's
//! `pycompat`), and its three additions — `raise_exception(msg)`, `strftime_now(fmt)` and a
//! `tojson` that writes what Python's `json.dumps` writes (Jinja's own escapes HTML characters,
//! which would change the tokens).

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};
use std::fmt::Write;

/// What `raise_exception` puts before its message, so the error line can say the template
/// refused (and not that it failed).
pub(crate) const RAISED: &str = "raise_exception: ";

/// An environment holding `source` as the template `chat_template`.
pub(crate) fn environment(source: String) -> Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    env.set_syntax(SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build()?);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    // `{{ x }}` of a boolean or None prints as Python prints it
    env.set_formatter(|out, state, value| match value.kind() {
        ValueKind::Bool => out.write_str(if value.is_true() { "True" } else { "False" }).map_err(Error::from),
        ValueKind::None => out.write_str("None").map_err(Error::from),
        _ => minijinja::escape_formatter(out, state, value),
    });
    env.add_filter("tojson", tojson);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> { Err(Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{msg}"))) });
    env.add_function("strftime_now", |fmt: String| strftime(&fmt, std::time::SystemTime::now()));
    env.add_template_owned("chat_template", source)?;
    Ok(env)
}

/// `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, the
/// keywords as transformers' filter takes them.
fn tojson(v: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(i) if i.is_none() => None,
        Some(i) => Some(match i.as_str() {
            Some(s) => s.to_string(),
            None => " ".repeat(i.as_i64().ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "tojson: indent must be an integer or a string"))?.max(0) as usize),
        }),
    };
    // Python's defaults: ", " between items without indent, "," with it (no trailing spaces)
    let (item_sep, key_sep) = match separators.filter(|s| !s.is_none()) {
        Some(s) => {
            let parts: Vec<String> = s.try_iter()?.map(|x| x.as_str().map(str::to_string)).collect::<Option<_>>().unwrap_or_default();
            match <[String; 2]>::try_from(parts) {
                Ok([a, b]) => (a, b),
                Err(_) => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings")),
            }
        }
        None => (if indent.is_some() { "," } else { ", " }.to_string(), ": ".to_string()),
    };
    let style = JsonStyle { indent, item_sep, key_sep, ensure_ascii: ensure_ascii.unwrap_or(false), sort_keys: sort_keys.unwrap_or(false) };
    let mut out = String::new();
    style.write(&mut out, v, 0)?;
    Ok(Value::from(out))
}

struct JsonStyle {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

impl JsonStyle {
    fn write(&self, out: &mut String, v: &Value, depth: usize) -> Result<(), Error> {
        match v.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&number(v)?),
            ValueKind::String => self.string(out, v.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container(out, ('[', ']'), items.len(), depth, |out, i| self.write(out, &items[i], depth + 1))?;
            }
            ValueKind::Map => {
                let mut entries: Vec<(String, Value)> = v.try_iter()?.map(|k| Ok((key_string(&k)?, v.get_item(&k)?))).collect::<Result<_, Error>>()?;
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.container(out, ('{', '}'), entries.len(), depth, |out, i| {
                    self.string(out, &entries[i].0);
                    out.push_str(&self.key_sep);
                    self.write(out, &entries[i].1, depth + 1)
                })?;
            }
            other => return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson: a value of type {other} is not JSON serializable"))),
        }
        Ok(())
    }

    /// `[…]` or `{…}` of `n` items written by `item`, laid out as json.dumps lays them out.
    fn container(&self, out: &mut String, (open, close): (char, char), n: usize, depth: usize, mut item: impl FnMut(&mut String, usize) -> Result<(), Error>) -> Result<(), Error> {
        out.push(open);
        if n == 0 {
            out.push(close);
            return Ok(());
        }
        let newline = |out: &mut String, level: usize| {
            if let Some(ind) = &self.indent {
                out.push('\n');
                (0..level).for_each(|_| out.push_str(ind));
            }
        };
        for i in 0..n {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            newline(out, depth + 1);
            item(out, i)?;
        }
        newline(out, depth);
        out.push(close);
        Ok(())
    }

    /// A JSON string as Python escapes it (`\uXXXX` in lower-case hex, surrogate pairs).
    fn string(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{u:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// A dict key as json.dumps converts it (strings as they are; numbers, booleans and None too).
fn key_string(k: &Value) -> Result<String, Error> {
    Ok(match k.kind() {
        ValueKind::String => k.as_str().unwrap_or_default().to_string(),
        ValueKind::None => "null".into(),
        ValueKind::Bool => (if k.is_true() { "true" } else { "false" }).into(),
        ValueKind::Number => number(k)?,
        other => return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson: keys must be str, int, float, bool or None, not {other}"))),
    })
}

/// A number as Python writes it: integers as they are, floats as `repr` (shortest round trip,
/// exponent form below 1e-4 and from 1e16 on, `.0` on integral values).
fn number(v: &Value) -> Result<String, Error> {
    if v.is_integer() {
        return Ok(v.to_string());
    }
    let f = f64::try_from(v.clone())?;
    Ok(py_float_repr(f))
}

pub(crate) fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` gives the shortest digits that round-trip, as Python's repr picks them
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let frac = if digits.len() > 1 { format!(".{}", &digits[1..]) } else { String::new() };
        format!("{sign}{}{frac}e{}{:02}", &digits[..1], if exp < 0 { '-' } else { '+' }, exp.unsigned_abs())
    }
}

const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/// `datetime.now().strftime(fmt)` for the directives chat templates use (`%d %b %Y` and the
/// other C89 ones; glibc's `%-d` without padding). Time is UTC: okapi reads no time zone.
pub(crate) fn strftime(fmt: &str, now: std::time::SystemTime) -> Result<String, Error> {
    let secs = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let hour12 = if hh % 12 == 0 { 12 } else { hh % 12 };
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (pad, spec) = match chars.next() {
            Some('-') => (false, chars.next()),
            other => (true, other),
        };
        let num = |n: i64, width: usize| if pad { format!("{n:0width$}") } else { n.to_string() };
        let piece = match spec {
            Some('Y') => y.to_string(),
            Some('y') => num(y.rem_euclid(100), 2),
            Some('m') => num(m, 2),
            Some('d') => num(d, 2),
            Some('e') => format!("{d:2}"),
            Some('j') => num(yday, 3),
            Some('H') => num(hh, 2),
            Some('I') => num(hour12, 2),
            Some('M') => num(mm, 2),
            Some('S') => num(ss, 2),
            Some('p') => (if hh < 12 { "AM" } else { "PM" }).into(),
            Some('B') => MONTHS[m as usize - 1].into(),
            Some('b') | Some('h') => MONTHS[m as usize - 1][..3].into(),
            Some('A') => DAYS[weekday].into(),
            Some('a') => DAYS[weekday][..3].into(),
            Some('w') => weekday.to_string(),
            Some('%') => "%".into(),
            other => return Err(Error::new(ErrorKind::InvalidOperation, format!("strftime_now: unsupported directive %{}", other.map(String::from).unwrap_or_default()))),
        };
        out.push_str(&piece);
    }
    Ok(out)
}

/// (year, month, day) of a day number since 1970-01-01 (H. Hinnant's civil calendar algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The day number of a date (the inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn render(src: &str) -> String {
        let env = environment(src.into()).unwrap();
        env.get_template("chat_template").unwrap().render(minijinja::context! {}).unwrap()
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        // json.dumps({"a": [1, 2.5, None, True], "b": "<x> & 'é'\n"}, ensure_ascii=False)
        assert_eq!(render(r#"{{ {"a": [1, 2.5, none, true], "b": "<x> & 'é'\n"} | tojson }}"#), r#"{"a": [1, 2.5, null, true], "b": "<x> & 'é'\n"}"#);
        assert_eq!(render(r#"{{ {"b": 1, "a": {}} | tojson(indent=2, sort_keys=true) }}"#), "{\n  \"a\": {},\n  \"b\": 1\n}");
        assert_eq!(render(r#"{{ ["é", "😀"] | tojson(ensure_ascii=true) }}"#), r#"["\u00e9", "\ud83d\ude00"]"#);
        assert_eq!(render(r#"{{ [1, [2]] | tojson(indent=4) }}"#), "[\n    1,\n    [\n        2\n    ]\n]");
        assert_eq!(render(r#"{{ {"a": 1} | tojson(separators=[",", ":"]) }}"#), r#"{"a":1}"#);
    }

    #[test]
    fn floats_as_python_repr() {
        for (f, want) in [(1.0, "1.0"), (0.1, "0.1"), (1e-5, "1e-05"), (123456.5, "123456.5"), (1e16, "1e+16"), (1.5e300, "1.5e+300"), (-0.00012, "-0.00012"), (2.5e-7, "2.5e-07")] {
            assert_eq!(py_float_repr(f), want, "{f}");
        }
    }

    #[test]
    fn strftime_formats_utc_dates() {
        // 2024-07-26 13:05:09 UTC, a Friday
        let t = UNIX_EPOCH + Duration::from_secs(1_721_999_109);
        assert_eq!(strftime("%d %b %Y", t).unwrap(), "26 Jul 2024");
        assert_eq!(strftime("%A %B %-d, %H:%M:%S %p %j %y %I", t).unwrap(), "Friday July 26, 13:05:09 PM 208 24 01");
        assert!(strftime("%Q", t).is_err());
        for days in [-1000, 0, 59, 60, 11_016, 20_000, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn python_string_methods_and_loop_controls() {
        assert_eq!(render(r#"{{ "  hi  ".strip() }}|{{ "a,b".split(",") | join("+") }}|{{ "abc".startswith("ab") }}"#), "hi|a+b|True");
        assert_eq!(render("{{ none }}|{{ false }}"), "None|False");
        assert_eq!(render("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}"), "02");
        let env = environment(r#"{{ raise_exception("no system role") }}"#.into()).unwrap();
        let e = env.get_template("chat_template").unwrap().render(minijinja::context! {}).unwrap_err();
        assert!(e.to_string().contains("raise_exception: no system role"), "{e}");
    }
}
