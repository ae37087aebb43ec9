//! The pipeline cache: one compute pipeline per kernel key (a WGSL module from okapi-kernels
//! and its entry point), built on first use with the layout derived from the shader.

use super::{lock, WgpuBackend};
use std::sync::Arc;

pub(crate) struct Kernel {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
    /// Which of bindings 0..N the entry point uses (auto layouts hold only those).
    pub(crate) used: Vec<bool>,
}

impl WgpuBackend {
    /// The cached pipeline of `key`, compiled from `source` / `entry` on first use. A shader
    /// that does not compile or validate panics with "wgpu kernel `<key>`: <error>".
    pub(crate) fn kernel(&self, key: &'static str, source: &'static str, entry: &'static str) -> Arc<Kernel> {
        if let Some(k) = lock(&self.ctx.kernels).get(key) {
            return k.clone();
        }
        let used = used_bindings(key, source, entry);
        let device = &self.ctx.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(key), source: wgpu::ShaderSource::Wgsl(source.into()) });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(key),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        let layout = pipeline.get_bind_group_layout(0);
        if let Some(e) = pollster::block_on(scope.pop()) {
            self.fail(format!("wgpu kernel `{key}`: {e}"));
        }
        let k = Arc::new(Kernel { pipeline, layout, used });
        lock(&self.ctx.kernels).insert(key, k.clone());
        k
    }
}

/// Which bindings of group 0 `entry` uses (auto layouts contain only those). Empty when the
/// source does not validate here: wgpu then reports the error, naming the kernel.
fn used_bindings(key: &str, source: &str, entry: &str) -> Vec<bool> {
    use wgpu::naga;
    let module = match naga::front::wgsl::parse_str(source) {
        Ok(m) => m,
        Err(e) => panic!("wgpu kernel `{key}`: {}", e.emit_to_string(source)),
    };
    let Some(ep) = module.entry_points.iter().position(|e| e.name == entry) else {
        panic!("wgpu kernel `{key}`: the shader has no entry point `{entry}`");
    };
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
    let Ok(info) = validator.validate(&module) else { return Vec::new() };
    let fi = info.get_entry_point(ep);
    let mut used = Vec::new();
    for (h, gv) in module.global_variables.iter() {
        if let Some(b) = &gv.binding {
            if b.group == 0 {
                let i = b.binding as usize;
                if used.len() <= i {
                    used.resize(i + 1, false);
                }
                if !fi[h].is_empty() {
                    used[i] = true;
                }
            }
        }
    }
    used
}

/// Parses and validates a WGSL module with naga (no device needed): the compile check of
/// every kernel in okapi-kernels. The error names the module and carries naga's report.
pub fn validate_wgsl(name: &str, source: &str) -> Result<(), String> {
    use wgpu::naga;
    let module = naga::front::wgsl::parse_str(source).map_err(|e| format!("{name}.wgsl: {}", e.emit_to_string(source)))?;
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
    validator.validate(&module).map_err(|e| format!("{name}.wgsl: {}", e.emit_to_string(source)))?;
    Ok(())
}
