//! What the CPU backend's kernels may use on an instruction set, derived once from the
//! CPU's features: the one place the backend reads them. The plan ([`super::plan`]) and
//! every dispatcher ask these questions, and no other.

use crate::isa::{features, Isa};

/// The kernels an instruction set can run on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub isa: Isa,
    /// `vdpbf16ps`: AVX-512 in use on a CPU with AVX-512 BF16.
    pub bf16_dot: bool,
    /// The AVX-512 int8 dots: AVX-512 BW.
    pub q8_dots: bool,
    /// The AVX-512 nf4 dots: BW, VNNI and VBMI (byte permutes look up the codes).
    pub nf4_dots: bool,
    /// Activations rounded to integers in AVX-512: BW and VNNI.
    pub quantize: bool,
    /// The int8 panel kernel: BW and VNNI.
    pub q8_panels: bool,
    /// The nf4 panel kernel: BW, VNNI and VBMI.
    pub nf4_panels: bool,
}

impl Caps {
    /// What `isa` can run here (nothing beyond its own vectors unless it is AVX-512).
    pub fn of(isa: Isa) -> Caps {
        let f = features();
        let avx512 = isa == Isa::Avx512;
        let vnni = avx512 && f.avx512bw && f.avx512vnni;
        Caps {
            isa,
            bf16_dot: avx512 && f.avx512bf16,
            q8_dots: avx512 && f.avx512bw,
            nf4_dots: vnni && f.avx512vbmi,
            quantize: vnni,
            q8_panels: vnni,
            nf4_panels: vnni && f.avx512vbmi,
        }
    }

    /// The integer panel kernel for int8 (`nf4` false) or nf4 rows.
    pub fn panels(self, nf4: bool) -> bool {
        if nf4 {
            self.nf4_panels
        } else {
            self.q8_panels
        }
    }

    /// The AVX-512 one-token dots for int8 (`nf4` false) or nf4 rows.
    pub fn dots(self, nf4: bool) -> bool {
        if nf4 {
            self.nf4_dots
        } else {
            self.q8_dots
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_avx512_no_avx512_kernel_runs() {
        for isa in [Isa::Avx2, Isa::Portable] {
            let c = Caps::of(isa);
            let any = c.bf16_dot || c.q8_dots || c.nf4_dots || c.quantize;
            assert!(
                !any && !c.panels(false) && !c.panels(true),
                "{isa:?}: {c:?}"
            );
        }
        let c = Caps::of(Isa::Avx512);
        assert!(!c.nf4_panels || (c.q8_panels && c.nf4_dots), "{c:?}");
    }
}
