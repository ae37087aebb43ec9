//! Every CUDA kernel family (okapi-kernels' `FAMILIES`) compiles under NVRTC for sm_80 (Ampere)
//! and sm_90a (Hopper) with an empty log — an error or a warning fails. (That each family's
//! source defines the entry points it lists is checked in okapi-kernels.) Needs no GPU: NVRTC
//! alone (`pip install nvidia-cuda-nvrtc`, found under site-packages or through
//! `OKAPI_NVRTC_LIB=/path/libnvrtc.so.13`).
//! The compile cache on disk (`nvrtc::compile_cached`): a miss writes the entry, a hit returns
//! the same cubin, a damaged entry is recompiled and rewritten, another arch or source is another
//! entry, a disabled cache writes nothing, and the environment picks the directory.
//! Without NVRTC each test prints a loud line and passes, unless `OKAPI_REQUIRE_NVRTC=1` (CI).
#![cfg(feature = "cuda")]

use okapi_kernels::FAMILIES;
use okapi_runtime::cuda::nvrtc;
use std::path::{Path, PathBuf};

/// Loads NVRTC; without it, prints that `test` did NOT run and returns false (panics under
/// `OKAPI_REQUIRE_NVRTC=1`).
fn nvrtc_or_skip(test: &str) -> bool {
    if nvrtc::load(&nvrtc::NvrtcSearch::from_env()) {
        return true;
    }
    eprintln!("!!!!!!!! cuda_compile::{test}: NVRTC NOT FOUND — this test did NOT run (pip install nvidia-cuda-nvrtc, or OKAPI_NVRTC_LIB) !!!!!!!!");
    if std::env::var("OKAPI_REQUIRE_NVRTC").as_deref() == Ok("1") {
        panic!("OKAPI_REQUIRE_NVRTC=1 but NVRTC could not be loaded");
    }
    false
}

const ARCHS: [&str; 2] = ["sm_80", "sm_90a"];

