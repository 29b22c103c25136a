//! One OpenCL device: its queue, the kernels of `kernels/*.cl` compiled once, buffers, and
//! every launch and transfer counted.

use crate::backend::{DeviceData, StepCode};
use crate::error::{Error, Result};
use ocl::{Buffer, Context, Kernel, Platform, Program, Queue};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Weight formats as the kernels number them: the program is compiled with a `#define`
/// for each ([`Fmt::name`]), so these are the only numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Fmt {
    F32,
    F16,
    Bf16,
    Q8,
    Nf4,
}

impl Fmt {
    const ALL: [Fmt; 5] = [Fmt::F32, Fmt::F16, Fmt::Bf16, Fmt::Q8, Fmt::Nf4];

    fn name(self) -> &'static str {
        match self {
            Fmt::F32 => "F_F32",
            Fmt::F16 => "F_F16",
            Fmt::Bf16 => "F_BF16",
            Fmt::Q8 => "F_Q8",
            Fmt::Nf4 => "F_NF4",
        }
    }
}

/// The numbers the kernels share with Rust, as `#define`s: the weight formats and the
/// steps after a product ([`StepCode`]).
fn defines() -> String {
    let steps = StepCode::ALL.iter().map(|s| (s.name(), *s as i32));
    let formats = Fmt::ALL.iter().map(|f| (f.name(), *f as i32));
    let lines = formats
        .chain(steps)
        .map(|(n, v)| format!("#define {n} {v}\n"));
    lines.collect()
}

/// The kernel sources, in the order they are compiled as one program (formats.cl first:
/// the others use its helpers), after [`defines`].
const SOURCES: [&str; 8] = [
    include_str!("../../../kernels/formats.cl"),
    include_str!("../../../kernels/norm.cl"),
    include_str!("../../../kernels/products.cl"),
    include_str!("../../../kernels/lora.cl"),
    include_str!("../../../kernels/wkv6.cl"),
    include_str!("../../../kernels/wkv7.cl"),
    include_str!("../../../kernels/rows.cl"),
    include_str!("../../../kernels/wkv4.cl"),
];

/// An `ocl` error (a framed, multi-line report) as one line.
pub fn cl(e: impl std::fmt::Display) -> Error {
    let text = e.to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("Please visit"))
        .filter(|l| !l.starts_with("http"))
        .collect();
    Error::Device(format!("OpenCL: {}", lines.join(" ")))
}

/// Held while platforms and devices are listed and opened: PoCL's first device query is not
/// thread-safe.
static DISCOVERY: Mutex<()> = Mutex::new(());

pub fn discovery() -> MutexGuard<'static, ()> {
    DISCOVERY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every platform and device this machine offers, one line each.
pub fn list_devices() -> Result<Vec<String>> {
    let _serial = discovery();
    let mut out = Vec::new();
    for (p, plat) in Platform::list().into_iter().enumerate() {
        let pname = plat.name().map_err(cl)?;
        for (d, dev) in ocl::Device::list_all(plat)
            .map_err(cl)?
            .into_iter()
            .enumerate()
        {
            let dname = dev.name().map_err(cl)?;
            out.push(format!("opencl:{p}:{d}  {dname}  ({pname})"));
        }
    }
    Ok(out)
}

pub use crate::backend::Counters;

