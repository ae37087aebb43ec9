//! Data arguments (`--data`, `--prompts`): files, directories (every `.json` / `.jsonl` file
//! inside, sorted by name) and glob patterns (`data/*.json`), resolved and checked before
//! anything heavy is loaded. Each file keeps its name, so Okapi's per-language files
//! (`vi.json`) still give their language.

use std::path::{Path, PathBuf};

/// The data files `args` name, in order (each directory's and pattern's sorted); `flag` names
/// the option in errors. Every file must exist and be readable.
pub fn expand_data_paths(flag: &str, args: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for arg in args {
        let files = if arg.is_dir() {
            data_files_in(flag, arg)?
        } else if arg.exists() {
            vec![arg.clone()]
        } else if arg.to_str().is_some_and(|s| s.contains(['*', '?', '['])) {
            matches(flag, arg)?
        } else {
            return Err(format!("{flag} {}: no such file or directory", arg.display()));
        };
        for f in &files {
            std::fs::File::open(f).map_err(|e| format!("{flag} {}: cannot read it: {e}", f.display()))?;
        }
        out.extend(files);
    }
    Ok(out)
}

fn is_data_file(p: &Path) -> bool {
    let visible = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| !n.starts_with('.'));
    visible && p.is_file() && p.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("json") || e.eq_ignore_ascii_case("jsonl"))
}

/// The `.json` / `.jsonl` files of a directory (not its subdirectories'), sorted.
fn data_files_in(flag: &str, dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{flag} {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_data_file(p)).collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{flag} {}: the directory holds no .json or .jsonl file", dir.display()));
    }
    Ok(files)
}

/// The files a glob pattern matches, sorted (a matched directory gives its data files).
fn matches(flag: &str, pattern: &Path) -> Result<Vec<PathBuf>, String> {
    let text = pattern.to_str().unwrap_or_default();
    // as a shell expands it: `*` does not match a leading dot
    let opts = glob::MatchOptions { require_literal_leading_dot: true, ..Default::default() };
    let paths = glob::glob_with(text, opts).map_err(|e| format!("{flag} {text}: not a valid pattern: {e}"))?;
    let mut files = Vec::new();
    for p in paths {
        let p = p.map_err(|e| format!("{flag} {text}: {e}"))?;
        if p.is_dir() {
            files.extend(data_files_in(flag, &p)?);
        } else {
            files.push(p);
        }
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(format!("{flag} {text}: no file matches the pattern"));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_directories_and_patterns() {
        let dir = std::env::temp_dir().join(format!("okapi-paths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for f in ["vi.json", "ar.jsonl", "notes.txt", ".hidden.json", "sub/zh.json"] {
            std::fs::write(dir.join(f), "[]").unwrap();
        }
        let got = expand_data_paths("--data", std::slice::from_ref(&dir)).unwrap();
        assert_eq!(got, vec![dir.join("ar.jsonl"), dir.join("vi.json")]);
        let pattern = dir.join("*.json*");
        assert_eq!(expand_data_paths("--data", &[pattern, dir.join("sub/zh.json")]).unwrap(), vec![dir.join("ar.jsonl"), dir.join("vi.json"), dir.join("sub/zh.json")]);
        let e = expand_data_paths("--data", &[dir.join("nope.json")]).unwrap_err();
        assert!(e.starts_with("--data ") && e.contains("nope.json: no such file or directory"), "{e}");
        let e = expand_data_paths("--data", &[dir.join("*.csv")]).unwrap_err();
        assert!(e.contains("*.csv: no file matches"), "{e}");
        std::fs::remove_file(dir.join("sub/zh.json")).unwrap();
        let e = expand_data_paths("--data", &[dir.join("sub")]).unwrap_err();
        assert!(e.contains("holds no .json or .jsonl file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
