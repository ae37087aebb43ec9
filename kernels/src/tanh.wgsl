// tanh(x) as the CPU's vmath::tanh (Cephes' tanhf), prepended to the modules that soft-cap: an
// odd polynomial of |x| below 0.625 (a soft-cap c·tanh(s/c) must stay ≈ s for small s, where
// 1 − 2/(e^{2x} + 1) cancels), that form above (saturating to ±1 without NaN), then x's sign.
// Not WGSL's builtin tanh: its precision is the driver's, and some overflow to NaN at large |x|.
fn okapi_tanh(x: f32) -> f32 {
    let a = abs(x);
    let z = a * a;
    let small = ((((-5.7049887e-3 * z + 2.063909e-2) * z - 5.3739716e-2) * z + 1.3331442e-1) * z - 3.333328e-1) * z * a + a;
    let big = 1.0 - 2.0 / (exp(2.0 * a) + 1.0);
    // |tanh| >= 0: x's sign bit ORed in (WGSL has no copysign; −0 stays −0)
    return bitcast<f32>(bitcast<u32>(select(big, small, a < 0.625)) | (bitcast<u32>(x) & 0x80000000u));
}