/// A kernel argument.
pub enum Arg<'a> {
    F(&'a Buffer<f32>),
    U(&'a Buffer<u8>),
    I(&'a Buffer<i32>),
    Int(i32),
    Real(f32),
}

/// An opened device.
pub struct Device {
    pub name: String,
    queue: Queue,
    program: Program,
    /// Kernel objects made on first use; each launch sets its arguments and enqueues under
    /// the lock, so threads sharing the device do not mix their arguments.
    kernels: Mutex<HashMap<&'static str, Kernel>>,
    /// Uploaded launch descriptors, by content: the same shapes reuse them.
    descs: Mutex<HashMap<Vec<i32>, Buffer<i32>>>,
    /// Stand-ins for absent buffer arguments.
    pub none_f: Buffer<f32>,
    pub none_u: Buffer<u8>,
    launches: AtomicU64,
    uploads: AtomicU64,
    downloads: AtomicU64,
}

/// Descriptors kept at most; past it the cache starts afresh.
const MAX_DESCS: usize = 4096;

impl Device {
    pub fn open(plat: Platform, dev: ocl::Device) -> Result<Arc<Device>> {
        let name = dev.name().map_err(cl)?;
        let context = Context::builder()
            .platform(plat)
            .devices(dev)
            .build()
            .map_err(cl)?;
        let queue = Queue::new(&context, dev, None).map_err(cl)?;
        let program = Program::builder()
            .src(defines() + &SOURCES.concat())
            .devices(dev)
            .build(&context)
            .map_err(|e| Error::Device(format!("OpenCL kernels did not build on {name}: {e}")))?;
        let one = |q: &Queue| Buffer::<f32>::builder().queue(q.clone()).len(1).build();
        let none_f = one(&queue).map_err(cl)?;
        let none_u = Buffer::<u8>::builder()
            .queue(queue.clone())
            .len(1)
            .build()
            .map_err(cl)?;
        Ok(Arc::new(Device {
            name,
            queue,
            program,
            kernels: Default::default(),
            descs: Default::default(),
            none_f,
            none_u,
            launches: AtomicU64::new(0),
            uploads: AtomicU64::new(0),
            downloads: AtomicU64::new(0),
        }))
    }

    pub fn counters(&self) -> Counters {
        Counters {
            launches: self.launches.load(Ordering::Relaxed),
            uploads: self.uploads.load(Ordering::Relaxed),
            downloads: self.downloads.load(Ordering::Relaxed),
        }
    }

    /// A new buffer of `n` floats, not initialised.
    pub fn alloc(&self, n: usize) -> Result<Buffer<f32>> {
        Buffer::<f32>::builder()
            .queue(self.queue.clone())
            .len(n.max(1))
            .build()
            .map_err(cl)
    }

    /// A device copy of `data`, written by a blocking write: a buffer made with a host
    /// pointer to copy can keep a host-side copy until its first use (NVIDIA's does), which
    /// for a whole model would double its resident size.
    pub fn upload(&self, data: &[f32]) -> Result<Buffer<f32>> {
        let b = self.alloc(data.len())?;
        self.write(&b, 0, data)?;
        Ok(b)
    }

    /// A device copy of `data` as bytes.
    pub fn upload_bytes(&self, data: &[u8]) -> Result<Buffer<u8>> {
        let b = Buffer::<u8>::builder()
            .queue(self.queue.clone())
            .len(data.len().max(1))
            .build()
            .map_err(cl)?;
        if !data.is_empty() {
            b.write(data).enq().map_err(cl)?;
            self.uploads.fetch_add(1, Ordering::Relaxed);
        }
        Ok(b)
    }

    /// Write `data` into `b` from element `at`.
    pub fn write(&self, b: &Buffer<f32>, at: usize, data: &[f32]) -> Result<()> {
        if !data.is_empty() {
            b.write(data).offset(at).enq().map_err(cl)?;
            self.uploads.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Read `out.len()` elements of `b` from element `at` (waits for the queue).
    pub fn read(&self, b: &Buffer<f32>, at: usize, out: &mut [f32]) -> Result<()> {
        if !out.is_empty() {
            b.read(out).offset(at).enq().map_err(cl)?;
            self.downloads.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Copy `n` elements from `src` to a new buffer, on the device.
    pub fn duplicate(&self, src: &Buffer<f32>, n: usize) -> Result<Buffer<f32>> {
        let dst = self.alloc(n)?;
        if n > 0 {
            src.copy(&dst, Some(0), Some(n)).enq().map_err(cl)?;
        }
        Ok(dst)
    }

    /// `ints` on the device, uploaded once per distinct content.
    pub fn desc(&self, ints: &[i32]) -> Result<Buffer<i32>> {
        let mut cache = self.descs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = cache.get(ints) {
            return Ok(b.clone());
        }
        if cache.len() >= MAX_DESCS {
            cache.clear();
        }
        let b = Buffer::<i32>::builder()
            .queue(self.queue.clone())
            .len(ints.len().max(1))
            .build()
            .map_err(cl)?;
        b.write(ints).enq().map_err(cl)?;
        self.uploads.fetch_add(1, Ordering::Relaxed);
        cache.insert(ints.to_vec(), b.clone());
        Ok(b)
    }

    /// Enqueue kernel `name` over `global` items in groups of `local`.
    pub fn launch(
        &self,
        name: &'static str,
        global: usize,
        local: usize,
        args: &[Arg],
    ) -> Result<()> {
        let mut cache = self.kernels.lock().unwrap_or_else(|e| e.into_inner());
        if !cache.contains_key(name) {
            let mut k = Kernel::builder();
            k.program(&self.program)
                .name(name)
                .queue(self.queue.clone());
            for a in args {
                match a {
                    Arg::F(b) => k.arg(*b),
                    Arg::U(b) => k.arg(*b),
                    Arg::I(b) => k.arg(*b),
                    Arg::Int(i) => k.arg(*i),
                    Arg::Real(f) => k.arg(*f),
                };
            }
            cache.insert(name, k.build().map_err(cl)?);
        }
        let kernel = &cache[name];
        for (i, a) in args.iter().enumerate() {
            match a {
                Arg::F(b) => kernel.set_arg(i, *b),
                Arg::U(b) => kernel.set_arg(i, *b),
                Arg::I(b) => kernel.set_arg(i, *b),
                Arg::Int(v) => kernel.set_arg(i, *v),
                Arg::Real(v) => kernel.set_arg(i, *v),
            }
            .map_err(cl)?;
        }
        self.launches.fetch_add(1, Ordering::Relaxed);
        let cmd = kernel.cmd().global_work_size(global).local_work_size(local);
        // SAFETY: every buffer argument holds at least the elements the kernel reaches at
        // this global size (the callers size them from the same shapes).
        unsafe { cmd.enq().map_err(cl) }
    }
}

/// One stream's state on a device: `[L, layer_len]` floats in one buffer.
pub struct DeviceState {
    pub(super) buf: Buffer<f32>,
    pub(super) len: usize,
    pub(super) dev: Arc<Device>,
}

impl DeviceData for DeviceState {
    fn download(&self) -> Result<Vec<f32>> {
        let mut v = vec![0.0; self.len];
        self.dev.read(&self.buf, 0, &mut v)?;
        Ok(v)
    }

    fn duplicate(&self) -> Result<Box<dyn DeviceData>> {
        Ok(Box::new(DeviceState {
            buf: self.dev.duplicate(&self.buf, self.len)?,
            len: self.len,
            dev: Arc::clone(&self.dev),
        }))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
