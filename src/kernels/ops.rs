//! Element-wise and row-wise operations of the transformer block.

/// out = x / sqrt(mean(x²) + eps) * weight, accumulating the mean in f64 as ggml does.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let scale = rms_scale(x, eps);
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// In-place variant of [`rms_norm`], used for the per-head Q/K norms.
pub fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let scale = rms_scale(x, eps);
    for (v, &w) in x.iter_mut().zip(weight) {
        *v = *v * scale * w;
    }
}

fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let sum_sq: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let mean = (sum_sq / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// x += y
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// SiLU: x·σ(x).
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation (the form Gemma and ggml use).
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044_715;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF_A * x * x)).tanh())
}

/// Numerically stable softmax over `x`, in place.
pub fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// How a head's dimensions are paired for rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): GGUF `llama` files (the converter permuted Q/K for it).
    Normal,
    /// Pairs (i, i + d/2): Qwen, Gemma (GPT-NeoX layout).
    Neox,
}

/// Rotates one head vector `x` (length head_dim) for position `pos`.
/// Only the first `rope_dims` dimensions rotate. `freq_factors`, when given, divides each
/// pair's frequency (Llama 3.1 long-context scaling stored as `rope_freqs.weight`).
/// The angle follows ggml: θ_i = pos · base^(−2i/rope_dims), computed by repeated
/// multiplication in f32 as ggml's rope does so that results agree to the last bits.
pub fn rope(
    x: &mut [f32],
    pos: usize,
    rope_dims: usize,
    freq_base: f32,
    style: RopeStyle,
    freq_factors: Option<&[f32]>,
) {
    let mut table = Vec::new();
    rope_table(pos, rope_dims, freq_base, freq_factors, &mut table);
    rope_with_table(x, &table, style);
}

/// (sin, cos) of every rotated pair at `pos`, shared by all heads of that position.
pub fn rope_table(
    pos: usize,
    rope_dims: usize,
    freq_base: f32,
    freq_factors: Option<&[f32]>,
    table: &mut Vec<(f32, f32)>,
) {
    table.clear();
    let theta_scale = freq_base.powf(-2.0 / rope_dims as f32);
    let mut theta = pos as f32;
    for pair in 0..rope_dims / 2 {
        let factor = freq_factors.map_or(1.0, |f| f[pair]);
        table.push((theta / factor).sin_cos());
        theta *= theta_scale;
    }
}

/// Rotates one head `x` by a table from [`rope_table`] (its length is rope_dims / 2).
pub fn rope_with_table(x: &mut [f32], table: &[(f32, f32)], style: RopeStyle) {
    let half = table.len();
    for (pair, &(sin, cos)) in table.iter().enumerate() {
        let (i0, i1) = match style {
            RopeStyle::Normal => (2 * pair, 2 * pair + 1),
            RopeStyle::Neox => (pair, pair + half),
        };
        let (a, b) = (x[i0], x[i1]);
        x[i0] = a * cos - b * sin;
        x[i1] = a * sin + b * cos;
    }
}

/// gate = act(gate) · up over a batch of (n_ff)-long rows, rows in parallel, with the
/// AVX-512 forms of SiLU and GELU where the CPU has them.
pub fn gated_activation(
    pool: &super::ThreadPool,
    gelu: bool,
    gate: &mut [f32],
    up: &[f32],
    n_ff: usize,
) {
    assert_eq!(gate.len(), up.len(), "gate and up are (rows, n_ff)");
    pool.for_chunks_mut(gate, n_ff.max(1), 8, |first, g| {
        let u = &up[first * n_ff..first * n_ff + g.len()];
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = super::cpu::Avx512::detect().filter(|_| pool.fast_kernels()) {
            if gelu {
                super::attention_avx512::gelu_mul(cpu, g, u)
            } else {
                super::attention_avx512::silu_mul(cpu, g, u)
            }
            return;
        }
        let act = if gelu { gelu_tanh } else { silu };
        for (g, &u) in g.iter_mut().zip(u) {
            *g = act(*g) * u;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_of_constant_vector_is_weight() {
        let x = [3.0f32; 8];
        let w = [0.5f32; 8];
        let mut out = [0.0f32; 8];
        rms_norm(&x, &w, 0.0, &mut out);
        for v in out {
            assert!((v - 0.5).abs() < 1e-6);
        }
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_inputs() {
        let mut x = [1000.0f32, 1001.0, 999.0, -1e30];
        softmax_in_place(&mut x);
        let sum: f32 = x.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert!(x[1] > x[0] && x[0] > x[2] && x[3] == 0.0);
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm_elsewhere() {
        let original: Vec<f32> = (0..16).map(|i| i as f32 * 0.1 - 0.7).collect();
        for style in [RopeStyle::Normal, RopeStyle::Neox] {
            let mut x = original.clone();
            rope(&mut x, 0, 16, 10000.0, style, None);
            assert_eq!(x, original);
            rope(&mut x, 37, 16, 10000.0, style, None);
            let n0: f32 = original.iter().map(|v| v * v).sum();
            let n1: f32 = x.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-4);
        }
    }

    #[test]
    fn rope_rotates_first_pair_by_position_times_one_radian() {
        let mut x = vec![1.0f32, 0.0, 0.0, 0.0];
        rope(&mut x, 2, 4, 10000.0, RopeStyle::Normal, None);
        assert!((x[0] - 2f32.cos()).abs() < 1e-6 && (x[1] - 2f32.sin()).abs() < 1e-6);
        let mut y = vec![1.0f32, 0.0, 0.0, 0.0];
        rope(&mut y, 2, 4, 10000.0, RopeStyle::Neox, None);
        assert!((y[0] - 2f32.cos()).abs() < 1e-6 && (y[2] - 2f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn silu_and_gelu_match_closed_forms() {
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert_eq!(silu(0.0), 0.0);
        assert_eq!(gelu_tanh(0.0), 0.0);
    }
}
