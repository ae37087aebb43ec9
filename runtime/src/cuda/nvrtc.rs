//! NVRTC: the CUDA C++ source of every kernel family (okapi-kernels' [`FAMILIES`], each compiled
//! as [`CUDA_PRELUDE`] followed by the family's `.cu`) and its compilation to a cubin for one GPU
//! architecture. Used by the backend at first use of a family, and by the compile test that CI
//! runs without a GPU (`runtime/tests/cuda_compile.rs`).
//!
//! Finding NVRTC: cudarc's loader `dlopen`s `libnvrtc.so.13` (and older names) from the
//! default search path. [`load`] first opens a library file by its absolute path — the one
//! [`NvrtcSearch::lib`] names, or one installed from PyPI (`pip install nvidia-cuda-nvrtc`:
//! `site-packages/nvidia/cu13/lib`) under the search roots — so the loader's later `dlopen` by
//! soname finds it already loaded, with no `LD_LIBRARY_PATH`.
//!
//! The compile cache on disk ([`compile_cached`]; the backend compiles through it): a family's
//! cubin is kept in one file per compile, so a later process loads it instead of running NVRTC.
//! - Where: `OKAPI_CUDA_CACHE` if set (`0` or `off` disables the cache), else
//!   `$XDG_CACHE_HOME/okapi/nvrtc`, else `$HOME/.cache/okapi/nvrtc`; with none of them, no cache
//!   ([`cache_dir`]). Deleting the directory is always safe.
//! - Key: a 64-bit FNV-1a hash of the full source text (prelude + `.cu`), the compile options
//!   ([`COMPILE_OPTIONS`]), the architecture and NVRTC's [`version`]; the file is
//!   `{family}-{arch}-nvrtc{major}.{minor}-{hash:016x}.cubin` ([`cache_file_name`]). Editing a
//!   kernel, changing an option, another GPU or another NVRTC each make a new entry.
//! - Entry: a [`CACHE_HEADER_LEN`]-byte header (magic `OKAPINVC`, format version, cubin length,
//!   FNV-1a of the cubin, the key) then the cubin. An entry whose header, length, checksum or key
//!   does not match (corrupt, truncated, foreign) is never used: it counts as a miss (one line on
//!   stderr), the family is recompiled and the entry rewritten.
//! - Writes go to a uniquely named temporary file in the same directory, renamed over the entry,
//!   so concurrent processes and crashes leave either no entry or a whole one. A directory that
//!   cannot be created or written (read-only file system) only costs the compile: a warning is
//!   printed once and the backend goes on. Compile errors are not cached; a hit carries an empty
//!   log (the log is checked where the kernels are compiled uncached, in the compile test).

use cudarc::nvrtc::{result, sys};
use okapi_kernels::{CUDA_PRELUDE, FAMILIES};
use std::ffi::{c_char, CStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

/// The full source NVRTC compiles for a family: the prelude, then the family's `.cu`.
pub fn full_source(family: &str) -> Option<String> {
    FAMILIES.iter().find(|f| f.name == family).map(|f| format!("{CUDA_PRELUDE}\n#line 1 \"{family}.cu\"\n{}", f.cuda))
}

/// The `--gpu-architecture` for a compute capability: `sm_90a` on Hopper (wgmma/TMA-capable
/// SASS), `sm_XY` otherwise.
pub fn arch_for(major: i32, minor: i32) -> String {
    if (major, minor) == (9, 0) {
        "sm_90a".to_string()
    } else {
        format!("sm_{major}{minor}")
    }
}

/// The options every kernel family is compiled with, after `--gpu-architecture={arch}`. They are
/// part of the cache key: changing one makes every cached cubin a miss.
pub const COMPILE_OPTIONS: &[&str] = &["--std=c++17", "--fmad=true", "-lineinfo"];

/// A compiled family: the cubin, NVRTC's log (empty when clean, and on a cache hit), and
/// whether the cubin came from the cache on disk.
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub log: String,
    pub from_cache: bool,
}

