//! The OpenCL backend (cargo feature `opencl`): the RWKV-6 forward pass on a device.
//!
//! Weights are uploaded once in their stored or quantized format; the state lives on the
//! device between calls; per call only the embedded input rows go up and the requested
//! logits come back. Kernel sources are `kernels/*.cl`, embedded in the binary and compiled
//! once per run.

use super::{Device as DevicePick, DeviceSpec};
use crate::backend::cpu::Cpu;
use crate::error::{Error, Result};
use crate::model::v6::{Layer, Logits, Weights, GN_EPS, LN_EPS};
use crate::model::Config;
use crate::state::{DeviceState, LayerState, State};
use crate::tensor::{Data, Matrix};
use ocl::{Buffer, Context, Kernel, Platform, Program, Queue};

const SOURCES: [&str; 6] = [
    include_str!("../../../kernels/matmul.cl"),
    include_str!("../../../kernels/norm.cl"),
    include_str!("../../../kernels/token_shift.cl"),
    include_str!("../../../kernels/mix.cl"),
    include_str!("../../../kernels/activations.cl"),
    include_str!("../../../kernels/wkv.cl"),
];
/// Work-group size of the matmul and norm kernels (`MM_LS`, `NORM_LS`).
const LS: usize = 64;
/// Tokens an nf4 matmul work-group multiplies each weight with (`MM_TOK`).
const MM_TOK: usize = 4;

/// An `ocl` error (a framed, multi-line report) as one line.
fn cl(e: impl std::fmt::Display) -> Error {
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
/// thread-safe (two threads opening at once crashed inside its device set-up).
static DISCOVERY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn discovery() -> std::sync::MutexGuard<'static, ()> {
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

/// A device with its queue and the compiled kernels.
pub struct Ocl {
    pub name: String,
    queue: Queue,
    program: Program,
    /// Kernel objects made on first use; each launch sets its arguments and enqueues under
    /// the lock, so threads sharing the device do not mix their arguments.
    kernels: std::sync::Mutex<std::collections::HashMap<String, Kernel>>,
    /// Released scratch buffers by length (a power of two), for reuse. Releasing a buffer
    /// can wait for the device to go idle (NVIDIA's does), which made every launch a round
    /// trip.
    pool: Pool,
}

type Pool = std::sync::Mutex<std::collections::HashMap<usize, Vec<Buffer<f32>>>>;

/// A scratch buffer of the forward pass, handed back to its device's pool when dropped.
/// The queue runs in order, so a kernel that reuses it runs after those that used it.
struct Tmp<'a> {
    buf: Option<Buffer<f32>>,
    pool: &'a Pool,
}

impl std::ops::Deref for Tmp<'_> {
    type Target = Buffer<f32>;
    fn deref(&self) -> &Buffer<f32> {
        self.buf
            .as_ref()
            .expect("a scratch buffer is present until dropped")
    }
}

impl Drop for Tmp<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.entry(b.len()).or_default().push(b);
        }
    }
}

