//! The OpenCL backend: [`Backend`] on device buffers. Weights are uploaded once in their
//! stored or quantized format, states live on the device, and per call only the token
//! rows go up and the requested logits come back. A one-token step of a layer is eight
//! launches, all enqueued without waiting: the norm with its token shift, the mix LoRA
//! (one work-group per token), one launch for every product that reads the mixes, the
//! recurrence (decay, GroupNorm and gate fused in), the output product, the channel
//! mix's norm, its two products, and the last product.

pub use super::device::Counters;
use super::device::{cl, discovery, Arg, Device, DeviceState, Fmt};
use crate::backend::cpu::norm::layer_norm;
use crate::backend::device::{Device as DevicePick, DeviceSpec};
use crate::backend::{
    Backend, Decay, DeviceData, Lora, Norm, NormShift, Precision, Product, RowProduct, Rows,
    RowsMut, StateData, Then, Wkv4, Wkv6, Wkv7,
};
use crate::error::{Error, Result};
use crate::tensor::{Data, Matrix};
use ocl::{Buffer, Platform};
use std::ops::Range;
use std::sync::Arc;

/// Work-group sizes of the kernels (`NORM_LS`, `MM_LS`, `LORA_LS` in the sources).
const NORM_LS: usize = 64;
const MM_LS: usize = 64;
const LORA_LS: usize = 128;
/// Tokens a product work-group takes (`MM_TOK`); jobs a product launch takes.
const MM_TOK: usize = 8;
const MM_JOBS: usize = 8;
/// Up-projections a LoRA launch takes, and its widest hidden layer.
const LORA_UPS: usize = 5;
const LORA_MAX_HIDDEN: usize = 1024;
/// The largest head the recurrence kernels keep in registers (`WKV_MAX_S`, `WKV7_MAX_N`).
const WKV_MAX_S: usize = 64;

/// A device ready to run a model.
#[derive(Clone)]
pub struct Ocl {
    dev: Arc<Device>,
}

/// A weight matrix on the device, in its stored format.
pub struct DevMatrix {
    info: crate::backend::MatrixInfo,
    fmt: i32,
    rows: usize,
    cols: usize,
    data: Buffer<u8>,
    /// Block scales as stored, f32 for int8 and bf16 for nf4 (a dummy byte otherwise).
    scales: Buffer<u8>,
}

/// Activations (or a per-channel vector) on the device; grown by [`Backend::reserve`].
pub struct DevTensor {
    buf: Option<Buffer<f32>>,
    cap: usize,
}

/// The streams of a call: each stream's rows.
#[derive(Default)]
pub struct OclBatch {
    spans: Vec<Range<usize>>,
}

/// The bytes of a slice of plain numbers.
fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: f32, f16, bf16, i8 and u8 have no padding; any byte view of them is valid.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
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
            Ok(Ocl {
                dev: Device::open(plat, dev)?,
            })
        };
        match spec.pick {
            DevicePick::Cpu => Ok(None),
            DevicePick::OpenCl { platform, device } => {
                if platforms.is_empty() {
                    return Err(Error::Device(
                        "no OpenCL platform found (install a GPU driver's OpenCL ICD, or \
                         pocl-opencl-icd)"
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
                        return Ok(Some(Ocl {
                            dev: Device::open(*plat, *dev)?,
                        }));
                    }
                }
                Ok(None)
            }
        }
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.dev.name
    }

    fn buf<'a>(&'a self, t: &'a DevTensor) -> &'a Buffer<f32> {
        t.buf.as_ref().unwrap_or(&self.dev.none_f)
    }
}