/// Where to look for an NVRTC library beside the default search path.
#[derive(Clone, Debug, Default)]
pub struct NvrtcSearch {
    /// A library file to open first (the CLI passes `OKAPI_NVRTC_LIB`).
    pub lib: Option<PathBuf>,
    /// Directories holding `pythonX.Y/{site,dist}-packages/nvidia/{cu13,cuda_nvrtc}/lib`.
    pub roots: Vec<PathBuf>,
}

impl NvrtcSearch {
    /// The system's Python prefixes: /usr/local/lib, /usr/lib, /opt/conda/lib.
    pub fn system() -> NvrtcSearch {
        NvrtcSearch { lib: None, roots: ["/usr/local/lib", "/usr/lib", "/opt/conda/lib"].map(PathBuf::from).to_vec() }
    }

    /// What the `okapi-train` binary searches: `OKAPI_NVRTC_LIB`, then the user's
    /// (`~/.local/lib`), the active virtualenv's, pyenv's and the system's site-packages.
    pub fn from_env() -> NvrtcSearch {
        let mut roots: Vec<PathBuf> = Vec::new();
        if let Some(home) = std::env::var_os("HOME") {
            roots.push(Path::new(&home).join(".local/lib"));
        }
        if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
            roots.push(Path::new(&venv).join("lib"));
        }
        let pyenv = std::env::var_os("PYENV_ROOT").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")));
        if let Some(Ok(rd)) = pyenv.map(|p| std::fs::read_dir(p.join("versions"))) {
            roots.extend(rd.flatten().map(|e| e.path().join("lib")));
        }
        roots.extend(Self::system().roots);
        NvrtcSearch { lib: std::env::var_os("OKAPI_NVRTC_LIB").map(PathBuf::from), roots }
    }

    /// Candidate library files, in order (what [`load`] tries first is the first of them).
    pub fn candidates(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self.lib.iter().cloned().collect();
        for root in &self.roots {
            let Ok(rd) = std::fs::read_dir(root) else { continue };
            for py in rd.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("python")) {
                for sp in ["site-packages", "dist-packages"] {
                    for sub in ["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"] {
                        let dir = py.path().join(sp).join(sub);
                        out.extend(["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"].iter().map(|n| dir.join(n)).filter(|f| f.exists()));
                    }
                }
            }
        }
        out
    }
}

static PRESENT: OnceLock<bool> = OnceLock::new();

/// Loads NVRTC: opens the first candidate of `search`, then checks that cudarc's loader finds
/// a library. The first call decides (later calls, with any search, return its answer).
pub fn load(search: &NvrtcSearch) -> bool {
    *PRESENT.get_or_init(|| {
        // SAFETY: loading NVRTC runs its initialisers only; the handle is kept for the process.
        unsafe {
            if let Some(f) = search.candidates().into_iter().next() {
                if let Ok(lib) = libloading::Library::new(&f) {
                    std::mem::forget(lib);
                }
            }
            sys::is_culib_present()
        }
    })
}

/// Whether NVRTC can be loaded: the answer of the first [`load`], or a [`NvrtcSearch::system`]
/// search when nothing has loaded it yet.
pub fn available() -> bool {
    load(&NvrtcSearch::system())
}

/// NVRTC's version, e.g. (13, 5).
pub fn version() -> Option<(i32, i32)> {
    if !available() {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (checked above); the pointers are valid for the call.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }.result().ok()?;
    Some((major, minor))
}

fn c_buf_to_string(buf: &[c_char]) -> String {
    if buf.is_empty() {
        return String::new();
    }
    // SAFETY: NVRTC writes a NUL-terminated string into the buffer it sized.
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().trim().to_string()
}

/// Compiles one family for `arch` (e.g. `sm_90a`) to a cubin. The error names the family and
/// the architecture and carries NVRTC's log.
pub fn compile(family: &str, arch: &str) -> Result<Compiled, String> {
    let src = family_source(family)?;
    compile_source(family, &src, arch)
}

