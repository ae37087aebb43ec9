//! The ops of the wgpu backend, by family: each records the dispatches of a WGSL kernel from
//! okapi-kernels after the shared extent checks (`crate::check` and the shape structs).
//! Semantics are exactly the CPU kernels' (see each kernel in okapi-kernels).

mod attention;
mod matmul;
mod reduce;
mod rows;

/// A size as the kernels' 32-bit index type; sizes past u32 are refused with a clear panic.
pub(super) fn u32_of(x: usize, what: &str) -> u32 {
    u32::try_from(x).unwrap_or_else(|_| panic!("wgpu: {what} = {x} does not fit the kernels' 32-bit indices"))
}

/// The bits of an f32 param word.
pub(super) fn f(v: f32) -> u32 {
    v.to_bits()
}