/// A kernel argument.
enum Arg<'a> {
    F(&'a Buffer<f32>),
    U(&'a Buffer<u8>),
    I(i32),
    R(f32),
}

impl Ocl {
    /// Open the device `spec` names; for `auto`, a GPU if there is one (else `None`).
    pub fn open(spec: DeviceSpec) -> Result<Option<Ocl>> {
        let _serial = discovery();
        let platforms = Platform::list();
        let pick = |p: usize, d: usize| -> Result<Ocl> {
            let plat = *platforms
                .get(p)
                .ok_or_else(|| Error::Device(format!("no OpenCL platform {p}")))?;
            let devs = ocl::Device::list_all(plat).map_err(cl)?;
            let dev = *devs
                .get(d)
                .ok_or_else(|| Error::Device(format!("no device {d} on OpenCL platform {p}")))?;
            Ocl::on(plat, dev)
        };
        match spec.pick {
            DevicePick::Cpu => Ok(None),
            DevicePick::OpenCl { platform, device } => {
                if platforms.is_empty() {
                    return Err(Error::Device(
                        "no OpenCL platform found (install a GPU driver's OpenCL ICD, or pocl-opencl-icd)"
                            .into(),
                    ));
                }
                pick(platform.unwrap_or(0), device.unwrap_or(0)).map(Some)
            }
            DevicePick::Auto => {
                for plat in &platforms {
                    let gpus = ocl::Device::list(plat, Some(ocl::flags::DEVICE_TYPE_GPU))
                        .unwrap_or_default();
                    if let Some(dev) = gpus.first() {
                        return Ocl::on(*plat, *dev).map(Some);
                    }
                }
                Ok(None)
            }
        }
    }

    fn on(plat: Platform, dev: ocl::Device) -> Result<Ocl> {
        let name = dev.name().map_err(cl)?;
        let context = Context::builder()
            .platform(plat)
            .devices(dev)
            .build()
            .map_err(cl)?;
        let queue = Queue::new(&context, dev, None).map_err(cl)?;
        let program = Program::builder()
            .src(SOURCES.concat())
            .devices(dev)
            .build(&context)
            .map_err(|e| Error::Device(format!("OpenCL kernels did not build on {name}: {e}")))?;
        Ok(Ocl {
            name,
            queue,
            program,
            kernels: Default::default(),
            pool: Default::default(),
        })
    }

    /// A device copy of `data`, written by a blocking write: a buffer made with a host
    /// pointer to copy can keep a host-side copy until its first use (NVIDIA's does), which
    /// for a whole model would double its resident size.
    fn buf(&self, data: &[f32]) -> Result<Buffer<f32>> {
        let b = self.alloc(data.len())?;
        if !data.is_empty() {
            b.write(data).enq().map_err(cl)?;
        }
        Ok(b)
    }

    /// A new buffer of `n` floats (not initialised).
    fn alloc(&self, n: usize) -> Result<Buffer<f32>> {
        Buffer::<f32>::builder()
            .queue(self.queue.clone())
            .len(n.max(1))
            .build()
            .map_err(cl)
    }

    /// A scratch buffer of at least `n` floats (not initialised). Its length is `n` rounded
    /// up to a power of two, so that the pool holds a few sizes, whatever the lengths of
    /// the documents scored (exact lengths would keep buffers for every chunk length seen).
    fn scratch(&self, n: usize) -> Result<Tmp<'_>> {
        let class = n.max(1).next_power_of_two();
        let reused = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.get_mut(&class).and_then(Vec::pop)
        };
        let buf = match reused {
            Some(b) => b,
            None => self.alloc(class)?,
        };
        Ok(Tmp {
            buf: Some(buf),
            pool: &self.pool,
        })
    }

    /// A scratch copy of `data`.
    fn scratch_from(&self, data: &[f32]) -> Result<Tmp<'_>> {
        let b = self.scratch(data.len())?;
        if !data.is_empty() {
            b.write(data).enq().map_err(cl)?;
        }
        Ok(b)
    }

    /// A device copy of `data`, written like [`Ocl::buf`].
    fn bytes(&self, data: &[u8]) -> Result<Buffer<u8>> {
        let b = Buffer::<u8>::builder()
            .queue(self.queue.clone())
            .len(data.len().max(1))
            .build()
            .map_err(cl)?;
        if !data.is_empty() {
            b.write(data).enq().map_err(cl)?;
        }
        Ok(b)
    }

    fn read(&self, b: &Buffer<f32>, n: usize) -> Result<Vec<f32>> {
        let mut v = vec![0.0f32; n];
        b.read(&mut v).enq().map_err(cl)?;
        Ok(v)
    }

    fn run(
        &self,
        name: &str,
        global: [usize; 2],
        local: Option<usize>,
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
                    Arg::I(i) => k.arg(*i),
                    Arg::R(f) => k.arg(*f),
                };
            }
            cache.insert(name.to_string(), k.build().map_err(cl)?);
        }
        let kernel = &cache[name];
        for (i, a) in args.iter().enumerate() {
            match a {
                Arg::F(b) => kernel.set_arg(i, *b),
                Arg::U(b) => kernel.set_arg(i, *b),
                Arg::I(v) => kernel.set_arg(i, *v),
                Arg::R(v) => kernel.set_arg(i, *v),
            }
            .map_err(cl)?;
        }
        let cmd = kernel.cmd();
        let cmd = if global[1] > 1 {
            let c = cmd.global_work_size([global[0], global[1]]);
            match local {
                Some(l) => c.local_work_size([l, 1]),
                None => c,
            }
        } else {
            let c = cmd.global_work_size(global[0]);
            match local {
                Some(l) => c.local_work_size(l),
                None => c,
            }
        };
        // SAFETY: every buffer argument holds at least the elements the kernel's global size
        // reaches (sized by the callers below from the same shapes).
        unsafe { cmd.enq().map_err(cl) }
    }

    // ---- operations on device buffers ----

    fn matmul(&self, w: &DevMatrix, x: &Buffer<f32>, t: usize) -> Result<Tmp<'_>> {
        let y = self.scratch(t * w.rows)?;
        let args = [
            Arg::U(&w.data),
            Arg::U(&w.scales),
            Arg::F(x),
            Arg::F(&y),
            Arg::I(w.rows as i32),
            Arg::I(w.cols as i32),
            Arg::I(t as i32),
        ];
        // nf4's work-groups take MM_TOK tokens each (and the token count); the others one.
        if w.kernel == "matmul_nf4" {
            self.run(w.kernel, [w.rows * LS, t.div_ceil(MM_TOK)], Some(LS), &args)?;
        } else {
            self.run(w.kernel, [w.rows * LS, t], Some(LS), &args[..6])?;
        }
        Ok(y)
    }

    #[allow(clippy::too_many_arguments)]
    fn norm(
        &self,
        x: &Buffer<f32>,
        n: usize,
        w: &Buffer<f32>,
        b: &Buffer<f32>,
        group: usize,
        width: usize,
        eps: f32,
    ) -> Result<()> {
        let args = [
            Arg::F(x),
            Arg::F(w),
            Arg::F(b),
            Arg::I(group as i32),
            Arg::I(width as i32),
            Arg::R(eps),
        ];
        self.run("norm_affine", [n / group * LS, 1], Some(LS), &args)
    }

    fn elementwise(&self, name: &str, n: usize, args: &[Arg]) -> Result<()> {
        self.run(name, [n, 1], None, args)
    }

    fn copy(&self, src: &Buffer<f32>, off: usize, n: usize) -> Result<Tmp<'_>> {
        let dst = self.scratch(n)?;
        self.elementwise(
            "copy_range",
            n,
            &[Arg::F(src), Arg::F(&dst), Arg::I(off as i32)],
        )?;
        Ok(dst)
    }

    /// `sx = shift(xx) - xx`, and the shift state becomes xx's last row.
    fn shift(&self, xx: &Buffer<f32>, shift: &Buffer<f32>, t: usize, d: usize) -> Result<Tmp<'_>> {
        let sx = self.scratch(t * d)?;
        self.elementwise(
            "shift_diff",
            t * d,
            &[Arg::F(xx), Arg::F(shift), Arg::F(&sx), Arg::I(d as i32)],
        )?;
        self.elementwise(
            "shift_store",
            d,
            &[
                Arg::F(xx),
                Arg::F(shift),
                Arg::I(t as i32),
                Arg::I(d as i32),
            ],
        )?;
        Ok(sx)
    }

    fn mix(
        &self,
        xx: &Buffer<f32>,
        sx: &Buffer<f32>,
        maa: &Buffer<f32>,
        delta: Option<&Buffer<f32>>,
        t: usize,
        d: usize,
    ) -> Result<Tmp<'_>> {
        let out = self.scratch(t * d)?;
        let (dl, has) = match delta {
            Some(b) => (b, 1),
            None => (sx, 0),
        };
        let args = [
            Arg::F(xx),
            Arg::F(sx),
            Arg::F(maa),
            Arg::F(dl),
            Arg::F(&out),
            Arg::I(d as i32),
            Arg::I(has),
        ];
        self.elementwise("mix_shift", t * d, &args)?;
        Ok(out)
    }
}

