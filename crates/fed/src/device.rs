//! Device profiles (what a participant's machine can do) and fleets (which participant
//! runs on which profile). Profiles are data: serde, loadable from JSON config.
//!
//! Units: bytes, FLOP/s, bytes/s. The built-in presets take peak numbers from the
//! vendor data sheets and derate them to a sustained fraction:
//!
//! | preset    | memory | peak FP16 tensor, FP32 accumulate, dense | PCIe          |
//! |-----------|--------|------------------------------------------|---------------|
//! | `rtx3060` | 12 GiB | 25.5 TFLOP/s (28 SM × 1.777 GHz × 512)   | 4.0 x16       |
//! | `rtx3080` | 10 GiB | 59.5 TFLOP/s (68 SM × 1.710 GHz × 512)   | 4.0 x16       |
//! | `rtx4070` | 12 GiB | 58.3 TFLOP/s (46 SM × 2.475 GHz × 512)   | 4.0 x16       |
//! | `rtx4090` | 24 GiB | 165.2 TFLOP/s (128 SM × 2.520 GHz × 512) | 4.0 x16       |
//!
//! - `train_flops` = 35 % of that peak ([`TRAIN_DERATE`]): mixed-precision training of
//!   small-batch transformer layers sustains roughly a third of tensor peak.
//! - `quant_forward_flops` = 25 % ([`QUANT_DERATE`]): INT4/INT8 forward kernels spend
//!   time dequantising and reach lower utilisation than dense GEMM.
//! - PCIe 4.0 x16 is 31.5 GB/s per direction on paper; 25 GB/s effective.
//! - Home link: 20 Mbit/s up (2.5 MB/s), 100 Mbit/s down (12.5 MB/s).
//! - `cpu`: a small shared CPU like the development machine, 0.1 TFLOP/s training,
//!   0.05 TFLOP/s quantized forward, 16 GiB memory, "PCIe" = 20 GB/s host memory.

use rand::distributions::{Distribution, WeightedIndex};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::ParticipantId;

/// Sustained fraction of peak tensor throughput charged for training.
pub const TRAIN_DERATE: f64 = 0.35;
/// Sustained fraction of peak tensor throughput charged for quantized forward passes.
pub const QUANT_DERATE: f64 = 0.25;

const GIB: u64 = 1 << 30;
const PCIE4_X16_EFFECTIVE: f64 = 25e9;
const HOME_UPLINK: f64 = 20e6 / 8.0;
const HOME_DOWNLINK: f64 = 100e6 / 8.0;

/// What one participant's machine can do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceProfile {
    pub name: String,
    /// Accelerator (or host, for CPUs) memory, bytes.
    pub memory_bytes: u64,
    /// Sustained training throughput, FLOP/s.
    pub train_flops: f64,
    /// Sustained quantized-forward throughput, FLOP/s.
    pub quant_forward_flops: f64,
    /// Host ↔ device bandwidth, bytes/s.
    pub pcie_bytes_per_s: f64,
    /// Participant → coordinator bandwidth, bytes/s.
    pub uplink_bytes_per_s: f64,
    /// Coordinator → participant bandwidth, bytes/s.
    pub downlink_bytes_per_s: f64,
}

