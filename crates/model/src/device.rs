//! Dtypes and devices: parsing their names, placing decoder blocks on one or
//! several devices, and making libtorch's CUDA backend available.

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind};

use crate::error::{ModelError, Result};

/// The floating-point type weights and activations are computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    #[must_use]
    pub fn kind(self) -> Kind {
        match self {
            Self::F32 => Kind::Float,
            Self::F16 => Kind::Half,
            Self::Bf16 => Kind::BFloat16,
        }
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dtype {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "float" => Ok(Self::F32),
            "f16" | "float16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(ModelError::InvalidDtype(s.to_owned())),
        }
    }
}

/// Parses `cpu`, `cuda` (device 0) or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    let lower = name.trim().to_ascii_lowercase();
    match lower.as_str() {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => lower
            .strip_prefix("cuda:")
            .and_then(|index| index.parse::<usize>().ok())
            .map(Device::Cuda)
            .ok_or_else(|| ModelError::InvalidDevice(name.to_owned())),
    }
}

/// Returns the usual name of a device (`cpu`, `cuda:0`, ...).
#[must_use]
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(index) => format!("cuda:{index}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
        Device::Cpu => "cpu".into(),
    }
}

/// The device of each decoder block. The embeddings sit with the first block,
/// the final norm and the LM head with the last, and every captured state is
/// gathered on the first device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceMap {
    blocks: Vec<Device>,
}

impl DeviceMap {
    /// Places all `num_layers` blocks on one device.
    #[must_use]
    pub fn single(device: Device, num_layers: usize) -> Self {
        Self {
            blocks: vec![device; num_layers],
        }
    }

    /// Splits `num_layers` consecutive blocks over `devices` in near-equal
    /// runs; the first devices take one block more when the split is uneven.
    pub fn split(devices: &[Device], num_layers: usize) -> Result<Self> {
        if devices.is_empty() {
            return Err(ModelError::Request("the device list is empty".into()));
        }
        let per_device = num_layers / devices.len();
        let extra = num_layers % devices.len();
        let mut blocks = Vec::with_capacity(num_layers);
        for (index, &device) in devices.iter().enumerate() {
            let count = per_device + usize::from(index < extra);
            blocks.extend(std::iter::repeat_n(device, count));
        }
        Ok(Self { blocks })
    }

    /// Uses an explicit device for every block.
    pub fn explicit(blocks: Vec<Device>, num_layers: usize) -> Result<Self> {
        if blocks.len() != num_layers {
            return Err(ModelError::Request(format!(
                "the device map names {} blocks but the model has {num_layers}",
                blocks.len()
            )));
        }
        Ok(Self { blocks })
    }

    #[must_use]
    pub fn block(&self, index: usize) -> Device {
        self.blocks[index]
    }

    /// Returns the device of the embeddings, where captured states are gathered.
    #[must_use]
    pub fn first(&self) -> Device {
        self.blocks.first().copied().unwrap_or(Device::Cpu)
    }

    /// Returns the device of the final norm and the LM head.
    #[must_use]
    pub fn last(&self) -> Device {
        self.blocks.last().copied().unwrap_or(Device::Cpu)
    }

    /// Returns each distinct device once, in block order.
    #[must_use]
    pub fn devices(&self) -> Vec<Device> {
        let mut devices: Vec<Device> = Vec::new();
        for &device in &self.blocks {
            if !devices.contains(&device) {
                devices.push(device);
            }
        }
        devices
    }
}

/// Checks that every device in the map can be used, loading libtorch's CUDA
/// backend first when a CUDA device is named.
pub fn ensure_available(map: &DeviceMap) -> Result<()> {
    for device in map.devices() {
        if let Device::Cuda(index) = device {
            load_cuda_backend();
            if !tch::Cuda::is_available() {
                return Err(ModelError::DeviceUnavailable {
                    device: device_name(device),
                    reason: "libtorch reports no CUDA device; install the CUDA build of torch \
                             (see README) and check nvidia-smi"
                        .into(),
                });
            }
            let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
            if index >= count {
                return Err(ModelError::DeviceUnavailable {
                    device: device_name(device),
                    reason: format!("only {count} CUDA device(s) are visible"),
                });
            }
        }
    }
    Ok(())
}

/// Loads `libtorch_cuda.so` once. The binary links libtorch with
/// `--as-needed`, so the CUDA backend is only registered when the library is
/// loaded explicitly; CPU-only installs do not ship it and stay CPU-only.
fn load_cuda_backend() {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    LOADED.get_or_init(|| {
        let mut candidates = vec!["libtorch_cuda.so".to_owned()];
        if let Some(dir) = option_env!("IHS_LIBTORCH_LIB") {
            candidates.insert(0, format!("{dir}/libtorch_cuda.so"));
        }
        for candidate in candidates {
            // SAFETY: libtorch_cuda.so only registers the CUDA backend with the
            // libtorch that is already loaded; it is never unloaded.
            #[allow(unsafe_code)]
            let library = unsafe { libloading::Library::new(&candidate) };
            match library {
                Ok(library) => {
                    std::mem::forget(library);
                    tracing::debug!(library = %candidate, "loaded the libtorch CUDA backend");
                    return true;
                }
                Err(error) => {
                    tracing::debug!(library = %candidate, %error, "could not load the libtorch CUDA backend");
                }
            }
        }
        false
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_device_names() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device("cuda").unwrap(), Device::Cuda(0));
        assert_eq!(parse_device("CUDA:3").unwrap(), Device::Cuda(3));
        assert!(parse_device("cuda:x").is_err());
        assert!(parse_device("tpu").is_err());
    }

    #[test]
    fn parse_dtype_names() {
        assert_eq!("bfloat16".parse::<Dtype>().unwrap(), Dtype::Bf16);
        assert_eq!("f16".parse::<Dtype>().unwrap(), Dtype::F16);
        let message = "f8".parse::<Dtype>().unwrap_err().to_string();
        assert!(message.contains("\"f8\""), "{message}");
    }

    #[test]
    fn split_gives_extra_blocks_to_first_devices() {
        let map =
            DeviceMap::split(&[Device::Cuda(0), Device::Cuda(1), Device::Cuda(2)], 8).unwrap();
        let counts: Vec<usize> = (0..3)
            .map(|d| (0..8).filter(|&b| map.block(b) == Device::Cuda(d)).count())
            .collect();
        assert_eq!(counts, vec![3, 3, 2]);
        assert_eq!(map.first(), Device::Cuda(0));
        assert_eq!(map.last(), Device::Cuda(2));
    }
}