/// A step's code and operands (`formats.cl`): `(then, [a, b, c], [a_off, b_off, c_off])`.
fn then_args<'a>(
    o: &'a Ocl,
    then: &'a Then<'a, DevTensor>,
) -> (i32, [&'a Buffer<f32>; 3], [i32; 3]) {
    let none = &o.dev.none_f;
    let at = |r: usize, c: usize| (r * c) as i32;
    let (bufs, offs) = match then {
        Then::None | Then::Tanh | Then::Sigmoid | Then::Silu | Then::ReluSquared => {
            ([none; 3], [0; 3])
        }
        Then::ExpNegExp(b) | Then::SigmoidDecay(b) | Then::SigmoidPlus(b) => {
            ([o.buf(b), none, none], [0; 3])
        }
        Then::Mix { xx, sx, maa } => (
            [o.buf(xx.t), o.buf(sx.t), o.buf(maa)],
            [at(xx.row, xx.cols), at(sx.row, sx.cols), 0],
        ),
        Then::Residual(x) => ([o.buf(x.t), none, none], [at(x.row, x.cols), 0, 0]),
        Then::GatedResidual { gate, x } => (
            [o.buf(x.t), o.buf(gate.t), none],
            [at(x.row, x.cols), at(gate.row, gate.cols), 0],
        ),
        Then::Scale { bias, x } => ([o.buf(x.t), o.buf(bias), none], [at(x.row, x.cols), 0, 0]),
    };
    (then.code() as i32, bufs, offs)
}

impl Backend for Ocl {
    type Tensor = DevTensor;
    type Matrix = DevMatrix;
    type State = DeviceState;
    type Batch = OclBatch;

    fn describe(&self) -> String {
        format!("opencl ({})", self.dev.name)
    }

    fn counters(&self) -> Option<Counters> {
        Some(self.dev.counters())
    }

    fn matrix(&self, m: Matrix) -> Result<DevMatrix> {
        let (fmt, data, scales): (Fmt, &[u8], &[u8]) = match &m.data {
            Data::F32(b) => (Fmt::F32, as_bytes(b), &[]),
            Data::F16(b) => (Fmt::F16, as_bytes(b), &[]),
            Data::BF16(b) => (Fmt::Bf16, as_bytes(b), &[]),
            Data::Q8(q) => (Fmt::Q8, as_bytes(&q.qs), as_bytes(&q.scales)),
            Data::Nf4(q) => (Fmt::Nf4, as_bytes(&q.packed), as_bytes(&q.scales)),
            Data::Q8Panels(_) | Data::Nf4Panels(_) => {
                unreachable!("stored panels are the CPU backend's layout")
            }
        };
        Ok(DevMatrix {
            info: crate::backend::MatrixInfo::of(&m),
            fmt: fmt as i32,
            rows: m.rows,
            cols: m.cols,
            data: self.dev.upload_bytes(data)?,
            scales: self.dev.upload_bytes(scales)?,
        })
    }

    fn host_matrix(_: &DevMatrix) -> Option<&Matrix> {
        None
    }

    fn matrix_info(m: &DevMatrix) -> crate::backend::MatrixInfo {
        m.info
    }

    fn vector(&self, v: &[f32]) -> Result<DevTensor> {
        Ok(DevTensor {
            buf: Some(self.dev.upload(v)?),
            cap: v.len(),
        })
    }

    fn tensor(&self) -> DevTensor {
        DevTensor { buf: None, cap: 0 }
    }

    fn reserve(&self, t: &mut DevTensor, n: usize) -> Result<()> {
        if t.cap < n {
            let cap = n.next_power_of_two();
            t.buf = Some(self.dev.alloc(cap)?);
            t.cap = cap;
        }
        Ok(())
    }

    fn read(&self, x: Rows<DevTensor>, out: &mut Vec<f32>) -> Result<()> {
        out.clear();
        out.resize(x.rows * x.cols, 0.0);
        self.dev.read(self.buf(x.t), x.span().start, out)
    }

    fn state_mut<'s>(&self, s: &'s mut StateData) -> Result<&'s mut DeviceState> {
        let ours = |d: &dyn DeviceData| {
            let d = d.as_any().downcast_ref::<DeviceState>();
            d.is_some_and(|d| Arc::ptr_eq(&d.dev, &self.dev))
        };
        let here = matches!(s, StateData::Device(d) if ours(&**d));
        if !here {
            let values = s.to_host()?;
            *s = StateData::Device(Box::new(DeviceState {
                buf: self.dev.upload(&values)?,
                len: values.len(),
                dev: Arc::clone(&self.dev),
            }));
        }
        match s {
            StateData::Device(d) => Ok(d
                .as_any_mut()
                .downcast_mut::<DeviceState>()
                .expect("moved to this device above")),
            StateData::Host(_) => unreachable!("moved to the device above"),
        }
    }

    fn batch(&self) -> OclBatch {
        OclBatch::default()
    }

    fn set_batch(
        &self,
        b: &mut OclBatch,
        spans: &[Range<usize>],
        _: &[&mut DeviceState],
    ) -> Result<()> {
        b.spans.clear();
        b.spans.extend_from_slice(spans);
        Ok(())
    }

    /// On the host, as the CPU does it: no launch, one upload.
    fn embed(
        &self,
        emb: &Matrix,
        ln0: Option<Norm<Vec<f32>>>,
        tokens: &[u32],
        x: RowsMut<DevTensor>,
    ) -> Result<()> {
        let mut rows = vec![0.0f32; tokens.len() * x.cols];
        for (row, &tok) in rows.chunks_mut(x.cols).zip(tokens) {
            emb.row_f32(tok as usize, row);
        }
        if let Some(ln0) = ln0 {
            // the CPU's own host norm, so that both backends start from the same bits
            layer_norm(&mut rows, ln0.w, ln0.b, ln0.eps);
        }
        self.dev.write(self.buf(x.t), x.span().start, &rows)
    }

    fn row_products(&self, op: RowProduct<Self>) -> Result<()> {
        let RowProduct { x, m, out } = op;
        let (i_n, j_n) = (x.cols, out.cols);
        assert_eq!(m.cols, i_n * j_n, "row_products: m is not [n, I * J]");
        let args = [
            Arg::F(self.buf(x.t)),
            Arg::Int((x.row * i_n) as i32),
            Arg::F(self.buf(m.t)),
            Arg::Int((m.row * m.cols) as i32),
            Arg::F(self.buf(out.t)),
            Arg::Int((out.row * j_n) as i32),
            Arg::Int(i_n as i32),
            Arg::Int(j_n as i32),
        ];
        self.dev.launch("row_products", x.rows * j_n, j_n, &args)
    }

    fn layer_norm(&self, x: RowsMut<DevTensor>, ln: Norm<DevTensor>) -> Result<()> {
        let args = [
            Arg::F(self.buf(x.t)),
            Arg::Int((x.row * x.cols) as i32),
            Arg::Int(x.cols as i32),
            Arg::F(self.buf(ln.w)),
            Arg::F(self.buf(ln.b)),
            Arg::Real(ln.eps),
        ];
        self.dev
            .launch("layer_norm", x.rows * NORM_LS, NORM_LS, &args)
    }

    fn norm_shift(
        &self,
        op: NormShift<Self>,
        batch: &OclBatch,
        states: &mut [&mut DeviceState],
    ) -> Result<()> {
        let NormShift {
            x,
            ln,
            shift,
            xx,
            sx,
            from,
            mixes,
        } = op;
        let d = x.cols;
        assert!(mixes.len() <= 6, "norm_shift: more than six mixes");
        assert!(xx.row == sx.row, "norm_shift: xx and sx at different rows");
        let out_row = mixes.first().map_or(0, |m| m.out.row);
        assert!(
            mixes.iter().all(|m| m.out.row == out_row),
            "norm_shift: mixes at different rows"
        );
        for (span, st) in batch.spans.iter().zip(states.iter()) {
            let local_from = from.saturating_sub(span.start);
            let mix_off = (out_row + span.start + local_from - from) * d;
            let none = &self.dev.none_f;
            let mut args = vec![
                Arg::F(self.buf(x.t)),
                Arg::Int(((x.row + span.start) * d) as i32),
                Arg::F(self.buf(xx.t)),
                Arg::F(self.buf(sx.t)),
                Arg::Int(((xx.row + span.start) * d) as i32),
                Arg::F(&st.buf),
                Arg::Int(shift.start as i32),
                Arg::F(self.buf(ln.w)),
                Arg::F(self.buf(ln.b)),
                Arg::Real(ln.eps),
                Arg::Int(d as i32),
                Arg::Int(span.len() as i32),
                Arg::Int(local_from as i32),
                Arg::Int(mixes.len() as i32),
                Arg::Int(mix_off as i32),
            ];
            for k in 0..6 {
                match mixes.get(k) {
                    Some(m) => args.extend([Arg::F(self.buf(m.maa)), Arg::F(self.buf(m.out.t))]),
                    None => args.extend([Arg::F(none), Arg::F(none)]),
                }
            }
            self.dev
                .launch("norm_shift", span.len() * NORM_LS, NORM_LS, &args)?;
        }
        Ok(())
    }

    fn products(&self, _: Precision, jobs: &mut [Product<Self>]) -> Result<()> {
        for group in jobs.chunks(MM_JOBS) {
            let t = group[0].x.rows;
            let tgroups = t.div_ceil(MM_TOK);
            let mut desc = Vec::with_capacity(group.len() * 10);
            let mut args = Vec::with_capacity(7 * MM_JOBS + 3);
            let mut groups = 0usize;
            for j in group {
                assert_eq!(j.x.rows, t, "products: jobs over different token counts");
                let (then, ops, offs) = then_args(self, &j.then);
                desc.extend([
                    j.w.fmt,
                    j.w.rows as i32,
                    j.w.cols as i32,
                    (j.x.row * j.x.cols) as i32,
                    (j.y.row * j.y.cols) as i32,
                    then,
                    offs[0],
                    offs[1],
                    offs[2],
                    groups as i32,
                ]);
                groups += j.w.rows * tgroups;
                args.extend([
                    Arg::U(&j.w.data),
                    Arg::U(&j.w.scales),
                    Arg::F(self.buf(j.x.t)),
                    Arg::F(self.buf(j.y.t)),
                    Arg::F(ops[0]),
                    Arg::F(ops[1]),
                    Arg::F(ops[2]),
                ]);
            }
            for _ in group.len()..MM_JOBS {
                let (u, f) = (&self.dev.none_u, &self.dev.none_f);
                args.extend([
                    Arg::U(u),
                    Arg::U(u),
                    Arg::F(f),
                    Arg::F(f),
                    Arg::F(f),
                    Arg::F(f),
                    Arg::F(f),
                ]);
            }
            let desc = self.dev.desc(&desc)?;
            args.extend([
                Arg::I(&desc),
                Arg::Int(group.len() as i32),
                Arg::Int(t as i32),
            ]);
            self.dev.launch("products", groups * MM_LS, MM_LS, &args)?;
        }
        Ok(())
    }

    fn lora(&self, prec: Precision, op: Lora<Self>) -> Result<()> {
        let Lora {
            x,
            down,
            act,
            hidden,
            ups,
        } = op;
        let _ = (prec, hidden);
        if ups.len() > LORA_UPS || down.rows > LORA_MAX_HIDDEN {
            return Err(Error::Device(format!(
                "a LoRA of {} hidden values and {} up-projections: the OpenCL kernel takes at                  most {LORA_MAX_HIDDEN} and {LORA_UPS}",
                down.rows,
                ups.len()
            )));
        }
        let (act, _, _) = then_args(self, &act);
        let mut desc = vec![
            (x.row * x.cols) as i32,
            x.cols as i32,
            down.fmt,
            down.rows as i32,
            act,
            ups.len() as i32,
        ];
        let mut args = vec![
            Arg::F(self.buf(x.t)),
            Arg::U(&down.data),
            Arg::U(&down.scales),
        ];
        for up in ups.iter() {
            let (then, ops, offs) = then_args(self, &up.then);
            desc.extend([
                up.w.fmt,
                up.w.rows as i32,
                up.w.cols as i32,
                up.from as i32,
                (up.y.row * up.y.cols) as i32,
                then,
                offs[0],
                offs[1],
                offs[2],
            ]);
            args.extend([
                Arg::U(&up.w.data),
                Arg::U(&up.w.scales),
                Arg::F(self.buf(up.y.t)),
                Arg::F(ops[0]),
                Arg::F(ops[1]),
                Arg::F(ops[2]),
            ]);
        }
        for _ in ups.len()..LORA_UPS {
            let (u, f) = (&self.dev.none_u, &self.dev.none_f);
            args.extend([
                Arg::U(u),
                Arg::U(u),
                Arg::F(f),
                Arg::F(f),
                Arg::F(f),
                Arg::F(f),
            ]);
        }
        let desc = self.dev.desc(&desc)?;
        args.push(Arg::I(&desc));
        self.dev.launch("lora", x.rows * LORA_LS, LORA_LS, &args)
    }

    fn wkv6(
        &self,
        _: Precision,
        op: Wkv6<Self>,
        batch: &OclBatch,
        states: &mut [&mut DeviceState],
    ) -> Result<()> {
        let Wkv6 {
            heads,
            r,
            k,
            v,
            decay,
            decay_bias,
            w: _,
            u,
            state,
            out,
            ln_x,
            g,
            from,
        } = op;
        let d = r.cols;
        let s = d / heads;
        if s > WKV_MAX_S {
            return Err(Error::Device(format!(
                "heads of {s} channels: the OpenCL recurrence takes at most {WKV_MAX_S}"
            )));
        }
        assert!(
            r.row == k.row && k.row == v.row,
            "wkv6: r, k, v at different rows"
        );
        // A fixed decay is a LoRA of width 0: the bias alone.
        let (none_u, none_f) = (&self.dev.none_u, &self.dev.none_f);
        let (hidden, row, width, up) = match &decay {
            Decay::Lora { hidden, up } => (self.buf(hidden.t), hidden.row, hidden.cols, Some(*up)),
            Decay::Fixed => (none_f, 0, 0, None),
        };
        for (span, st) in batch.spans.iter().zip(states.iter()) {
            let local_from = from.saturating_sub(span.start);
            let g_row = g.row + span.start + local_from - from;
            let hidden_at = if width == 0 {
                0
            } else {
                (row + span.start) * width
            };
            let args = [
                Arg::F(self.buf(r.t)),
                Arg::F(self.buf(k.t)),
                Arg::F(self.buf(v.t)),
                Arg::Int(((r.row + span.start) * d) as i32),
                Arg::F(hidden),
                Arg::Int(hidden_at as i32),
                Arg::Int(width as i32),
                Arg::U(up.map_or(none_u, |m| &m.data)),
                Arg::U(up.map_or(none_u, |m| &m.scales)),
                Arg::Int(up.map_or(0, |m| m.fmt)),
                Arg::F(self.buf(decay_bias)),
                Arg::F(self.buf(u)),
                Arg::F(&st.buf),
                Arg::Int(state.start as i32),
                Arg::F(self.buf(out.t)),
                Arg::Int(((out.row + span.start) * d) as i32),
                Arg::F(self.buf(ln_x.w)),
                Arg::F(self.buf(ln_x.b)),
                Arg::Real(ln_x.eps),
                Arg::F(self.buf(g.t)),
                Arg::Int((g_row * d) as i32),
                Arg::Int(local_from as i32),
                Arg::Int(span.len() as i32),
                Arg::Int(s as i32),
            ];
            self.dev.launch("wkv6", heads * s, s, &args)?;
        }
        Ok(())
    }

    fn wkv4(
        &self,
        op: Wkv4<Self>,
        batch: &OclBatch,
        states: &mut [&mut DeviceState],
    ) -> Result<()> {
        let Wkv4 {
            k,
            v,
            r,
            w,
            u,
            state,
            out,
            from,
        } = op;
        let d = k.cols;
        assert!(
            k.row == v.row && k.row == out.row,
            "wkv4: k, v, out at different rows"
        );
        for (span, st) in batch.spans.iter().zip(states.iter()) {
            let local_from = from.saturating_sub(span.start);
            let r_row = r.row + (span.start + local_from).saturating_sub(from);
            let args = [
                Arg::F(self.buf(k.t)),
                Arg::F(self.buf(v.t)),
                Arg::Int(((k.row + span.start) * d) as i32),
                Arg::F(self.buf(r.t)),
                Arg::Int((r_row * d) as i32),
                Arg::F(self.buf(w)),
                Arg::F(self.buf(u)),
                Arg::F(&st.buf),
                Arg::Int(state.start as i32),
                Arg::F(self.buf(out.t)),
                Arg::Int(((out.row + span.start) * d) as i32),
                Arg::Int(local_from as i32),
                Arg::Int(span.len() as i32),
            ];
            let local = [64, 32, 16, 8, 4, 2, 1].into_iter().find(|l| d % l == 0);
            self.dev.launch("wkv4", d, local.unwrap_or(1), &args)?;
        }
        Ok(())
    }

    fn wkv7(
        &self,
        op: Wkv7<Self>,
        batch: &OclBatch,
        states: &mut [&mut DeviceState],
    ) -> Result<()> {
        let Wkv7 {
            heads,
            r,
            w,
            k,
            v,
            a,
            vg,
            v_first,
            k_k,
            k_a,
            r_k,
            state,
            out,
            ln_x,
            g,
            from,
        } = op;
        let d = r.cols;
        let n = d / heads;
        if n > WKV_MAX_S {
            return Err(Error::Device(format!(
                "heads of {n} channels: the OpenCL recurrence takes at most {WKV_MAX_S}"
            )));
        }
        let row = r.row;
        let rows_agree = [w.row, k.row, v.row, a.row, v_first.row]
            .iter()
            .all(|&x| x == row)
            && vg.as_ref().is_none_or(|x| x.row == row);
        assert!(rows_agree, "wkv7: the inputs at different rows");
        let none = &self.dev.none_f;
        for (span, st) in batch.spans.iter().zip(states.iter()) {
            let local_from = from.saturating_sub(span.start);
            let g_row = g.row + span.start + local_from - from;
            let args = [
                Arg::F(self.buf(r.t)),
                Arg::F(self.buf(w.t)),
                Arg::F(self.buf(k.t)),
                Arg::F(self.buf(v.t)),
                Arg::F(self.buf(a.t)),
                Arg::F(vg.as_ref().map_or(none, |x| self.buf(x.t))),
                Arg::F(self.buf(v_first.t)),
                Arg::Int(((row + span.start) * d) as i32),
                Arg::Int(vg.is_some() as i32),
                Arg::F(self.buf(k_k)),
                Arg::F(self.buf(k_a)),
                Arg::F(self.buf(r_k)),
                Arg::F(&st.buf),
                Arg::Int(state.start as i32),
                Arg::F(self.buf(out.t)),
                Arg::Int(((out.row + span.start) * d) as i32),
                Arg::F(self.buf(ln_x.w)),
                Arg::F(self.buf(ln_x.b)),
                Arg::Real(ln_x.eps),
                Arg::F(self.buf(g.t)),
                Arg::Int((g_row * d) as i32),
                Arg::Int(local_from as i32),
                Arg::Int(span.len() as i32),
                Arg::Int(n as i32),
            ];
            self.dev.launch("wkv7", heads * n, n, &args)?;
        }
        Ok(())
    }
}