/// The full source of a family, or the error [`compile`] gives (no NVRTC, no such family).
fn family_source(family: &str) -> Result<String, String> {
    if !available() {
        return Err(format!("{family}.cu: NVRTC (libnvrtc.so) not found; install it (pip install nvidia-cuda-nvrtc) or name it with OKAPI_NVRTC_LIB"));
    }
    full_source(family).ok_or_else(|| format!("no CUDA kernel family `{family}`"))
}

/// Compiles a CUDA C++ source (`name` labels messages) for `arch` to a cubin, with the options
/// every kernel family gets.
pub fn compile_source(family: &str, src: &str, arch: &str) -> Result<Compiled, String> {
    if !available() {
        return Err(format!("{family}.cu: NVRTC (libnvrtc.so) not found"));
    }
    let opts: Vec<String> = std::iter::once(format!("--gpu-architecture={arch}")).chain(COMPILE_OPTIONS.iter().map(|o| o.to_string())).collect();
    let c_src = std::ffi::CString::new(src.to_string()).map_err(|e| format!("{family}.cu: {e}"))?;
    let c_name = std::ffi::CString::new(format!("{family}.cu")).unwrap();
    let prog = result::create_program(&c_src, Some(&c_name)).map_err(|e| format!("{family}.cu: nvrtcCreateProgram: {e:?}"))?;
    // SAFETY: prog is a live program until destroy_program below; buffers are sized by NVRTC.
    unsafe {
        let compiled = result::compile_program(prog, &opts);
        let log = result::get_program_log(prog).map(|b| c_buf_to_string(&b)).unwrap_or_default();
        let out = match compiled {
            Err(e) => Err(format!("{family}.cu for {arch}: {e:?}\n{log}")),
            Ok(()) => {
                let mut size = 0usize;
                match sys::nvrtcGetCUBINSize(prog, &mut size).result() {
                    Err(e) => Err(format!("{family}.cu for {arch}: nvrtcGetCUBINSize: {e:?}")),
                    Ok(()) => {
                        let mut cubin = vec![0u8; size];
                        match sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char).result() {
                            Err(e) => Err(format!("{family}.cu for {arch}: nvrtcGetCUBIN: {e:?}")),
                            Ok(()) => Ok(Compiled { cubin, log, from_cache: false }),
                        }
                    }
                }
            }
        };
        let _ = result::destroy_program(prog);
        out
    }
}

// ---- the compile cache on disk (see the module documentation) ----

/// The length of a cache entry's header: magic (8 bytes), format version (u32), cubin length
/// (u64), FNV-1a of the cubin (u64), the key (u64); little-endian.
pub const CACHE_HEADER_LEN: usize = 36;
const CACHE_MAGIC: [u8; 8] = *b"OKAPINVC";
const CACHE_FORMAT: u32 = 1;

/// 64-bit FNV-1a: written out here because the key must be the same across Rust versions
/// (std's `DefaultHasher` is not).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    Fnv(FNV_OFFSET).bytes(bytes).0
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn bytes(mut self, bytes: &[u8]) -> Fnv {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
        self
    }

    /// A length-prefixed field, so that no two different field lists hash the same bytes.
    fn field(self, bytes: &[u8]) -> Fnv {
        self.bytes(&(bytes.len() as u64).to_le_bytes()).bytes(bytes)
    }
}

/// The cache key of one compile: FNV-1a over the source, the options, the architecture and the
/// NVRTC version (every field length-prefixed).
pub fn cache_key(src: &str, arch: &str, options: &[&str], nvrtc: (i32, i32)) -> u64 {
    let mut h = Fnv(FNV_OFFSET).field(b"okapi nvrtc cache key").field(src.as_bytes()).bytes(&(options.len() as u64).to_le_bytes());
    for o in options {
        h = h.field(o.as_bytes());
    }
    h.field(arch.as_bytes()).bytes(&nvrtc.0.to_le_bytes()).bytes(&nvrtc.1.to_le_bytes()).0
}