/// A weight matrix on the device, in its stored format.
pub struct DevMatrix {
    kernel: &'static str,
    rows: usize,
    cols: usize,
    data: Buffer<u8>,
    /// Block scales as stored, f32 for int8 and bf16 for nf4 (a dummy byte otherwise).
    scales: Buffer<u8>,
}

/// The bytes of a slice of plain numbers.
fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: f32, f16, bf16, i8 and u8 have no padding; any byte view of them is valid.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn upload_matrix(o: &Ocl, m: &Matrix) -> Result<DevMatrix> {
    let (kernel, data, scales): (&'static str, &[u8], &[u8]) = match &m.data {
        Data::F32(b) => ("matmul_f32", as_bytes(b), &[]),
        Data::F16(b) => ("matmul_f16", as_bytes(b), &[]),
        Data::BF16(b) => ("matmul_bf16", as_bytes(b), &[]),
        Data::Q8(q) => ("matmul_q8", as_bytes(&q.qs), as_bytes(&q.scales)),
        Data::Nf4(q) => ("matmul_nf4", as_bytes(&q.packed), as_bytes(&q.scales)),
    };
    Ok(DevMatrix {
        kernel,
        rows: m.rows,
        cols: m.cols,
        data: o.bytes(data)?,
        scales: o.bytes(scales)?,
    })
}

