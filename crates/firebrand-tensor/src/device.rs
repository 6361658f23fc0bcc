/// Where a tensor's storage lives.
///
/// `Device` is a small `Copy` value, like PyTorch's `torch.device`. Ops run on
/// the device of their inputs; mixing devices in one op is an
/// [`Error::DeviceMismatch`](crate::Error::DeviceMismatch).
///
/// `Device::Wgpu(n)` names the n-th GPU adapter of the optional `firebrand-wgpu`
/// backend. Builds without that backend report it as unavailable instead of
/// silently computing on the CPU.
///
/// ```
/// use firebrand_tensor::Device;
/// assert_eq!(Device::default(), Device::Cpu);
/// assert_eq!(Device::Cpu.to_string(), "cpu");
/// assert_eq!(Device::Wgpu(0).to_string(), "wgpu:0");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Device {
    /// Host memory; kernels from `firebrand-ops`.
    #[default]
    Cpu,
    /// A GPU adapter of the wgpu backend, by ordinal.
    Wgpu(usize),
}

impl Device {
    /// True for [`Device::Cpu`].
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Wgpu(i) => write!(f, "wgpu:{i}"),
        }
    }
}

/// Parses `cpu`, `wgpu` (adapter 0) or `wgpu:N`, the names
/// [`Device`]'s `Display` writes (so `--device wgpu:1` on a command line).
///
/// ```
/// use firebrand_tensor::Device;
/// assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
/// assert_eq!("wgpu".parse::<Device>(), Ok(Device::Wgpu(0)));
/// assert_eq!("wgpu:2".parse::<Device>(), Ok(Device::Wgpu(2)));
/// assert!("cuda".parse::<Device>().unwrap_err().contains("cpu, wgpu or wgpu:N"));
/// ```
impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "wgpu" | "gpu" => Ok(Device::Wgpu(0)),
            other => other
                .strip_prefix("wgpu:")
                .and_then(|n| n.parse().ok())
                .map(Device::Wgpu)
                .ok_or_else(|| format!("unknown device {s:?}: expected cpu, wgpu or wgpu:N")),
        }
    }
}