#[test]
fn every_kernel_compiles_for_sm80_and_sm90a() {
    if !nvrtc_or_skip("every_kernel_compiles_for_sm80_and_sm90a") {
        return;
    }
    eprintln!("cuda_compile: NVRTC {:?}", nvrtc::version());
    let mut failures = Vec::new();
    for family in FAMILIES.iter().map(|f| f.name) {
        for arch in ARCHS {
            match nvrtc::compile(family, arch) {
                Ok(c) if c.log.is_empty() => eprintln!("{family}.cu {arch}: ok ({} bytes of cubin)", c.cubin.len()),
                Ok(c) => failures.push(format!("{family}.cu for {arch}: warnings (treated as errors):\n{}", c.log)),
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(failures.is_empty(), "{} NVRTC failure(s):\n{}", failures.len(), failures.join("\n\n"));
}

/// A kernel with a warning must fail the compile check (the log is what the check reads).
#[test]
fn a_warning_shows_in_the_log() {
    if !nvrtc_or_skip("a_warning_shows_in_the_log") {
        return;
    }
    // NVRTC warns on a variable declared but never referenced? Not always; a narrowing
    // conversion of a constant is a reliable warning (integer conversion resulted in truncation).
    let src = "extern \"C\" __global__ void w(unsigned char* x) { unsigned char c = 300; x[0] = c; }";
    let log = match nvrtc::compile_source("warning_probe", src, "sm_80") {
        Ok(c) => c.log,
        Err(e) => e,
    };
    assert!(log.to_lowercase().contains("warning"), "expected a warning in the NVRTC log, got: {log:?}");
}

// ---- the compile cache ----

/// The family the cache tests compile (small, so each compile is quick).
const FAMILY: &str = "rope";

/// A directory under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("okapi-cuda-compile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every file under `dir` (recursively), sorted; none may be a leftover temporary file.
fn files(dir: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    assert!(out.iter().all(|p| !p.to_string_lossy().ends_with(".tmp")), "temporary files left: {out:?}");
    out
}

/// The path of the cache entry of `family`'s full source for `arch` in `dir`.
fn entry_path(dir: &Path, family: &str, arch: &str) -> PathBuf {
    let src = nvrtc::full_source(family).unwrap();
    dir.join(nvrtc::cache_file_name(family, &src, arch, nvrtc::COMPILE_OPTIONS, nvrtc::version().unwrap()))
}

#[test]
fn the_cache_misses_then_hits() {
    if !nvrtc_or_skip("the_cache_misses_then_hits") {
        return;
    }
    let tmp = TempDir::new("hit");
    let dir = tmp.0.join("not/yet/there");
    let fresh = nvrtc::compile(FAMILY, "sm_80").unwrap();
    assert!(!fresh.from_cache);

    let first = nvrtc::compile_cached_in(FAMILY, "sm_80", Some(&dir)).unwrap();
    assert!(!first.from_cache, "an empty cache must miss");
    assert_eq!(first.cubin, fresh.cubin, "NVRTC is expected to be deterministic");
    let entry = entry_path(&dir, FAMILY, "sm_80");
    assert_eq!(files(&dir), std::slice::from_ref(&entry));
    let name = entry.file_name().unwrap().to_string_lossy().into_owned();
    let (maj, min) = nvrtc::version().unwrap();
    let prefix = format!("{FAMILY}-sm_80-nvrtc{maj}.{min}-");
    assert!(name.starts_with(&prefix) && name.ends_with(".cubin"), "{name}");
    let hash = &name[prefix.len()..name.len() - ".cubin".len()];
    assert!(hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
    let written = std::fs::read(&entry).unwrap();
    assert_eq!(written.len(), nvrtc::CACHE_HEADER_LEN + fresh.cubin.len());
    assert_eq!(&written[nvrtc::CACHE_HEADER_LEN..], &fresh.cubin[..]);

    let second = nvrtc::compile_cached_in(FAMILY, "sm_80", Some(&dir)).unwrap();
    assert!(second.from_cache, "the second call must hit");
    assert_eq!(second.cubin, fresh.cubin);
    assert_eq!(std::fs::read(&entry).unwrap(), written, "a hit must not rewrite the entry");
    assert_eq!(files(&dir), [entry]);
}

#[test]
fn a_damaged_entry_is_recompiled_and_rewritten() {
    if !nvrtc_or_skip("a_damaged_entry_is_recompiled_and_rewritten") {
        return;
    }
    let tmp = TempDir::new("damaged");
    let dir = tmp.0.clone();
    let fresh = nvrtc::compile(FAMILY, "sm_80").unwrap().cubin;
    assert!(!nvrtc::compile_cached_in(FAMILY, "sm_80", Some(&dir)).unwrap().from_cache);
    let entry = entry_path(&dir, FAMILY, "sm_80");
    let good = std::fs::read(&entry).unwrap();
    let h = nvrtc::CACHE_HEADER_LEN;
    // an entry of the same family for another arch: a valid entry, but of another key
    nvrtc::compile_cached_in(FAMILY, "sm_90a", Some(&dir)).unwrap();
    let foreign = std::fs::read(entry_path(&dir, FAMILY, "sm_90a")).unwrap();

    let flip = |i: usize| {
        let mut e = good.clone();
        e[i] ^= 0x40;
        e
    };
    let damaged: Vec<(&str, Vec<u8>)> = vec![
        ("a byte flipped in the middle of the cubin", flip(h + (good.len() - h) / 2)),
        ("the last byte flipped", flip(good.len() - 1)),
        ("the first cubin byte flipped", flip(h)),
        ("a byte flipped in the checksum", flip(20)),
        ("a byte flipped in the length", flip(12)),
        ("truncated by one byte", good[..good.len() - 1].to_vec()),
        ("truncated to half", good[..good.len() / 2].to_vec()),
        ("truncated to the header", good[..h].to_vec()),
        ("truncated inside the header", good[..10].to_vec()),
        ("empty", Vec::new()),
        ("a trailing byte", [&good[..], &[0]].concat()),
        ("a garbage header", [&[0xa5u8; 36][..], &good[h..]].concat()),
        ("garbage", vec![0x5a; good.len()]),
        ("the entry of another arch", foreign),
    ];
    for (what, bytes) in damaged {
        std::fs::write(&entry, &bytes).unwrap();
        let c = nvrtc::compile_cached_in(FAMILY, "sm_80", Some(&dir)).unwrap();
        assert!(!c.from_cache, "{what}: a damaged entry was trusted");
        assert_eq!(c.cubin, fresh, "{what}: the recompiled cubin differs from a fresh compile");
        assert_eq!(std::fs::read(&entry).unwrap(), good, "{what}: the entry was not rewritten");
        let again = nvrtc::compile_cached_in(FAMILY, "sm_80", Some(&dir)).unwrap();
        assert!(again.from_cache && again.cubin == fresh, "{what}: the rewritten entry does not hit");
    }
    assert_eq!(files(&dir).len(), 2);
}

#[test]
fn another_arch_or_source_is_another_entry() {
    if !nvrtc_or_skip("another_arch_or_source_is_another_entry") {
        return;
    }
    let tmp = TempDir::new("keys");
    let dir = tmp.0.clone();
    let src = nvrtc::full_source(FAMILY).unwrap();
    let a = nvrtc::compile_source_cached(FAMILY, &src, "sm_80", Some(&dir)).unwrap();
    let b = nvrtc::compile_source_cached(FAMILY, &src, "sm_90a", Some(&dir)).unwrap();
    assert!(!a.from_cache && !b.from_cache, "another arch must miss");
    assert_ne!(a.cubin, b.cubin);
    assert_eq!(files(&dir).len(), 2);
    let edited = format!("{src}\n// an edit\n");
    let c = nvrtc::compile_source_cached(FAMILY, &edited, "sm_80", Some(&dir)).unwrap();
    assert!(!c.from_cache, "another source must miss");
    assert_eq!(files(&dir).len(), 3);
    // each still hits, with its own cubin
    for (arch, s, want) in [("sm_80", &src, &a.cubin), ("sm_90a", &src, &b.cubin), ("sm_80", &edited, &c.cubin)] {
        let hit = nvrtc::compile_source_cached(FAMILY, s, arch, Some(&dir)).unwrap();
        assert!(hit.from_cache && hit.cubin == *want, "{arch}");
    }
    // compile_cached_in is the same cache as compile_source_cached on the full source
    assert!(nvrtc::compile_cached_in(FAMILY, "sm_90a", Some(&dir)).unwrap().from_cache);
    assert_eq!(files(&dir).len(), 3);
}

#[test]
fn no_cache_dir_and_an_unwritable_one_just_compile() {
    if !nvrtc_or_skip("no_cache_dir_and_an_unwritable_one_just_compile") {
        return;
    }
    let fresh = nvrtc::compile(FAMILY, "sm_80").unwrap().cubin;
    let c = nvrtc::compile_cached_in(FAMILY, "sm_80", None).unwrap();
    assert!(!c.from_cache && c.cubin == fresh);
    // a directory that cannot be created (its parent is a file; root ignores permissions, so
    // a read-only directory would not do here)
    let tmp = TempDir::new("unwritable");
    std::fs::write(tmp.0.join("file"), b"x").unwrap();
    let dir = tmp.0.join("file/cache");
    for _ in 0..2 {
        let c = nvrtc::compile_cached_in(FAMILY, "sm_80", Some(&dir)).unwrap();
        assert!(!c.from_cache && c.cubin == fresh);
    }
    // an entry path that is a directory: neither readable nor replaceable
    let dir = tmp.0.join("cache");
    std::fs::create_dir_all(entry_path(&dir, FAMILY, "sm_80")).unwrap();
    let c = nvrtc::compile_cached_in(FAMILY, "sm_80", Some(&dir)).unwrap();
    assert!(!c.from_cache && c.cubin == fresh);
    assert_eq!(files(&tmp.0), [tmp.0.join("file")]);
}

/// Runs [`cache_env_child`] in a new process of this test binary with `env` set (and the NVRTC
/// this process found named by `OKAPI_NVRTC_LIB`, since `HOME` may change).
fn run_child(env: &[(&str, &Path)], unset: &[&str]) -> std::process::Child {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "cache_env_child", "--ignored", "--nocapture", "--test-threads=1"]);
    cmd.env("OKAPI_CACHE_CHILD", "1");
    if let Some(lib) = nvrtc::NvrtcSearch::from_env().candidates().into_iter().next() {
        cmd.env("OKAPI_NVRTC_LIB", lib);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    cmd.spawn().unwrap()
}

fn wait_child(child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("1 passed"), "the child test did not run:\n{text}");
    text
}

/// Not a test of its own: what [`the_environment_picks_the_cache_dir`] runs in a child process.
#[test]
#[ignore = "run by the_environment_picks_the_cache_dir in a child process"]
fn cache_env_child() {
    if std::env::var_os("OKAPI_CACHE_CHILD").is_none() {
        return;
    }
    assert!(nvrtc::load(&nvrtc::NvrtcSearch::from_env()), "child: NVRTC not found");
    let c = nvrtc::compile_cached(FAMILY, "sm_80").unwrap();
    println!("child: from_cache={}", c.from_cache);
}

#[test]
fn the_environment_picks_the_cache_dir() {
    if !nvrtc_or_skip("the_environment_picks_the_cache_dir") {
        return;
    }
    let tmp = TempDir::new("env");
    let (xdg, home, own) = (tmp.0.join("xdg"), tmp.0.join("home"), tmp.0.join("own"));
    let name = entry_path(Path::new(""), FAMILY, "sm_80");
    let vars = ["OKAPI_CUDA_CACHE", "XDG_CACHE_HOME", "HOME"];

    // disabled: nothing written anywhere, though XDG_CACHE_HOME and HOME are set
    for off in ["off", "0"] {
        wait_child(run_child(&[("OKAPI_CUDA_CACHE", Path::new(off)), ("XDG_CACHE_HOME", &xdg), ("HOME", &home)], &vars));
        assert_eq!(files(&tmp.0), Vec::<PathBuf>::new(), "OKAPI_CUDA_CACHE={off} wrote files");
    }
    // OKAPI_CUDA_CACHE names the directory
    let out = wait_child(run_child(&[("OKAPI_CUDA_CACHE", &own), ("XDG_CACHE_HOME", &xdg), ("HOME", &home)], &vars));
    assert!(out.contains("from_cache=false"), "{out}");
    assert_eq!(files(&tmp.0), [own.join(&name)]);
    let out = wait_child(run_child(&[("OKAPI_CUDA_CACHE", &own)], &vars));
    assert!(out.contains("from_cache=true"), "a second process must hit: {out}");
    // then XDG_CACHE_HOME, then HOME
    wait_child(run_child(&[("XDG_CACHE_HOME", &xdg), ("HOME", &home)], &vars));
    wait_child(run_child(&[("HOME", &home)], &vars));
    assert_eq!(files(&tmp.0), [home.join(".cache/okapi/nvrtc").join(&name), own.join(&name), xdg.join("okapi/nvrtc").join(&name)]);

    // processes racing to write one entry: each succeeds, and the entry is whole
    let race = tmp.0.join("race");
    let children: Vec<_> = (0..4).map(|_| run_child(&[("OKAPI_CUDA_CACHE", &race)], &vars)).collect();
    for c in children {
        wait_child(c);
    }
    assert_eq!(files(&race), [race.join(&name)]);
    let out = wait_child(run_child(&[("OKAPI_CUDA_CACHE", &race)], &vars));
    assert!(out.contains("from_cache=true"), "the raced entry must hit: {out}");
}
