//! `--device`: the one place where ember picks a Burn backend.
//!
//! Library crates take a `Device`; which backends exist is decided here by cargo features
//! (`flex` default, `ndarray`, `wgpu`, `cuda`). Asking for a backend that was not compiled in is
//! a one-line error naming the feature to enable.

use anyhow::{Result, bail};
use burn::prelude::Device;

/// Backends this binary was built with, for `--help` and `ember info`.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut names = Vec::new();
    if cfg!(feature = "flex") {
        names.push("flex");
    }
    if cfg!(feature = "ndarray") {
        names.push("ndarray");
    }
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    names
}

fn not_compiled(spec: &str, feature: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "device `{spec}` needs the `{feature}` backend, which this ember was built without; \
         rebuild with `cargo build --release -p ember-cli --features {feature}` \
         (compiled in: {})",
        compiled_backends().join(", ")
    )
}

/// Parses `cpu | flex | ndarray | wgpu[:N] | cuda[:N]` into a device.
///
/// `cpu` is the pure-Rust `flex` backend (or `ndarray` when only that one is compiled in).
/// `wgpu:N` selects the N-th discrete GPU, plain `wgpu` the adapter wgpu prefers.
pub fn parse_device(spec: &str) -> Result<Device> {
    parse_device_spec(spec).map_err(|e| {
        // A value nobody typed on this command line came from the environment: say so.
        let typed = std::env::args().any(|a| a == "--device" || a.starts_with("--device="));
        match !typed && std::env::var("EMBER_DEVICE").is_ok_and(|v| v == spec) {
            true => e.context("EMBER_DEVICE"),
            false => e,
        }
    })
}

fn parse_device_spec(spec: &str) -> Result<Device> {
    let (kind, index) = match spec.split_once(':') {
        Some((kind, index)) => {
            let Ok(index) = index.parse::<usize>() else {
                bail!("device `{spec}`: `{index}` is not a device index (expected e.g. cuda:0)");
            };
            (kind, Some(index))
        }
        None => (spec, None),
    };
    if index.is_some() && !is_gpu_spec(kind) {
        bail!("device `{spec}`: only wgpu and cuda take an index");
    }
    match kind {
        "cpu" | "flex" => {
            #[cfg(feature = "flex")]
            return Ok(Device::flex());
            #[cfg(all(not(feature = "flex"), feature = "ndarray"))]
            if kind == "cpu" {
                #[allow(deprecated)]
                return Ok(Device::ndarray());
            }
            #[allow(unreachable_code)]
            Err(not_compiled(spec, "flex"))
        }
        "ndarray" => {
            #[cfg(feature = "ndarray")]
            {
                #[allow(deprecated)]
                return Ok(Device::ndarray());
            }
            #[allow(unreachable_code)]
            Err(not_compiled(spec, "ndarray"))
        }
        "wgpu" => {
            #[cfg(feature = "wgpu")]
            {
                use burn::tensor::DeviceKind;
                let kind = index.map_or(DeviceKind::DefaultDevice, DeviceKind::DiscreteGpu);
                let device = Device::wgpu(kind);
                ensure_usable(spec, &device)?;
                return Ok(device);
            }
            #[allow(unreachable_code)]
            Err(not_compiled(spec, "wgpu"))
        }
        "cuda" => {
            #[cfg(feature = "cuda")]
            {
                let device = Device::cuda(index.unwrap_or(0));
                ensure_usable(spec, &device)?;
                return Ok(device);
            }
            #[allow(unreachable_code)]
            Err(not_compiled(spec, "cuda"))
        }
        _ => bail!("unknown device `{spec}`: expected cpu, flex, ndarray, wgpu[:N] or cuda[:N]"),
    }
}

/// Whether `spec` (as `--device` takes it) names a GPU backend: `wgpu[:N]` or `cuda[:N]`.
pub fn is_gpu_spec(spec: &str) -> bool {
    let kind = spec.split_once(':').map_or(spec, |(kind, _)| kind);
    matches!(kind, "wgpu" | "cuda")
}

/// Runs one tiny operation on a GPU device, so that a machine without a usable adapter or driver
/// gets a one-line error here instead of a panic trace from the backend's device thread at the
/// first tensor (Burn initialises GPU devices lazily and panics when it cannot).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn ensure_usable(spec: &str, device: &Device) -> Result<()> {
    use std::panic::{AssertUnwindSafe, catch_unwind, set_hook, take_hook};
    use std::sync::{Arc, Mutex};
    // The panic hook is process-wide: one probe at a time, so that each puts back the hook it
    // found. (A panic elsewhere during the probe is silenced; ember probes before other work.)
    static PROBING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = PROBING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let first_panic = Arc::new(Mutex::new(None::<String>));
    let seen = Arc::clone(&first_panic);
    let previous = take_hook();
    set_hook(Box::new(move |info| {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        if let Ok(mut first) = seen.lock() {
            first.get_or_insert(text);
        }
    }));
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let _ = burn::tensor::Tensor::<1>::zeros([1], device).into_data();
    }));
    set_hook(previous);
    if outcome.is_ok() {
        warn_if_software(spec, device);
        return Ok(());
    }
    let why = first_panic
        .lock()
        .ok()
        .and_then(|mut first| first.take())
        .unwrap_or_default();
    let why = why.lines().next().unwrap_or("initialisation failed");
    bail!(
        "device `{spec}` is not usable: {why} (a GPU, its driver and, for wgpu on Linux, the Vulkan loader libvulkan1 are needed; `--device cpu` runs anywhere)"
    )
}

