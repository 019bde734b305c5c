//! Proof, in a type, that the running CPU has an instruction set.
//!
//! A token is a zero-sized value that only [`detect`](Avx2::detect) makes, and only when
//! the CPU reports every feature it names; the kernels' safe entry points take a token, so
//! no safe function relies on its caller having checked the CPU. The `#[target_feature]`
//! kernels themselves are private and called only from those entry points.
//!
//! Our own tokens rather than `pulp`'s `V3`/`V4`: the kernels that carry most of the time
//! need AVX-512 VNNI (`vpdpbusd`) and VBMI (byte permutes), which pulp's tokens do not
//! cover (V4 is F/BW/CD/DQ/VL), so we would need our own for those anyway; and our kernels
//! are written with `std::arch` intrinsics, not pulp's portable SIMD types, so pulp would
//! add a dependency tree (num-complex, libm, raw-cpuid, …) for the few lines below.

use std::sync::LazyLock;

macro_rules! cpu_token {
    ($(#[$doc:meta])* $name:ident: $($feature:tt),+) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name(());

        impl $name {
            /// The token, when the running CPU has every one of these features (checked once
            /// per process).
            pub fn detect() -> Option<Self> {
                static HAS_ALL: LazyLock<bool> =
                    LazyLock::new(|| $(is_x86_feature_detected!($feature))&&+);
                HAS_ALL.then_some(Self(()))
            }
        }
    };
}

cpu_token!(
    /// AVX2, FMA and F16C: the 256-bit dot products, activation quantization and attention.
    Avx2: "avx2", "fma", "f16c"
);
cpu_token!(
    /// AVX-512 F and DQ with FMA and F16C: the 512-bit attention, softmax and gated
    /// activations.
    Avx512: "avx512f", "avx512dq", "fma", "f16c"
);
cpu_token!(
    /// AVX-512 F, BW and VNNI with FMA and F16C: the interleaved-row matrix kernels.
    Avx512Vnni: "avx512f", "avx512bw", "avx512vnni", "fma", "f16c"
);
cpu_token!(
    /// AVX-512 F, BW, VNNI and VBMI with FMA and F16C: the matrix kernels that unpack weights
    /// read in place from the file (VBMI's byte permutes pick the quants out of each block).
    Avx512Vbmi: "avx512f", "avx512bw", "avx512vnni", "avx512vbmi", "fma", "f16c"
);
