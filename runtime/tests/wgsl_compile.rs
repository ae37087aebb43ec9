//! Every WGSL module of every kernel family (okapi-kernels' `FAMILIES`: each with its prelude
//! and specialisation constants, exactly as the wgpu backend compiles it) parses and validates
//! under naga, wgpu's shader compiler. Needs no adapter: this runs everywhere, and a shader
//! error fails here with naga's report rather than at a user's first run on a GPU.
#![cfg(feature = "wgpu")]

use okapi_kernels::FAMILIES;
use okapi_runtime::wgpu::validate_wgsl;

#[test]
fn every_wgsl_module_validates() {
    let mut failures = Vec::new();
    let mut n = 0;
    for f in FAMILIES {
        assert!(!f.wgsl.is_empty(), "family `{}` has no WGSL module", f.name);
        for (name, src) in f.wgsl {
            n += 1;
            if let Err(e) = validate_wgsl(name, src) {
                failures.push(format!("{}/{e}", f.name));
            }
        }
    }
    eprintln!("wgsl_compile: {n} modules checked");
    assert!(failures.is_empty(), "{} WGSL module(s) fail naga's validation:\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn a_broken_module_is_reported_with_its_name() {
    let e = validate_wgsl("probe", "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5f; }").unwrap_err();
    assert!(e.starts_with("probe.wgsl: "), "{e}");
}
