//! NVRTC: the CUDA C++ sources of every kernel family (embedded from `kernels/src/<op>/<op>.cu`,
//! each prefixed with `kernels/src/cuda_prelude.cuh`) and their compilation to a cubin for one
//! GPU architecture. Used by the backend at first use of a family, and by the compile test that
//! CI runs without a GPU (`runtime/tests/cuda_compile.rs`).
//!
//! Finding NVRTC: cudarc's loader `dlopen`s `libnvrtc.so.13` (and older names) from the
//! default search path. When `OKAPI_NVRTC_LIB` names a library file, or NVRTC is installed
//! from PyPI (`pip install nvidia-cuda-nvrtc`: `site-packages/nvidia/cu13/lib`), that file is
//! opened first by its absolute path, so the loader's later `dlopen` by soname finds it already
//! loaded — no `LD_LIBRARY_PATH` needed.

use cudarc::nvrtc::{result, sys};
use std::ffi::{c_char, CStr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const PRELUDE: &str = include_str!("../../../kernels/src/cuda_prelude.cuh");

/// (family, source) of every kernel family, one `.cu` beside each CPU kernel.
pub const SOURCES: &[(&str, &str)] = &[
    ("matmul", include_str!("../../../kernels/src/matmul/matmul.cu")),
    ("attention", include_str!("../../../kernels/src/attention/attention.cu")),
    ("norm", include_str!("../../../kernels/src/norm/norm.cu")),
    ("rope", include_str!("../../../kernels/src/rope/rope.cu")),
    ("activation", include_str!("../../../kernels/src/activation/activation.cu")),
    ("softmax", include_str!("../../../kernels/src/softmax/softmax.cu")),
    ("xent", include_str!("../../../kernels/src/xent/xent.cu")),
    ("adamw", include_str!("../../../kernels/src/adamw/adamw.cu")),
    ("reduce", include_str!("../../../kernels/src/reduce/reduce.cu")),
    ("embedding", include_str!("../../../kernels/src/embedding/embedding.cu")),
];

/// The full source NVRTC compiles for a family: the prelude, then the family's `.cu`.
pub fn full_source(family: &str) -> Option<String> {
    SOURCES.iter().find(|(f, _)| *f == family).map(|(f, src)| format!("{PRELUDE}\n#line 1 \"{f}.cu\"\n{src}"))
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

/// Candidate NVRTC library files beside the ones on the default search path: `OKAPI_NVRTC_LIB`,
/// then PyPI installs under the user's and the interpreters' site-packages.
fn candidate_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("OKAPI_NVRTC_LIB") {
        out.push(PathBuf::from(p));
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(Path::new(&home).join(".local/lib"));
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        roots.push(Path::new(&venv).join("lib"));
    }
    for r in ["/usr/local/lib", "/usr/lib", "/opt/conda/lib"] {
        roots.push(PathBuf::from(r));
    }
    if let Some(pyenv) = std::env::var_os("PYENV_ROOT").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv"))) {
        if let Ok(rd) = std::fs::read_dir(pyenv.join("versions")) {
            for e in rd.flatten() {
                roots.push(e.path().join("lib"));
            }
        }
    }
    for root in roots {
        let Ok(rd) = std::fs::read_dir(&root) else { continue };
        for py in rd.flatten() {
            if !py.file_name().to_string_lossy().starts_with("python") {
                continue;
            }
            for sp in ["site-packages", "dist-packages"] {
                for sub in ["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"] {
                    let dir = py.path().join(sp).join(sub);
                    for name in ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"] {
                        let f = dir.join(name);
                        if f.exists() {
                            out.push(f);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Whether NVRTC can be loaded (after opening a PyPI / `OKAPI_NVRTC_LIB` copy if the default
/// search path has none). The first call decides; later calls return the same answer.
pub fn available() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        // SAFETY: loading NVRTC runs its initialisers only; the handle is kept for the process.
        unsafe {
            if let Some(f) = candidate_files().into_iter().next() {
                if let Ok(lib) = libloading::Library::new(&f) {
                    std::mem::forget(lib);
                }
            }
            sys::is_culib_present()
        }
    })
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
        return Err(format!("{family}.cu: NVRTC (libnvrtc.so) not found; install it (pip install nvidia-cuda-nvrtc) or set OKAPI_NVRTC_LIB"));
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
