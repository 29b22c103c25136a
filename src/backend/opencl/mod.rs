//! OpenCL: the backend on a device ([`Ocl`]), when the cargo feature `opencl` is on.
//! Without it the same names exist and say so, so callers need no `cfg`.

#[cfg(feature = "opencl")]
mod device;
#[cfg(feature = "opencl")]
mod imp;
#[cfg(feature = "opencl")]
pub use device::{list_devices, DeviceState};
#[cfg(feature = "opencl")]
pub use imp::Ocl;

pub use super::device::{Device, DeviceSpec};

#[cfg(not(feature = "opencl"))]
mod stub {
    use super::*;
    use crate::error::{Error, Result};

    fn not_built() -> Error {
        Error::Device(
            "this build has no OpenCL support: rebuild with `--features opencl` (README)".into(),
        )
    }

    pub fn list_devices() -> Result<Vec<String>> {
        Err(not_built())
    }

    /// Never made without the feature.
    pub enum Ocl {}

    impl Ocl {
        /// `auto` falls back to the CPU; an explicit `opencl` is an error.
        pub fn open(spec: DeviceSpec) -> Result<Option<Ocl>> {
            match spec.pick {
                Device::Cpu | Device::Auto => Ok(None),
                Device::OpenCl { .. } => Err(not_built()),
            }
        }
    }
}
#[cfg(not(feature = "opencl"))]
pub use stub::{list_devices, Ocl};
