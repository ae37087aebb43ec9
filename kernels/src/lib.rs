//! okapi-kernels: every op of okapi, one folder per op family. Each folder holds the op's CPU
//! kernel (`mod.rs`, plain Rust on slices — the numeric reference) beside its CUDA (`<op>.cu`) and
//! WGSL (`<op>.wgsl`) sources, and the module exports those sources and the launch constants
//! their host code needs ([`Family`], [`FAMILIES`]). The GPU backends in `okapi-runtime` compile
//! what this crate exports; they never read kernel files themselves.
//!
//! Conventions (llm.c style):
//! - plain row-major `f32` slices; shapes are written in comments as `(B,T,C)`;
//! - outputs are explicit arguments; a backward kernel documents for each gradient whether it
//!   overwrites (`=`) or accumulates (`+=`). Parameter gradients always accumulate, so gradient
//!   accumulation over micro-batches and tied weights need no extra code;
//! - every reduction whose result feeds a gradient runs in a fixed order (fixed chunks, summed
//!   in order), so a CPU training run is bit-reproducible whatever the thread scheduling.
//!
//! ```
//! use okapi_kernels::softmax::softmax_fwd;
//! // two rows of three logits
//! let x = [1.0f32, 2.0, 3.0, 0.0, 0.0, 0.0];
//! let mut p = [0.0f32; 6];
//! softmax_fwd(&mut p, &x, 3, 1.0);
//! assert!((p[3] - 1.0 / 3.0).abs() < 1e-7);
//! assert!((p[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
//! ```

// Launch constants shared by Rust and WGSL, written once: as literals here (for `concat!` in
// `wgsl_row_module!`) and as the Rust constants `WGSL_WG` and `ROW_CHUNK` below.
macro_rules! wgsl_wg {
    () => {
        256
    };
}
macro_rules! row_chunk {
    () => {
        32
    };
}
pub(crate) use row_chunk;

/// A WGSL row kernel of a family folder: `const WG` and `const ROW_CHUNK` (the Rust constants'
/// values), the shared row prelude (`row_prelude.wgsl`: the per-row reductions), then the
/// family's file. Invoked from `src/<family>/mod.rs`; paths are relative to that file.
macro_rules! wgsl_row_module {
    ($file:literal) => {
        concat!(
            "const WG: u32 = ",
            $crate::wgsl_wg!(),
            "u;\nconst ROW_CHUNK: u32 = ",
            $crate::row_chunk!(),
            "u;\n",
            include_str!("../row_prelude.wgsl"),
            "\n",
            include_str!($file)
        )
    };
}
pub(crate) use wgsl_row_module;
pub(crate) use wgsl_wg;

pub mod activation;
pub mod adamw;
pub mod attention;
pub mod embedding;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod rope;
pub mod shapes;
pub mod softmax;
pub mod xent;

mod par;
pub mod vmath;

pub use shapes::{KvShape, NormShape, RopeShape, Rows};

/// Target id that marks a position without loss (HF's `-100`).
pub const IGNORE_INDEX: u32 = u32::MAX;

/// Rows per chunk of every deterministic column sum (bias and norm-weight gradients): the CPU
/// sums each chunk's rows in order, then the chunks in order. The wgpu kernels use the same
/// chunks, which makes their column sums bit-equal to the CPU's.
pub const ROW_CHUNK: usize = par::ROW_CHUNK;

/// Threads per workgroup of the WGSL row kernels (softmax, cross-entropy, norms: one workgroup
/// per row) and of the element-wise WGSL kernels.
pub const WGSL_WG: usize = wgsl_wg!();

/// The header NVRTC compiles in front of every family's `.cu` (integer types, bf16 helpers,
/// warp and block reductions).
pub const CUDA_PRELUDE: &str = include_str!("cuda_prelude.cuh");

/// The largest grid.y and grid.z a CUDA launch may have. Kernels whose rows, tiles, heads or
/// batches sit in y or z stride over the ones past this, so the host clamps those dimensions to it.
pub const CUDA_GRID_YZ_MAX: usize = 65_535;

/// Words of the device error buffer the id-indexing CUDA kernels report through (the prelude's
/// `okapi_report`): set flag, what failed, the bad id, its row (low, high), the bound.
pub const CUDA_ERR_WORDS: usize = 6;

/// What failed, by the code the prelude's `OKAPI_ERR_*` writes: (kernel, what the id is, what
/// bounds it).
pub fn cuda_error_kind(code: u32) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match code {
        1 => ("embedding_fwd", "token id", "the embedding table's rows"),
        2 => ("xent_fwd_bwd", "target id", "the vocabulary"),
        3 => ("token_logprobs", "target id", "the vocabulary"),
        4 => ("token_logprobs_bwd", "target id", "the vocabulary"),
        _ => return None,
    })
}