/// The file name of an entry: `{name}-{arch}-nvrtc{major}.{minor}-{key:016x}.cubin` (characters
/// other than ASCII letters, digits, `_` and `.` in the name and arch become `_`).
pub fn cache_file_name(name: &str, src: &str, arch: &str, options: &[&str], nvrtc: (i32, i32)) -> String {
    let clean = |s: &str| s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '.' { c } else { '_' }).collect::<String>();
    format!("{}-{}-nvrtc{}.{}-{:016x}.cubin", clean(name), clean(arch), nvrtc.0, nvrtc.1, cache_key(src, arch, options, nvrtc))
}

/// A cache entry: the header, then the cubin.
pub fn encode_entry(cubin: &[u8], key: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(CACHE_HEADER_LEN + cubin.len());
    out.extend_from_slice(&CACHE_MAGIC);
    out.extend_from_slice(&CACHE_FORMAT.to_le_bytes());
    out.extend_from_slice(&(cubin.len() as u64).to_le_bytes());
    out.extend_from_slice(&fnv1a64(cubin).to_le_bytes());
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(cubin);
    out
}

/// The cubin of a cache entry made for `key`, or why the entry cannot be used.
pub fn decode_entry(entry: &[u8], key: u64) -> Result<&[u8], &'static str> {
    if entry.len() < CACHE_HEADER_LEN {
        return Err("shorter than its header");
    }
    let u64_at = |i: usize| u64::from_le_bytes(entry[i..i + 8].try_into().unwrap());
    if entry[..8] != CACHE_MAGIC {
        return Err("bad magic");
    }
    if u32::from_le_bytes(entry[8..12].try_into().unwrap()) != CACHE_FORMAT {
        return Err("another format version");
    }
    let cubin = &entry[CACHE_HEADER_LEN..];
    if u64_at(12) != cubin.len() as u64 {
        return Err("length does not match (truncated?)");
    }
    if u64_at(28) != key {
        return Err("made for another key");
    }
    if u64_at(20) != fnv1a64(cubin) {
        return Err("checksum does not match");
    }
    Ok(cubin)
}

/// The cache directory the environment names: `OKAPI_CUDA_CACHE` (`0`/`off`: none), else
/// `$XDG_CACHE_HOME/okapi/nvrtc`, else `$HOME/.cache/okapi/nvrtc`, else none.
pub fn cache_dir() -> Option<PathBuf> {
    cache_dir_from(std::env::var_os("OKAPI_CUDA_CACHE"), std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
}

/// [`cache_dir`] for given values of `OKAPI_CUDA_CACHE`, `XDG_CACHE_HOME` and `HOME` (empty
/// values count as unset; a relative `XDG_CACHE_HOME` is ignored, as its specification says).
pub fn cache_dir_from(okapi: Option<OsString>, xdg: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty());
    if let Some(v) = set(okapi) {
        let off = v.to_str().is_some_and(|s| s == "0" || s.eq_ignore_ascii_case("off"));
        return (!off).then(|| PathBuf::from(v));
    }
    if let Some(x) = set(xdg).map(PathBuf::from).filter(|p| p.is_absolute()) {
        return Some(x.join("okapi/nvrtc"));
    }
    set(home).map(|h| Path::new(&h).join(".cache/okapi/nvrtc"))
}

/// Compiles a family for `arch` through the cache in [`cache_dir`]: what the backend calls.
pub fn compile_cached(family: &str, arch: &str) -> Result<Compiled, String> {
    compile_cached_in(family, arch, cache_dir().as_deref())
}

/// [`compile_cached`] with the cache in `dir` (`None`: no cache, compile).
pub fn compile_cached_in(family: &str, arch: &str, dir: Option<&Path>) -> Result<Compiled, String> {
    let src = family_source(family)?;
    compile_source_cached(family, &src, arch, dir)
}