impl DeviceProfile {
    /// Every rate must be finite and > 0, and memory > 0.
    pub fn validate(&self) -> Result<()> {
        if self.memory_bytes == 0 {
            return Err(Error::config(
                format!("device `{}`.memory_bytes", self.name),
                "must be > 0, got 0",
            ));
        }
        for (field, v) in [
            ("train_flops", self.train_flops),
            ("quant_forward_flops", self.quant_forward_flops),
            ("pcie_bytes_per_s", self.pcie_bytes_per_s),
            ("uplink_bytes_per_s", self.uplink_bytes_per_s),
            ("downlink_bytes_per_s", self.downlink_bytes_per_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(
                    format!("device `{}`.{field}", self.name),
                    format!("must be finite and > 0, got {v}"),
                ));
            }
        }
        Ok(())
    }

    /// A device whose every rate (FLOP/s and bytes/s) is `rate`: toy fleets whose
    /// virtual times are easy to compute by hand.
    pub fn uniform(name: impl Into<String>, memory_bytes: u64, rate: f64) -> Self {
        DeviceProfile {
            name: name.into(),
            memory_bytes,
            train_flops: rate,
            quant_forward_flops: rate,
            pcie_bytes_per_s: rate,
            uplink_bytes_per_s: rate,
            downlink_bytes_per_s: rate,
        }
    }

    /// A consumer GPU on PCIe 4.0 x16 and a home link, from its peak tensor throughput.
    fn consumer_gpu(name: &str, memory_gib: u64, peak_tensor_flops: f64) -> Self {
        DeviceProfile {
            name: name.to_string(),
            memory_bytes: memory_gib * GIB,
            train_flops: TRAIN_DERATE * peak_tensor_flops,
            quant_forward_flops: QUANT_DERATE * peak_tensor_flops,
            pcie_bytes_per_s: PCIE4_X16_EFFECTIVE,
            uplink_bytes_per_s: HOME_UPLINK,
            downlink_bytes_per_s: HOME_DOWNLINK,
        }
    }

    pub fn rtx3060() -> Self {
        Self::consumer_gpu("rtx3060", 12, 25.5e12)
    }
    pub fn rtx3080() -> Self {
        Self::consumer_gpu("rtx3080", 10, 59.5e12)
    }
    pub fn rtx4070() -> Self {
        Self::consumer_gpu("rtx4070", 12, 58.3e12)
    }
    pub fn rtx4090() -> Self {
        Self::consumer_gpu("rtx4090", 24, 165.2e12)
    }
    pub fn cpu() -> Self {
        DeviceProfile {
            name: "cpu".to_string(),
            memory_bytes: 16 * GIB,
            train_flops: 0.1e12,
            quant_forward_flops: 0.05e12,
            pcie_bytes_per_s: 20e9,
            uplink_bytes_per_s: HOME_UPLINK,
            downlink_bytes_per_s: HOME_DOWNLINK,
        }
    }

    /// A built-in profile by name (`rtx3060`, `rtx3080`, `rtx4070`, `rtx4090`, `cpu`).
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "rtx3060" => Ok(Self::rtx3060()),
            "rtx3080" => Ok(Self::rtx3080()),
            "rtx4070" => Ok(Self::rtx4070()),
            "rtx4090" => Ok(Self::rtx4090()),
            "cpu" => Ok(Self::cpu()),
            other => Err(Error::config(
                "device",
                format!(
                    "unknown preset `{other}`, expected one of rtx3060, rtx3080, rtx4070, rtx4090, cpu"
                ),
            )),
        }
    }
}

/// The built-in consumer-GPU fleet, in preset order.
pub fn builtin_fleet() -> Vec<DeviceProfile> {
    vec![
        DeviceProfile::rtx3060(),
        DeviceProfile::rtx3080(),
        DeviceProfile::rtx4070(),
        DeviceProfile::rtx4090(),
    ]
}

/// How participants are mapped onto a fleet's profiles.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Assignment {
    /// The i-th participant (by id) gets profile `i mod n_profiles`.
    RoundRobin,
    /// Each participant (by id) draws a profile with probability ∝ `weights`.
    Weighted { weights: Vec<f64>, seed: u64 },
}

/// A set of device profiles and the rule assigning them to participants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetConfig {
    pub profiles: Vec<DeviceProfile>,
    pub assignment: Assignment,
}

impl FleetConfig {
    /// Parse a fleet from JSON and validate it.
    pub fn from_json(text: &str) -> Result<Self> {
        let fleet: FleetConfig =
            serde_json::from_str(text).map_err(|e| Error::json("fleet config", e))?;
        fleet.validate()?;
        Ok(fleet)
    }