/// The GPU sources of one op family, kept beside its CPU kernel.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    /// Folder and module name: `matmul`, `attention`, …
    pub name: &'static str,
    /// The family's CUDA C++ source (`<name>.cu`); NVRTC compiles [`CUDA_PRELUDE`] followed by it.
    pub cuda: &'static str,
    /// The `extern "C" __global__` entry points of `cuda`: what a CUDA backend may launch.
    pub cuda_kernels: &'static [&'static str],
    /// The family's WGSL modules as `(name, source)`, each complete (shared prelude and
    /// constants included) and ready for `create_shader_module`.
    pub wgsl: &'static [(&'static str, &'static str)],
}

/// Every op family: the one list the GPU backends, the compile checks and the CUDA emulator
/// read. Adding a family = a folder with `mod.rs` exporting `FAMILY`, and one line here.
pub const FAMILIES: &[Family] = &[
    matmul::FAMILY,
    attention::FAMILY,
    norm::FAMILY,
    rope::FAMILY,
    activation::FAMILY,
    softmax::FAMILY,
    xent::FAMILY,
    adamw::FAMILY,
    reduce::FAMILY,
    embedding::FAMILY,
];

/// The family that defines the CUDA entry point `kernel`.
pub fn cuda_family_of(kernel: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.cuda_kernels.contains(&kernel))
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_prelude_constants_match_the_rust_ones() {
        for (name, src) in [("softmax", softmax::WGSL), ("xent", xent::WGSL), ("norm", norm::WGSL)] {
            assert!(src.starts_with(&format!("const WG: u32 = {WGSL_WG}u;\nconst ROW_CHUNK: u32 = {ROW_CHUNK}u;\n")), "{name}.wgsl prelude");
        }
    }

    #[test]
    fn every_cuda_kernel_is_defined_in_its_family_source() {
        for f in FAMILIES {
            assert!(!f.cuda_kernels.is_empty(), "{}: no CUDA entry points listed", f.name);
            for k in f.cuda_kernels {
                assert!(
                    f.cuda.contains(&format!("void {k}(")) || f.cuda.contains(&format!(") {k}(")),
                    "`{k}` is not defined (extern \"C\" __global__) in {}/{}.cu",
                    f.name,
                    f.name
                );
            }
        }
    }

    #[test]
    fn every_cuda_entry_point_is_listed() {
        for f in FAMILIES {
            for line in f.cuda.lines().filter(|l| l.contains("extern \"C\" __global__")) {
                // `extern "C" __global__ void [__launch_bounds__(N)] name(`
                let head = match line.find("__launch_bounds__") {
                    Some(i) => &line[i + line[i..].find(')').unwrap() + 1..],
                    None => line,
                };
                let name = head.split('(').next().unwrap().split_whitespace().last().unwrap();
                assert!(f.cuda_kernels.contains(&name), "{}/{}.cu defines `{name}` but FAMILY.cuda_kernels does not list it", f.name, f.name);
            }
        }
    }

    #[test]
    fn family_names_are_unique_and_kernels_resolve() {
        for (i, f) in FAMILIES.iter().enumerate() {
            assert!(FAMILIES[..i].iter().all(|g| g.name != f.name), "family `{}` listed twice", f.name);
            for k in f.cuda_kernels {
                assert_eq!(cuda_family_of(k).unwrap().name, f.name, "`{k}` is defined in two families");
            }
        }
    }

    #[test]
    fn cuda_error_codes_match_the_prelude_and_the_reporting_kernels() {
        let define = |name: &str| -> u32 {
            let line = CUDA_PRELUDE.lines().find(|l| l.starts_with(&format!("#define {name} "))).unwrap_or_else(|| panic!("prelude lacks {name}"));
            line.split_whitespace().nth(2).unwrap().parse().unwrap()
        };
        assert_eq!(define("OKAPI_ERR_WORDS") as usize, CUDA_ERR_WORDS);
        let codes: Vec<&str> = CUDA_PRELUDE.lines().filter_map(|l| l.strip_prefix("#define OKAPI_ERR_")).map(|l| l.split_whitespace().next().unwrap()).filter(|n| *n != "WORDS").collect();
        assert_eq!(codes.len(), 4);
        for name in codes {
            let code = define(&format!("OKAPI_ERR_{name}"));
            let (kernel, _, _) = cuda_error_kind(code).unwrap_or_else(|| panic!("cuda_error_kind does not know OKAPI_ERR_{name} = {code}"));
            // the kernel cuda_error_kind names is the one that reports this code
            let family = cuda_family_of(kernel).unwrap();
            let start = family.cuda.find(&format!("void {kernel}(")).unwrap();
            let body = &family.cuda[start..];
            let body = &body[..body.find("\n}\n").unwrap()];
            assert!(body.contains(&format!("OKAPI_ERR_{name}")), "`{kernel}` does not report OKAPI_ERR_{name}");
        }
    }
}