/// The adapter behind a GPU device, as the driver names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adapter {
    /// E.g. `NVIDIA H200` or `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// A software renderer (Mesa's llvmpipe or lavapipe, SwiftShader, WARP): no GPU card, the
    /// "GPU" work runs on the CPU.
    pub software: bool,
}

impl std::fmt::Display for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)?;
        if self.software {
            write!(f, ", a software renderer on the CPU")?;
        }
        Ok(())
    }
}

/// The adapter `device` runs on: `None` on the CPU backends, which have none. Why ask: with no
/// GPU driver, wgpu quietly falls back to a software renderer such as Mesa's llvmpipe (through
/// OpenGL when there is no Vulkan), and `--device wgpu` then runs, on the CPU, many times
/// slower than `--device cpu`.
pub fn adapter(device: &Device) -> Option<Adapter> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    {
        device.identity().map(|identity| Adapter {
            name: identity.name,
            software: identity.physical.is_none(),
        })
    }
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    {
        let _ = device;
        None
    }
}

/// `spec` with the adapter's name for GPU devices (`wgpu on NVIDIA H200`), for bench reports.
pub fn describe(spec: &str, device: &Device) -> String {
    match adapter(device) {
        Some(adapter) => format!("{spec} on {adapter}"),
        None => spec.to_string(),
    }
}

/// Says once per process when a GPU device turned out to be a software renderer.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn warn_if_software(spec: &str, device: &Device) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Some(adapter) = adapter(device)
        && adapter.software
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        eprintln!(
            "warning: device `{spec}` is `{}`, a software renderer: it runs on the CPU, far \
             slower than `--device cpu`. No GPU driver was found (for wgpu on Linux: the GPU's \
             Vulkan driver and the loader libvulkan1)",
            adapter.name
        );
    }
}

/// Threads ember's CPU backends use: rayon's pool (RAYON_NUM_THREADS, else every core).
pub fn cpu_threads() -> usize {
    rayon::current_num_threads()
}

/// Whether `device` is one of the CPU backends, which compute each op as it is called.
pub fn is_cpu(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    if *device == Device::flex() {
        return true;
    }
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)]
    if *device == Device::ndarray() {
        return true;
    }
    let _ = device;
    false
}

/// Threads a decoding step splits its matrix products over on `device` (see
/// `ember_model::layers::linear_split`): every CPU thread on the CPU backends, 1 on GPUs, whose
/// backends parallelise a product themselves.
pub fn decode_threads(device: &Device) -> usize {
    if is_cpu(device) { cpu_threads() } else { 1 }
}

/// Greedy decoding steps between reads of the chosen tokens (`GenerateOptions::read_every`):
/// 1 on the CPU backends, where nothing waits in a queue; 8 on GPUs, where a read waits for
/// every queued kernel to finish and then for the copy back, so reading once per token would
/// leave the GPU idle while the host prepares the next step. Streamed text then arrives 8
/// tokens at a time.
pub fn decode_read_every(device: &Device) -> usize {
    if is_cpu(device) { 1 } else { 8 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert!(parse_device("cpu").is_ok());
        let err = parse_device("tpu").unwrap_err().to_string();
        assert!(err.contains("unknown device `tpu`"), "{err}");
        assert!(parse_device("cuda:x").is_err());
        assert!(parse_device("cpu:1").is_err());
        assert!(is_gpu_spec("wgpu") && is_gpu_spec("cuda:1"));
        assert!(!is_gpu_spec("cpu") && !is_gpu_spec("flex") && !is_gpu_spec("wgpux"));
        #[cfg(not(feature = "cuda"))]
        {
            let err = parse_device("cuda:0").unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }

    #[test]
    fn cpu_devices_have_no_adapter() {
        let cpu = parse_device("cpu").unwrap();
        assert_eq!(adapter(&cpu), None);
        assert_eq!(describe("cpu", &cpu), "cpu");
        let software = Adapter {
            name: "llvmpipe (LLVM 15.0.6, 256 bits)".into(),
            software: true,
        };
        assert_eq!(
            software.to_string(),
            "llvmpipe (LLVM 15.0.6, 256 bits), a software renderer on the CPU"
        );
    }
}