/// [`compile_source`] through the cache in `dir` (`None`: no cache). A valid entry is returned
/// with `from_cache`; a missing or unusable one is (re)written after the compile. Problems with
/// the cache never fail the compile.
pub fn compile_source_cached(name: &str, src: &str, arch: &str, dir: Option<&Path>) -> Result<Compiled, String> {
    let (Some(dir), Some(ver)) = (dir, version()) else {
        return compile_source(name, src, arch);
    };
    let key = cache_key(src, arch, COMPILE_OPTIONS, ver);
    let path = dir.join(cache_file_name(name, src, arch, COMPILE_OPTIONS, ver));
    // An entry that cannot be read is a miss (a directory that cannot be written either is
    // reported once, below).
    if let Ok(entry) = std::fs::read(&path) {
        match decode_entry(&entry, key) {
            Ok(cubin) => return Ok(Compiled { cubin: cubin.to_vec(), log: String::new(), from_cache: true }),
            Err(why) => eprintln!("okapi: NVRTC cache entry {} not used ({why}); recompiling", path.display()),
        }
    }
    let compiled = compile_source(name, src, arch)?;
    if let Err(e) = write_entry(dir, &path, &encode_entry(&compiled.cubin, key)) {
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            eprintln!("okapi: NVRTC cache directory {} not writable ({e}); compiling the CUDA kernels without the cache (OKAPI_CUDA_CACHE names another, `off` disables it)", dir.display());
        }
    }
    Ok(compiled)
}

