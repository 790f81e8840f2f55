//! Per-layer merged-slot counts, FLUX §5, METHOD.md Eq. 1.
//!
//! A participant can hold `B_non` merged experts in total. Layer `l` (1-based, of `L`)
//! gets the weight `b^l = (L − l + 1) / v^l`, where `v^l` is the variance of the
//! activation shares `f_e` over the layer's experts plus a floor. Shallow layers
//! (small `l`) and layers whose activation is spread evenly (small `v^l`) therefore
//! get more slots, as their merged experts stand in for more of the routed traffic.
//! `B_non(l) = max(1, ⌊b^l / Σ_k b^k · B_non⌋)`, capped by the layer's non-tuning
//! count; leftover slots are then handed out by largest remainder.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How `B_non` merged slots are spread over layers. Default `LayerAware` (METHOD.md Eq. 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SlotRule {
    /// `b^l = (L − l + 1) / v^l`: shallow and evenly activated layers get more slots.
    #[default]
    LayerAware,
    /// The same share `B_non / L` for every layer (ablation).
    Uniform,
    /// One merged expert per layer whatever `B_non` is (ablation).
    OnePerLayer,
}

/// Per-layer merged-slot counts.
///
/// `freqs[l]` holds the activation shares `f_e` of layer `l`'s experts (summing to about 1),
/// `non_tuning[l]` the number of non-tuning experts of layer `l` (0 gives the layer 0 slots),
/// `b_non` the merged slots available in total and `var_floor` (default 1e-6) is added to
/// every layer's population variance `v^l`.
///
/// Only layers with at least one non-tuning expert ("eligible" layers) take part in the
/// sum `Σ_k b^k` and in the uniform share `B_non / L`, so that no slot is given to a layer
/// that cannot use it; the depth `l` and `L` still count every layer given.
/// - `LayerAware`: share `s_l = b^l / Σ_k b^k · b_non`, then `max(1, ⌊s_l⌋)`.
/// - `Uniform`: share `s_l = b_non / L`, then `max(1, ⌊s_l⌋)`.
/// - `OnePerLayer`: 1 per eligible layer, no redistribution.
///
/// Every count is capped at `non_tuning[l]`. If the `max(1, ·)` step pushes the total above
/// `b_non`, slots are taken back one at a time from layers holding more than one, largest
/// `slots − s_l` first (deepest layer on ties); the total exceeds `b_non` only when there are
/// more eligible layers than `b_non`. Leftover slots are then handed out one at a time to the
/// layer with the largest `s_l − slots` that is below its cap (lowest index on ties), which is
/// the largest fractional remainder for `LayerAware` and the lowest layer index for `Uniform`.
///
/// Errors with [`Error::Input`] on a length mismatch, non-finite shares, or more non-tuning
/// experts than a layer has shares, and with [`Error::Config`] on a negative or non-finite
/// `var_floor` or on a zero `v^l + var_floor`.
pub fn layer_slots(
    freqs: &[Vec<f64>],
    non_tuning: &[usize],
    b_non: usize,
    rule: SlotRule,
    var_floor: f64,
) -> Result<Vec<usize>> {
    let n_layers = freqs.len();
    if non_tuning.len() != n_layers {
        return Err(Error::Input(format!(
            "layer slots: {n_layers} layers of activation shares but {} non-tuning counts",
            non_tuning.len()
        )));
    }
    if !(var_floor.is_finite() && var_floor >= 0.0) {
        return Err(Error::config(
            "var_floor",
            format!("must be finite and >= 0, got {var_floor}"),
        ));
    }
    let mut weights = vec![0.0; n_layers];
    for (layer_idx, (f, &n_non)) in freqs.iter().zip(non_tuning).enumerate() {
        if let Some(bad) = f.iter().find(|v| !v.is_finite()) {
            return Err(Error::Input(format!(
                "layer slots: layer {layer_idx} has a non-finite activation share {bad}"
            )));
        }
        if n_non > f.len() {
            return Err(Error::Input(format!(
                "layer slots: layer {layer_idx} has {n_non} non-tuning experts but {} shares",
                f.len()
            )));
        }
        if n_non == 0 {
            continue;
        }
        weights[layer_idx] = match rule {
            SlotRule::LayerAware => {
                let v = variance(f) + var_floor;
                if v <= 0.0 {
                    return Err(Error::config(
                        "var_floor",
                        format!("layer {layer_idx} has zero activation variance; use a floor > 0"),
                    ));
                }
                (n_layers - layer_idx) as f64 / v
            }
            SlotRule::Uniform | SlotRule::OnePerLayer => 1.0,
        };
    }
    let total_weight: f64 = weights.iter().sum();
    if total_weight == 0.0 {
        return Ok(vec![0; n_layers]);
    }
    if rule == SlotRule::OnePerLayer {
        return Ok(non_tuning.iter().map(|&n| n.min(1)).collect());
    }
    let share: Vec<f64> = weights
        .iter()
        .map(|w| w * b_non as f64 / total_weight)
        .collect();
    // The small slack keeps a share such as 2.9999999999 (an exact 3 up to rounding) at 3.
    let mut slots: Vec<usize> = (0..n_layers)
        .map(|l| {
            ((share[l] + 1e-9).floor() as usize)
                .max(1)
                .min(non_tuning[l])
        })
        .collect();
    let mut total: usize = slots.iter().sum();
    while total > b_non {
        let over = (0..n_layers)
            .filter(|&l| slots[l] > 1)
            .max_by(|&a, &b| (slots[a] as f64 - share[a]).total_cmp(&(slots[b] as f64 - share[b])));
        let Some(l) = over else { break };
        slots[l] -= 1;
        total -= 1;
    }
    while total < b_non {
        // `max_by` keeps the last maximum, so scan from the deepest layer to favour low indices.
        let under = (0..n_layers)
            .rev()
            .filter(|&l| slots[l] < non_tuning[l])
            .max_by(|&a, &b| (share[a] - slots[a] as f64).total_cmp(&(share[b] - slots[b] as f64)));
        let Some(l) = under else { break };
        slots[l] += 1;
        total += 1;
    }
    Ok(slots)
}

