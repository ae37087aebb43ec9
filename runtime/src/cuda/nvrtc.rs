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

use cudarc::nvrtc::{result, sys};
use okapi_kernels::{CUDA_PRELUDE, FAMILIES};
use std::ffi::{c_char, CStr};
use std::path::{Path, PathBuf};
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

/// A compiled family: the cubin, and NVRTC's log (empty when clean).
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub log: String,
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

    /// Candidate library files, in order.
    fn candidates(&self) -> Vec<PathBuf> {
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
    if !available() {
        return Err(format!("{family}.cu: NVRTC (libnvrtc.so) not found; install it (pip install nvidia-cuda-nvrtc) or name it with OKAPI_NVRTC_LIB"));
    }
    let src = full_source(family).ok_or_else(|| format!("no CUDA kernel family `{family}`"))?;
    compile_source(family, &src, arch)
}

/// Compiles a CUDA C++ source (`name` labels messages) for `arch` to a cubin, with the options
/// every kernel family gets.
pub fn compile_source(family: &str, src: &str, arch: &str) -> Result<Compiled, String> {
    if !available() {
        return Err(format!("{family}.cu: NVRTC (libnvrtc.so) not found"));
    }
    let opts = [format!("--gpu-architecture={arch}"), "--std=c++17".to_string(), "--fmad=true".to_string(), "-lineinfo".to_string()];
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
                            Ok(()) => Ok(Compiled { cubin, log }),
                        }
                    }
                }
            }
        };
        let _ = result::destroy_program(prog);
        out
    }
}
