//! Where to run: the parsed `--device`, which [`crate::model`] opens a backend for.

/// Where to run: `cpu`, `opencl[:PLATFORM[:DEVICE]]` or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    OpenCl {
        platform: Option<usize>,
        device: Option<usize>,
    },
    /// A GPU when one is found, else the CPU.
    Auto,
}

/// A parsed `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSpec {
    pub pick: Device,
}

impl DeviceSpec {
    /// The CPU.
    pub const CPU: DeviceSpec = DeviceSpec { pick: Device::Cpu };
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<DeviceSpec, String> {
        let num = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("`{v}` is not a platform or device number"))
        };
        let pick = match s.split(':').collect::<Vec<_>>()[..] {
            ["cpu"] => Device::Cpu,
            ["auto"] => Device::Auto,
            ["opencl"] => Device::OpenCl {
                platform: None,
                device: None,
            },
            ["opencl", p] => Device::OpenCl {
                platform: Some(num(p)?),
                device: None,
            },
            ["opencl", p, d] => Device::OpenCl {
                platform: Some(num(p)?),
                device: Some(num(d)?),
            },
            _ => {
                return Err(format!(
                    "`{s}` is not cpu, auto or opencl[:PLATFORM[:DEVICE]]"
                ))
            }
        };
        Ok(DeviceSpec { pick })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse() {
        let p = |s: &str| s.parse::<DeviceSpec>().map(|d| d.pick);
        assert_eq!(p("cpu"), Ok(Device::Cpu));
        assert_eq!(p("auto"), Ok(Device::Auto));
        assert_eq!(
            p("opencl"),
            Ok(Device::OpenCl {
                platform: None,
                device: None
            })
        );
        assert_eq!(
            p("opencl:1:2"),
            Ok(Device::OpenCl {
                platform: Some(1),
                device: Some(2)
            })
        );
        assert!(p("opencl:x").is_err());
        assert!(p("gpu").is_err());
    }
}