struct DevLayer {
    ln1_w: Buffer<f32>,
    ln1_b: Buffer<f32>,
    ln2_w: Buffer<f32>,
    ln2_b: Buffer<f32>,
    maa_x: Buffer<f32>,
    maa: Vec<Buffer<f32>>,
    maa_w1: DevMatrix,
    maa_w2: Vec<DevMatrix>,
    decay: Buffer<f32>,
    decay_w1: DevMatrix,
    decay_w2: DevMatrix,
    faaaa: Buffer<f32>,
    r: DevMatrix,
    k: DevMatrix,
    v: DevMatrix,
    g: DevMatrix,
    o: DevMatrix,
    ln_x_w: Buffer<f32>,
    ln_x_b: Buffer<f32>,
    f_maa_k: Buffer<f32>,
    f_maa_r: Buffer<f32>,
    f_key: DevMatrix,
    f_receptance: DevMatrix,
    f_value: DevMatrix,
}

/// A model's weights on a device.
pub struct OclModel {
    pub ocl: Ocl,
    layers: Vec<DevLayer>,
    ln_out_w: Buffer<f32>,
    ln_out_b: Buffer<f32>,
    head: DevMatrix,
}

/// A state's copy on the device.
struct DevState {
    queue: Queue,
    att_shift: Vec<Buffer<f32>>,
    wkv: Vec<Buffer<f32>>,
    ffn_shift: Vec<Buffer<f32>>,
}

