//! Rotary position embeddings, computed as HF transformers computes them:
//! inverse frequencies in f32, cos and sin in f32, then cast to the model dtype.

use std::f64::consts::PI;

use tch::{Device, Kind, Tensor};

use crate::config::{RopeConfig, RopeScaling};

/// Returns the `[head_dim / 2]` f32 inverse frequencies after scaling.
///
/// # Panics
/// When [`RopeScaling::FrequencyFactors`] contains a number of factors
/// other than `head_dim / 2`. The GGUF loader checks the count before a
/// model is built.
#[must_use]
pub fn inverse_frequencies(rope: &RopeConfig, head_dim: usize, device: Device) -> Tensor {
    let exponents = Tensor::arange_start_step(0, head_dim as i64, 2, (Kind::Int64, device))
        .to_kind(Kind::Float)
        / head_dim as f64;
    // HF writes `1.0 / (base ** x)`; torch evaluates a scalar divided by a
    // tensor as `reciprocal() * scalar`, which is what this mirrors.
    let inv_freq = Tensor::pow_scalar(rope.theta, &exponents).reciprocal();

    match rope.scaling {
        RopeScaling::None => inv_freq,
        RopeScaling::Linear { factor } => inv_freq / factor,
        RopeScaling::FrequencyFactors { ref factors } => {
            assert_eq!(
                factors.len() * 2,
                head_dim,
                "rope frequency factors: expected one per rotary pair of head_dim {head_dim}"
            );
            // llama.cpp divides each angle by its factor in f32 (`theta / ff`
            // in ggml's rope cache). Dividing the inverse frequencies instead
            // gives the same angles up to f32 rounding.
            let factors: Vec<f32> = factors.iter().map(|&factor| factor as f32).collect();
            inv_freq / Tensor::from_slice(&factors).to_device(device)
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: context,
        } => {
            let low_freq_wavelen = context / low_freq_factor;
            let high_freq_wavelen = context / high_freq_factor;
            let wavelen = inv_freq.reciprocal() * (2.0 * PI);

            let low_band = wavelen.gt(low_freq_wavelen);
            let scaled = (&inv_freq / factor).where_self(&low_band, &inv_freq);
            let smooth = (wavelen.reciprocal() * context - low_freq_factor)
                / (high_freq_factor - low_freq_factor);
            let smoothed: Tensor = (1.0 - &smooth) * &scaled / factor + &smooth * &scaled;
            let medium = wavelen
                .lt(high_freq_wavelen)
                .logical_not()
                .logical_and(&low_band.logical_not());
            smoothed.where_self(&medium, &scaled)
        }
    }
}

/// Returns `(cos, sin)`, each `[batch, seq, head_dim]` in `kind`, for the
/// `[batch, seq]` int64 `position_ids`.
#[must_use]
pub fn cos_sin(inv_freq: &Tensor, position_ids: &Tensor, kind: Kind) -> (Tensor, Tensor) {
    let positions = position_ids.to_kind(Kind::Float).unsqueeze(-1);
    let freqs = positions * inv_freq.view([1, 1, -1]);
    let angles = Tensor::cat(&[&freqs, &freqs], -1);
    (angles.cos().to_kind(kind), angles.sin().to_kind(kind))
}

/// Applies the rotation to `[batch, heads, seq, head_dim]` queries or keys,
/// with `cos` and `sin` of shape `[batch, seq, head_dim]`.
#[must_use]
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let cos = cos.unsqueeze(1);
    let sin = sin.unsqueeze(1);
    x * cos + rotate_half(x) * sin
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let first = x.narrow(-1, 0, half);
    let second = x.narrow(-1, half, half);
    Tensor::cat(&[&second.neg(), &first], -1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
    }

    #[test]
    fn default_frequencies() {
        let rope = RopeConfig {
            theta: 10_000.0,
            scaling: RopeScaling::None,
        };
        let inv = values(&inverse_frequencies(&rope, 4, Device::Cpu));
        assert!((inv[0] - 1.0).abs() < 1e-7);
        assert!((inv[1] - 0.01).abs() < 1e-7);
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let base = RopeConfig {
            theta: 500_000.0,
            scaling: RopeScaling::None,
        };
        let scaled = RopeConfig {
            theta: 500_000.0,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            },
        };
        let plain = values(&inverse_frequencies(&base, 128, Device::Cpu));
        let adjusted = values(&inverse_frequencies(&scaled, 128, Device::Cpu));
        // The highest frequency (wavelength 2*pi) is kept as is.
        assert_eq!(plain[0], adjusted[0]);
        // The lowest frequency's wavelength exceeds 8192 and is divided by 8.
        assert!((adjusted[63] * 8.0 / plain[63] - 1.0).abs() < 1e-6);
    }

    /// Divisors as llama.cpp's `convert_hf_to_gguf.py` derives them from the
    /// llama3 parameters: 1 above the high-frequency cutoff, `factor` below
    /// the low-frequency cutoff, the reciprocal of HF's blend in between.
    fn converter_factors(
        inv_freq: &[f32],
        factor: f64,
        low: f64,
        high: f64,
        context: f64,
    ) -> Vec<f64> {
        inv_freq
            .iter()
            .map(|&freq| {
                let wavelen = 2.0 * PI / f64::from(freq);
                if wavelen < context / high {
                    1.0
                } else if wavelen > context / low {
                    factor
                } else {
                    let smooth = (context / wavelen - low) / (high - low);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                }
            })
            .collect()
    }

    #[test]
    fn frequency_factors_reproduce_llama3_scaling() {
        let theta = 500_000.0;
        let plain = RopeConfig {
            theta,
            scaling: RopeScaling::None,
        };
        let llama3 = RopeConfig {
            theta,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            },
        };
        let base = values(&inverse_frequencies(&plain, 128, Device::Cpu));
        let factors = converter_factors(&base, 8.0, 1.0, 4.0, 8192.0);
        // Llama-3.1-8B has high, blended and low frequencies.
        assert!(factors.iter().any(|&f| f == 1.0));
        assert!(factors.iter().any(|&f| f > 1.0 && f < 8.0));
        assert!(factors.iter().any(|&f| f == 8.0));

        let divided = RopeConfig {
            theta,
            scaling: RopeScaling::FrequencyFactors { factors },
        };
        let want = values(&inverse_frequencies(&llama3, 128, Device::Cpu));
        let got = values(&inverse_frequencies(&divided, 128, Device::Cpu));
        for (i, (got, want)) in got.iter().zip(&want).enumerate() {
            // A few f32 roundings apart: HF multiplies by the blend, this divides.
            assert!(
                (got / want - 1.0).abs() < 1e-6,
                "frequency {i}: {got} vs {want}"
            );
        }
    }
}
