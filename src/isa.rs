//! The instruction sets of this CPU, detected once. Both the weight storage (its vectorised
//! quantizers) and the CPU backend choose their code here, so this module sits below both.

use std::sync::OnceLock;

/// The vector instruction set the CPU kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F (with AVX2, FMA and F16C, which every AVX-512 CPU has).
    Avx512,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// `wide` (SSE2 on x86-64, NEON on aarch64...).
    Portable,
}

impl Isa {
    /// The best the CPU has, detected once; `RWKV_ISA=portable|avx2|avx512` lowers it (for
    /// benchmarks and tests), never past what the CPU has.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Isa::best();
            match std::env::var("RWKV_ISA").as_deref() {
                Ok("portable") => Isa::Portable,
                Ok("avx2") if best != Isa::Portable => Isa::Avx2,
                _ => best,
            }
        })
    }

    /// What the CPU supports.
    pub fn best() -> Isa {
        let f = features();
        if f.avx512f {
            Isa::Avx512
        } else if f.avx2 {
            Isa::Avx2
        } else {
            Isa::Portable
        }
    }

    /// Whether this CPU can run `self`.
    pub fn runs_here(self) -> bool {
        matches!(
            (self, Isa::best()),
            (Isa::Portable, _) | (Isa::Avx2, Isa::Avx2 | Isa::Avx512) | (Isa::Avx512, Isa::Avx512)
        )
    }

    /// Every instruction set this CPU can run (for tests).
    pub fn available() -> Vec<Isa> {
        match Isa::best() {
            Isa::Avx512 => vec![Isa::Avx512, Isa::Avx2, Isa::Portable],
            Isa::Avx2 => vec![Isa::Avx2, Isa::Portable],
            Isa::Portable => vec![Isa::Portable],
        }
    }
}

/// The x86-64 extensions the kernels look for (all false elsewhere).
#[derive(Debug, Clone, Copy, Default)]
pub struct Features {
    pub avx512f: bool,
    /// AVX2 with FMA and F16C.
    pub avx2: bool,
    /// AVX-512 byte and word instructions.
    pub avx512bw: bool,
    /// `vpdpbusd` / `vpdpwssd`.
    pub avx512vnni: bool,
    /// `vpermb`.
    pub avx512vbmi: bool,
    /// `vdpbf16ps` and `vcvtneps2bf16`.
    pub avx512bf16: bool,
}

/// This CPU's extensions, detected once.
pub fn features() -> Features {
    static F: OnceLock<Features> = OnceLock::new();
    *F.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Features {
    let avx512f = is_x86_feature_detected!("avx512f");
    Features {
        avx512f,
        avx2: is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"),
        avx512bw: avx512f && is_x86_feature_detected!("avx512bw"),
        avx512vnni: avx512f && is_x86_feature_detected!("avx512vnni"),
        avx512vbmi: avx512f && is_x86_feature_detected!("avx512vbmi"),
        avx512bf16: avx512f
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Features {
    Features::default()
}