impl DeviceState for DevState {
    fn download(&self, layers: &mut [LayerState]) {
        let _ = &self.queue;
        for (l, ls) in layers.iter_mut().enumerate() {
            // A failed read leaves the host values; there is no error path through Clone.
            let _ = self.att_shift[l].read(&mut ls.att_shift).enq();
            let _ = self.wkv[l].read(&mut ls.wkv).enq();
            let _ = self.ffn_shift[l].read(&mut ls.ffn_shift).enq();
        }
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl OclModel {
    /// Upload `w` to the device `ocl`.
    pub fn upload(ocl: Ocl, w: &Weights) -> Result<OclModel> {
        let o = &ocl;
        let mut layers = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            let Layer { att: a, ffn: f, .. } = l;
            layers.push(DevLayer {
                ln1_w: o.buf(&l.ln1_w)?,
                ln1_b: o.buf(&l.ln1_b)?,
                ln2_w: o.buf(&l.ln2_w)?,
                ln2_b: o.buf(&l.ln2_b)?,
                maa_x: o.buf(&a.maa_x)?,
                maa: a.maa.iter().map(|m| o.buf(m)).collect::<Result<_>>()?,
                maa_w1: upload_matrix(o, &a.maa_w1)?,
                maa_w2: a
                    .maa_w2
                    .iter()
                    .map(|m| upload_matrix(o, m))
                    .collect::<Result<_>>()?,
                decay: o.buf(&a.decay)?,
                decay_w1: upload_matrix(o, &a.decay_w1)?,
                decay_w2: upload_matrix(o, &a.decay_w2)?,
                faaaa: o.buf(&a.faaaa)?,
                r: upload_matrix(o, &a.receptance)?,
                k: upload_matrix(o, &a.key)?,
                v: upload_matrix(o, &a.value)?,
                g: upload_matrix(o, &a.gate)?,
                o: upload_matrix(o, &a.output)?,
                ln_x_w: o.buf(&a.ln_x_w)?,
                ln_x_b: o.buf(&a.ln_x_b)?,
                f_maa_k: o.buf(&f.maa_k)?,
                f_maa_r: o.buf(&f.maa_r)?,
                f_key: upload_matrix(o, &f.key)?,
                f_receptance: upload_matrix(o, &f.receptance)?,
                f_value: upload_matrix(o, &f.value)?,
            });
        }
        Ok(OclModel {
            layers,
            ln_out_w: o.buf(&w.ln_out_w)?,
            ln_out_b: o.buf(&w.ln_out_b)?,
            head: upload_matrix(o, &w.head)?,
            ocl,
        })
    }

    /// The device copy of `state`, uploading it when the state has none.
    fn device_state<'s>(&self, state: &'s mut State) -> Result<&'s mut DevState> {
        let has = state
            .device_mut()
            .is_some_and(|d| d.as_any_mut().downcast_mut::<DevState>().is_some());
        if !has {
            let o = &self.ocl;
            let layers = state.layers();
            let mut ds = DevState {
                queue: o.queue.clone(),
                att_shift: Vec::new(),
                wkv: Vec::new(),
                ffn_shift: Vec::new(),
            };
            for l in layers {
                ds.att_shift.push(o.buf(&l.att_shift)?);
                ds.wkv.push(o.buf(&l.wkv)?);
                ds.ffn_shift.push(o.buf(&l.ffn_shift)?);
            }
            state.set_device(Box::new(ds));
        }
        Ok(state
            .device_mut()
            .and_then(|d| d.as_any_mut().downcast_mut::<DevState>())
            .expect("attached above"))
    }

    /// [`crate::Model::forward`] on the device.
    pub fn forward(
        &self,
        w: &Weights,
        cfg: &Config,
        tokens: &[u32],
        state: &mut State,
        want: Logits,
    ) -> Result<Vec<f32>> {
        let o = &self.ocl;
        let (t, d, v) = (tokens.len(), cfg.n_embd, cfg.vocab);
        let x = o.scratch_from(&w.embed(&Cpu::default(), tokens))?;
        {
            let ds = self.device_state(state)?;
            for (l, dl) in self.layers.iter().enumerate() {
                self.time_mix(cfg, dl, &x, t, &ds.att_shift[l], &ds.wkv[l])?;
                self.channel_mix(cfg, dl, &x, t, &ds.ffn_shift[l])?;
            }
        }
        state.mark_device_newer();
        let (rows, off) = match want {
            Logits::None => {
                o.queue.finish().map_err(cl)?;
                return Ok(Vec::new());
            }
            Logits::Last => (1, (t - 1) * d),
            Logits::All => (t, 0),
        };
        let xr = o.copy(&x, off, rows * d)?;
        o.norm(&xr, rows * d, &self.ln_out_w, &self.ln_out_b, d, d, LN_EPS)?;
        let logits = o.matmul(&self.head, &xr, rows)?;
        o.read(&logits, rows * v)
    }

    fn time_mix(
        &self,
        cfg: &Config,
        l: &DevLayer,
        x: &Buffer<f32>,
        t: usize,
        shift: &Buffer<f32>,
        wkv: &Buffer<f32>,
    ) -> Result<()> {
        let o = &self.ocl;
        let (d, m, n) = (cfg.n_embd, cfg.maa_lora, t * cfg.n_embd);
        let xx = o.copy(x, 0, n)?;
        o.norm(&xx, n, &l.ln1_w, &l.ln1_b, d, d, LN_EPS)?;
        let sx = o.shift(&xx, shift, t, d)?;
        let xxx = o.mix(&xx, &sx, &l.maa_x, None, t, d)?;
        let lo = o.matmul(&l.maa_w1, &xxx, t)?;
        o.elementwise("act_tanh", t * 5 * m, &[Arg::F(&lo)])?;
        let mut mixed = Vec::with_capacity(5);
        for j in 0..5 {
            let part = o.scratch(t * m)?;
            let args = [
                Arg::F(&lo),
                Arg::F(&part),
                Arg::I((5 * m) as i32),
                Arg::I((j * m) as i32),
                Arg::I(m as i32),
            ];
            o.elementwise("take_cols", t * m, &args)?;
            let delta = o.matmul(&l.maa_w2[j], &part, t)?;
            mixed.push(o.mix(&xx, &sx, &l.maa[j], Some(&delta), t, d)?);
        }
        let (xw, xk, xv, xr, xg) = (&mixed[0], &mixed[1], &mixed[2], &mixed[3], &mixed[4]);
        let r = o.matmul(&l.r, xr, t)?;
        let k = o.matmul(&l.k, xk, t)?;
        let vv = o.matmul(&l.v, xv, t)?;
        let g = o.matmul(&l.g, xg, t)?;
        o.elementwise("act_silu", n, &[Arg::F(&g)])?;
        let dl = o.matmul(&l.decay_w1, xw, t)?;
        o.elementwise("act_tanh", t * cfg.decay_lora, &[Arg::F(&dl)])?;
        let w = o.matmul(&l.decay_w2, &dl, t)?;
        o.elementwise(
            "act_decay",
            n,
            &[Arg::F(&w), Arg::F(&l.decay), Arg::I(d as i32)],
        )?;
        let out = o.scratch(n)?;
        let args = [
            Arg::F(&r),
            Arg::F(&k),
            Arg::F(&vv),
            Arg::F(&w),
            Arg::F(&l.faaaa),
            Arg::F(wkv),
            Arg::F(&out),
            Arg::I(t as i32),
            Arg::I(cfg.head_size as i32),
        ];
        o.run("wkv", [d, 1], None, &args)?;
        o.norm(&out, n, &l.ln_x_w, &l.ln_x_b, cfg.head_size, d, GN_EPS)?;
        o.elementwise("mul_into", n, &[Arg::F(&out), Arg::F(&g)])?;
        let y = o.matmul(&l.o, &out, t)?;
        o.elementwise("add_into", n, &[Arg::F(x), Arg::F(&y)])
    }

    fn channel_mix(
        &self,
        cfg: &Config,
        l: &DevLayer,
        x: &Buffer<f32>,
        t: usize,
        shift: &Buffer<f32>,
    ) -> Result<()> {
        let o = &self.ocl;
        let (d, n) = (cfg.n_embd, t * cfg.n_embd);
        let xx = o.copy(x, 0, n)?;
        o.norm(&xx, n, &l.ln2_w, &l.ln2_b, d, d, LN_EPS)?;
        let sx = o.shift(&xx, shift, t, d)?;
        let xk = o.mix(&xx, &sx, &l.f_maa_k, None, t, d)?;
        let xr = o.mix(&xx, &sx, &l.f_maa_r, None, t, d)?;
        let kk = o.matmul(&l.f_key, &xk, t)?;
        o.elementwise("act_relu_sq", t * cfg.ffn, &[Arg::F(&kk)])?;
        let vv = o.matmul(&l.f_value, &kk, t)?;
        let rr = o.matmul(&l.f_receptance, &xr, t)?;
        o.elementwise("ffn_out", n, &[Arg::F(x), Arg::F(&rr), Arg::F(&vv)])
    }
}