/// Population variance `(1/n) Σ (f − mean)²`; 0 for an empty slice.
fn variance(f: &[f64]) -> f64 {
    if f.is_empty() {
        return 0.0;
    }
    let mean = f.iter().sum::<f64>() / f.len() as f64;
    f.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / f.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    // Eight experts each. Variances: four evenly used 1/64, one-hot 7/64.
    fn even() -> Vec<f64> {
        vec![0.25, 0.25, 0.25, 0.25, 0.0, 0.0, 0.0, 0.0]
    }
    fn skewed() -> Vec<f64> {
        vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    }

    #[test]
    fn layer_aware_hand_case() {
        // b = 3·64 = 192, 2·64/7 = 18.29, 1·64 = 64; Σ = 274.29;
        // shares of 8: 5.6, 0.53, 1.87 → [5, max(1, 0), 1] = 7 → leftover to layer 3 (0.87).
        let freqs = vec![even(), skewed(), even()];
        let slots = layer_slots(&freqs, &[8, 8, 8], 8, SlotRule::LayerAware, 0.0).unwrap();
        assert_eq!(slots, vec![5, 1, 2]);
        // The default floor changes nothing here.
        let slots = layer_slots(&freqs, &[8, 8, 8], 8, SlotRule::LayerAware, 1e-6).unwrap();
        assert_eq!(slots, vec![5, 1, 2]);
        // Capped at 4: [4, 1, 1], leftovers by s_l − slots: layer 3 (0.87), then layer 3
        // again (−0.13 beats layer 2's −0.47).
        let slots = layer_slots(&freqs, &[4, 4, 4], 8, SlotRule::LayerAware, 0.0).unwrap();
        assert_eq!(slots, vec![4, 1, 3]);
    }

    #[test]
    fn layer_aware_takes_back_what_the_floor_of_one_adds() {
        // b = 192, 18.29, 9.14; shares of 4: 3.5, 0.33, 0.17 → [3, 1, 1] = 5 > 4 → [2, 1, 1].
        let freqs = vec![even(), skewed(), skewed()];
        let slots = layer_slots(&freqs, &[4, 4, 4], 4, SlotRule::LayerAware, 0.0).unwrap();
        assert_eq!(slots, vec![2, 1, 1]);
    }

    #[test]
    fn floor_of_one_may_exceed_b_non_only_when_layers_outnumber_it() {
        for rule in [
            SlotRule::LayerAware,
            SlotRule::Uniform,
            SlotRule::OnePerLayer,
        ] {
            let slots = layer_slots(&[even(), even(), even()], &[4, 4, 4], 2, rule, 1e-6).unwrap();
            assert_eq!(slots, vec![1, 1, 1], "{rule:?}");
        }
    }

    /// With one merged slot per eligible layer to give (the ablations suite's B_non of
    /// 30 on a 30-layer model), the floor of one leaves the rules nothing to differ on.
    #[test]
    fn as_many_slots_as_layers_is_one_per_layer_under_every_rule() {
        let freqs = vec![even(), skewed(), even(), skewed()];
        for rule in [
            SlotRule::LayerAware,
            SlotRule::Uniform,
            SlotRule::OnePerLayer,
        ] {
            let slots = layer_slots(&freqs, &[3, 3, 3, 3], 4, rule, 1e-6).unwrap();
            assert_eq!(slots, vec![1, 1, 1, 1], "{rule:?}");
        }
    }

    #[test]
    fn uniform_and_one_per_layer_hand_cases() {
        let freqs = vec![even(), skewed(), even()];
        let uniform = |caps: &[usize]| layer_slots(&freqs, caps, 8, SlotRule::Uniform, 1e-6);
        // ⌊8/3⌋ = 2 each, leftovers to the lowest indices.
        assert_eq!(uniform(&[4, 4, 4]).unwrap(), vec![3, 3, 2]);
        // Capped at 1: leftovers cycle over the other layers, lowest index first.
        assert_eq!(uniform(&[1, 4, 4]).unwrap(), vec![1, 4, 3]);
        // A layer without non-tuning experts gets nothing and does not dilute the share.
        assert_eq!(uniform(&[0, 4, 4]).unwrap(), vec![0, 4, 4]);
        let one = layer_slots(&freqs, &[0, 4, 4], 8, SlotRule::OnePerLayer, 1e-6).unwrap();
        assert_eq!(one, vec![0, 1, 1]);
    }

    #[test]
    fn caps_and_total_are_honoured() {
        let freqs = vec![even(), skewed(), even(), skewed()];
        for rule in [SlotRule::LayerAware, SlotRule::Uniform] {
            for b_non in 4..20 {
                let caps = [2, 3, 0, 5];
                let slots = layer_slots(&freqs, &caps, b_non, rule, 1e-6).unwrap();
                assert!(slots.iter().zip(&caps).all(|(s, c)| s <= c), "{slots:?}");
                assert_eq!(
                    slots.iter().sum::<usize>(),
                    b_non.min(10),
                    "{rule:?} {b_non}"
                );
            }
        }
    }

    #[test]
    fn shallow_and_even_layers_get_more() {
        let same = vec![skewed(), skewed(), skewed()];
        let slots = layer_slots(&same, &[8, 8, 8], 12, SlotRule::LayerAware, 1e-6).unwrap();
        assert!(slots[0] > slots[1] && slots[1] > slots[2], "{slots:?}");
        let slots = layer_slots(&[skewed(), even()], &[8, 8], 8, SlotRule::LayerAware, 1e-6);
        let slots = slots.unwrap();
        assert!(slots[1] > slots[0], "{slots:?}");
    }

    #[test]
    fn bad_input_is_an_error() {
        let lens = layer_slots(&[even()], &[1, 1], 2, SlotRule::LayerAware, 1e-6);
        assert!(matches!(lens, Err(Error::Input(_))));
        let nan = layer_slots(&[vec![f64::NAN, 1.0]], &[1], 2, SlotRule::LayerAware, 1e-6);
        assert!(matches!(nan, Err(Error::Input(_))));
        let zero_var = layer_slots(&[vec![0.5, 0.5]], &[2], 2, SlotRule::LayerAware, 0.0);
        assert!(matches!(zero_var, Err(Error::Config { .. })));
    }
}