/// Writes `bytes` to `path` (in `dir`) atomically: a temporary file with a name no other writer
/// uses (process id, a counter, the time), renamed over `path`.
fn write_entry(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(dir)?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file}.{}.{}.{nanos}.tmp", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let written = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).and_then(|mut f| f.write_all(bytes)).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_key_is_pinned_and_covers_source_options_arch_and_version() {
        let opts: &[&str] = &["--std=c++17", "--fmad=true", "-lineinfo"];
        let k = cache_key("src", "sm_80", opts, (13, 0));
        // Pinned (the value an independent FNV-1a gives for these fields): the key must not
        // change between builds or Rust versions.
        assert_eq!(format!("{k:016x}"), "98733f29a7f3c6e5");
        let others = [
            cache_key("src ", "sm_80", opts, (13, 0)),
            cache_key("src", "sm_90a", opts, (13, 0)),
            cache_key("src", "sm_80", opts, (13, 1)),
            cache_key("src", "sm_80", opts, (12, 0)),
            cache_key("src", "sm_80", &["--std=c++17", "--fmad=false", "-lineinfo"], (13, 0)),
            cache_key("src", "sm_80", &["--std=c++17", "--fmad=true"], (13, 0)),
            cache_key("src", "sm_80", &[], (13, 0)),
        ];
        for (i, o) in others.iter().enumerate() {
            assert_ne!(*o, k, "variant {i} has the same key");
        }
        // Fields are length-prefixed: moving bytes between fields changes the key.
        assert_ne!(cache_key("s", "rcsm_80", &[], (13, 0)), cache_key("sr", "csm_80", &[], (13, 0)));
        assert_ne!(cache_key("x", "sm_80", &["ab", "c"], (13, 0)), cache_key("x", "sm_80", &["a", "bc"], (13, 0)));
    }

    #[test]
    fn the_file_name_names_family_arch_version_and_key() {
        let n = cache_file_name("rope", "src", "sm_90a", COMPILE_OPTIONS, (13, 2));
        assert_eq!(n, format!("rope-sm_90a-nvrtc13.2-{:016x}.cubin", cache_key("src", "sm_90a", COMPILE_OPTIONS, (13, 2))));
        assert_eq!(n.len(), "rope-sm_90a-nvrtc13.2-".len() + 16 + ".cubin".len());
        assert!(!cache_file_name("../x/y", "src", "sm 80", COMPILE_OPTIONS, (13, 2)).contains(['/', ' ']));
    }

    #[test]
    fn an_entry_round_trips() {
        let cubin: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let e = encode_entry(&cubin, 42);
        assert_eq!(e.len(), CACHE_HEADER_LEN + cubin.len());
        assert_eq!(&e[..8], b"OKAPINVC");
        assert_eq!(decode_entry(&e, 42), Ok(&cubin[..]));
        assert_eq!(decode_entry(&encode_entry(&[], 7), 7), Ok(&[][..]));
    }

    #[test]
    fn every_damaged_entry_is_refused() {
        let cubin: Vec<u8> = (0..300u32).map(|i| (i * 13 % 256) as u8).collect();
        let good = encode_entry(&cubin, 9);
        // every single-byte change, anywhere (header or cubin)
        for i in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut e = good.clone();
                e[i] ^= flip;
                assert!(decode_entry(&e, 9).is_err(), "byte {i} ^ {flip:#x} accepted");
            }
        }
        // every truncation, and trailing bytes
        for n in 0..good.len() {
            assert!(decode_entry(&good[..n], 9).is_err(), "truncated to {n} accepted");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(decode_entry(&long, 9).is_err());
        // another key, garbage, a huge length field
        assert_eq!(decode_entry(&good, 10), Err("made for another key"));
        assert_eq!(decode_entry(&[0xa5; 400], 9), Err("bad magic"));
        let mut huge = good.clone();
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_entry(&huge, 9).is_err());
        let mut v2 = good.clone();
        v2[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(decode_entry(&v2, 9), Err("another format version"));
    }

    #[test]
    fn the_cache_dir_follows_the_environment() {
        let o = |s: &str| Some(OsString::from(s));
        assert_eq!(cache_dir_from(o("/c"), o("/x"), o("/h")), Some(PathBuf::from("/c")));
        assert_eq!(cache_dir_from(o("0"), o("/x"), o("/h")), None);
        assert_eq!(cache_dir_from(o("off"), o("/x"), o("/h")), None);
        assert_eq!(cache_dir_from(o("OFF"), None, None), None);
        assert_eq!(cache_dir_from(o(""), o("/x"), o("/h")), Some(PathBuf::from("/x/okapi/nvrtc")));
        assert_eq!(cache_dir_from(None, o("/x"), o("/h")), Some(PathBuf::from("/x/okapi/nvrtc")));
        assert_eq!(cache_dir_from(None, o("rel"), o("/h")), Some(PathBuf::from("/h/.cache/okapi/nvrtc")));
        assert_eq!(cache_dir_from(None, o(""), o("/h")), Some(PathBuf::from("/h/.cache/okapi/nvrtc")));
        assert_eq!(cache_dir_from(None, None, o("/h")), Some(PathBuf::from("/h/.cache/okapi/nvrtc")));
        assert_eq!(cache_dir_from(None, None, None), None);
        assert_eq!(cache_dir_from(None, None, o("")), None);
    }

    /// Writers of one entry racing each other and readers: a reader sees no entry or a whole one,
    /// and no temporary file is left.
    #[test]
    fn concurrent_writes_never_show_a_partial_entry() {
        let dir = std::env::temp_dir().join(format!("okapi-nvrtc-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("e.cubin");
        let cubin: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let entry = encode_entry(&cubin, 5);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20 {
                        write_entry(&dir, &path, &entry).unwrap();
                    }
                });
            }
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..200 {
                        match std::fs::read(&path) {
                            Ok(e) => assert_eq!(decode_entry(&e, 5), Ok(&cubin[..])),
                            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
                        }
                    }
                });
            }
        });
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, [OsString::from("e.cubin")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_dir_is_an_error_not_a_panic() {
        let base = std::env::temp_dir().join(format!("okapi-nvrtc-unit-ro-{}", std::process::id()));
        std::fs::write(&base, b"a file, not a directory").unwrap();
        let dir = base.join("cache");
        assert!(write_entry(&dir, &dir.join("e.cubin"), b"x").is_err());
        std::fs::remove_file(&base).unwrap();
    }
}