/// Single operations with host data in and out, for the parity tests against the CPU
/// kernels (every OpenCL kernel has its CPU twin).
pub mod ops {
    use super::*;

    pub fn matmul(o: &Ocl, w: &Matrix, x: &[f32], t: usize) -> Result<Vec<f32>> {
        let dm = upload_matrix(o, w)?;
        let y = o.matmul(&dm, &o.buf(x)?, t)?;
        o.read(&y, t * w.rows)
    }

    pub fn norm(
        o: &Ocl,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        group: usize,
        eps: f32,
    ) -> Result<Vec<f32>> {
        let xb = o.buf(x)?;
        o.norm(&xb, x.len(), &o.buf(w)?, &o.buf(b)?, group, w.len(), eps)?;
        o.read(&xb, x.len())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn wkv(
        o: &Ocl,
        heads: usize,
        r: &[f32],
        k: &[f32],
        v: &[f32],
        w: &[f32],
        u: &[f32],
        state: &mut [f32],
    ) -> Result<Vec<f32>> {
        let d = u.len();
        let t = r.len() / d;
        let st = o.buf(state)?;
        let out = o.scratch(r.len())?;
        let (rb, kb, vb, wb, ub) = (o.buf(r)?, o.buf(k)?, o.buf(v)?, o.buf(w)?, o.buf(u)?);
        let args = [
            Arg::F(&rb),
            Arg::F(&kb),
            Arg::F(&vb),
            Arg::F(&wb),
            Arg::F(&ub),
            Arg::F(&st),
            Arg::F(&out),
            Arg::I(t as i32),
            Arg::I((d / heads) as i32),
        ];
        o.run("wkv", [d, 1], None, &args)?;
        state.copy_from_slice(&o.read(&st, state.len())?);
        o.read(&out, r.len())
    }

    /// `(sx, new shift, mix(xx, sx, maa, delta))` for xx [T, D].
    pub fn shift_mix(
        o: &Ocl,
        xx: &[f32],
        shift: &[f32],
        maa: &[f32],
        delta: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let d = shift.len();
        let t = xx.len() / d;
        let (xb, sb) = (o.buf(xx)?, o.buf(shift)?);
        let sx = o.shift(&xb, &sb, t, d)?;
        let db = o.buf(delta)?;
        let m = o.mix(&xb, &sx, &o.buf(maa)?, Some(&db), t, d)?;
        Ok((
            o.read(&sx, xx.len())?,
            o.read(&sb, d)?,
            o.read(&m, xx.len())?,
        ))
    }

    /// Run element-wise kernel `name` over `n` items with float arrays `bufs` (uploaded in
    /// order, then integer arguments `ints`); returns every array as it is afterwards.
    pub fn elementwise(
        o: &Ocl,
        name: &str,
        n: usize,
        bufs: &[&[f32]],
        ints: &[i32],
    ) -> Result<Vec<Vec<f32>>> {
        let dev: Vec<Buffer<f32>> = bufs.iter().map(|b| o.buf(b)).collect::<Result<_>>()?;
        let mut args: Vec<Arg> = dev.iter().map(Arg::F).collect();
        args.extend(ints.iter().map(|&i| Arg::I(i)));
        o.elementwise(name, n, &args)?;
        dev.iter()
            .zip(bufs)
            .map(|(d, b)| o.read(d, b.len()))
            .collect()
    }

    /// One element-wise kernel (`act_tanh`, `act_silu`, `act_relu_sq`) on `x`.
    pub fn activation(o: &Ocl, name: &str, x: &[f32]) -> Result<Vec<f32>> {
        let b = o.buf(x)?;
        o.elementwise(name, x.len(), &[Arg::F(&b)])?;
        o.read(&b, x.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scratch buffers of every length from 1 to 900 leave one pooled size per power of
    /// two, each holding only as many buffers as were alive at once.
    #[test]
    fn the_scratch_pool_keeps_a_few_sizes() {
        let o = Ocl::open("opencl".parse().unwrap())
            .unwrap()
            .expect("an OpenCL device (CI installs PoCL)");
        for n in 1..=300 {
            let a = o.scratch(n).unwrap();
            let b = o.scratch(3 * n).unwrap();
            assert!(a.len() >= n && b.len() >= 3 * n);
        }
        let pool = o.pool.lock().unwrap();
        let mut sizes: Vec<usize> = pool.keys().copied().collect();
        sizes.sort();
        assert_eq!(sizes, (0..=10).map(|p| 1 << p).collect::<Vec<_>>());
        assert!(pool.values().all(|v| v.len() <= 2));
    }
}