    pub fn validate(&self) -> Result<()> {
        if self.profiles.is_empty() {
            return Err(Error::config("fleet.profiles", "must not be empty"));
        }
        for p in &self.profiles {
            p.validate()?;
        }
        if let Assignment::Weighted { weights, .. } = &self.assignment {
            if weights.len() != self.profiles.len() {
                return Err(Error::config(
                    "fleet.assignment.weights",
                    format!(
                        "expected one weight per profile ({}), got {}",
                        self.profiles.len(),
                        weights.len()
                    ),
                ));
            }
            if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0))
                || weights.iter().sum::<f64>() <= 0.0
            {
                return Err(Error::config(
                    "fleet.assignment.weights",
                    format!("must be finite, >= 0 and not all 0, got {weights:?}"),
                ));
            }
        }
        Ok(())
    }

    /// The profile of each participant, in ascending id order.
    pub fn assign(
        &self,
        participants: &[ParticipantId],
    ) -> Result<Vec<(ParticipantId, DeviceProfile)>> {
        self.validate()?;
        let mut ids = participants.to_vec();
        ids.sort();
        match &self.assignment {
            Assignment::RoundRobin => Ok(ids
                .iter()
                .enumerate()
                .map(|(i, id)| (*id, self.profiles[i % self.profiles.len()].clone()))
                .collect()),
            Assignment::Weighted { weights, seed } => {
                let dist = WeightedIndex::new(weights)
                    .map_err(|e| Error::config("fleet.assignment.weights", e.to_string()))?;
                let mut rng = StdRng::seed_from_u64(*seed);
                Ok(ids
                    .iter()
                    .map(|id| (*id, self.profiles[dist.sample(&mut rng)].clone()))
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_derated_data_sheet_numbers() {
        let p = DeviceProfile::rtx4090();
        assert_eq!(p.memory_bytes, 24 * (1 << 30));
        assert!((p.train_flops - 0.35 * 165.2e12).abs() < 1.0);
        assert!((p.quant_forward_flops - 0.25 * 165.2e12).abs() < 1.0);
        assert_eq!(p.uplink_bytes_per_s, 2.5e6);
        assert_eq!(p.downlink_bytes_per_s, 12.5e6);
        for p in builtin_fleet().iter().chain([&DeviceProfile::cpu()]) {
            p.validate().unwrap();
            assert_eq!(&DeviceProfile::preset(&p.name).unwrap(), p);
        }
        // A faster card trains faster.
        assert!(DeviceProfile::rtx3060().train_flops < DeviceProfile::rtx3080().train_flops);
        let err = DeviceProfile::preset("h100").unwrap_err().to_string();
        assert!(err.contains("unknown preset `h100`"), "{err}");
    }

    #[test]
    fn round_robin_assigns_by_sorted_id() {
        let fleet = FleetConfig {
            profiles: vec![DeviceProfile::rtx3060(), DeviceProfile::rtx4090()],
            assignment: Assignment::RoundRobin,
        };
        let ids = [ParticipantId(5), ParticipantId(1), ParticipantId(3)];
        let names: Vec<(u32, String)> = fleet
            .assign(&ids)
            .unwrap()
            .into_iter()
            .map(|(id, p)| (id.0, p.name))
            .collect();
        assert_eq!(
            names,
            vec![
                (1, "rtx3060".into()),
                (3, "rtx4090".into()),
                (5, "rtx3060".into())
            ]
        );
    }

    #[test]
    fn weighted_assignment_is_seeded_and_respects_zero_weights() {
        let fleet = FleetConfig {
            profiles: builtin_fleet(),
            assignment: Assignment::Weighted {
                weights: vec![1.0, 0.0, 3.0, 0.0],
                seed: 7,
            },
        };
        let ids: Vec<ParticipantId> = (0..200).map(ParticipantId).collect();
        let a = fleet.assign(&ids).unwrap();
        assert_eq!(a, fleet.assign(&ids).unwrap());
        let n_4070 = a.iter().filter(|(_, p)| p.name == "rtx4070").count();
        assert!(a
            .iter()
            .all(|(_, p)| p.name == "rtx3060" || p.name == "rtx4070"));
        // Expected 150 of 200; a seeded draw far outside that would mean wrong weights.
        assert!((120..=180).contains(&n_4070), "{n_4070}");
    }

    #[test]
    fn fleet_loads_from_json_and_validates() {
        let json = r#"{
            "profiles": [{"name": "lab", "memory_bytes": 1000, "train_flops": 1e12,
                          "quant_forward_flops": 1e12, "pcie_bytes_per_s": 1e9,
                          "uplink_bytes_per_s": 1e6, "downlink_bytes_per_s": 1e6}],
            "assignment": {"kind": "round_robin"}
        }"#;
        let fleet = FleetConfig::from_json(json).unwrap();
        assert_eq!(fleet.profiles[0].name, "lab");
        let bad = json.replace("\"train_flops\": 1e12", "\"train_flops\": 0");
        let err = FleetConfig::from_json(&bad).unwrap_err().to_string();
        assert!(err.contains("device `lab`.train_flops"), "{err}");
        let mismatched = FleetConfig {
            profiles: builtin_fleet(),
            assignment: Assignment::Weighted {
                weights: vec![1.0],
                seed: 0,
            },
        };
        let err = mismatched.validate().unwrap_err().to_string();
        assert!(err.contains("fleet.assignment.weights"), "{err}");
    }
}
