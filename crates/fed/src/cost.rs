//! The cost model of the virtual clock: work done → seconds on a device.
//!
//! For a [`WorkCost`] on a [`DeviceProfile`], each phase takes work ÷ rate:
//! - compute  = `flops / train_flops`            (FLOP ÷ FLOP/s)
//! - quant    = `quant_flops / quant_forward_flops`
//! - pcie     = `pcie_bytes / pcie_bytes_per_s`  (host ↔ device traffic, e.g. offloading)
//! - upload   = `up_bytes / uplink_bytes_per_s`
//! - download = `down_bytes / downlink_bytes_per_s`
//!
//! and `total` is their plain sum: phases are charged as if serial. Overlap (say,
//! PCIe transfers hidden behind compute) is the caller's to model by reporting less work.

use std::ops::{Add, AddAssign};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::device::DeviceProfile;
use crate::error::{Error, Result};

/// Work done by one participant (or the server) in one round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkCost {
    /// Full-precision compute (forward + backward + optimizer), FLOP.
    pub flops: f64,
    /// Quantized forward compute (profiling), FLOP.
    pub quant_flops: f64,
    /// Bytes moved between host and device memory.
    pub pcie_bytes: u64,
    /// Bytes sent to the coordinator.
    pub up_bytes: u64,
    /// Bytes received from the coordinator.
    pub down_bytes: u64,
}

/// Seconds per phase of a [`WorkCost`] on one device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseTimes {
    pub compute: f64,
    pub quant: f64,
    pub pcie: f64,
    pub upload: f64,
    pub download: f64,
    pub total: f64,
}

impl WorkCost {
    /// Seconds this work takes on `profile`; errs on negative or non-finite FLOP counts
    /// and on a profile with a non-positive rate.
    pub fn seconds(&self, profile: &DeviceProfile) -> Result<PhaseTimes> {
        profile.validate()?;
        for (field, v) in [("flops", self.flops), ("quant_flops", self.quant_flops)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::config(
                    format!("work_cost.{field}"),
                    format!("must be finite and >= 0, got {v}"),
                ));
            }
        }
        let compute = self.flops / profile.train_flops;
        let quant = self.quant_flops / profile.quant_forward_flops;
        let pcie = self.pcie_bytes as f64 / profile.pcie_bytes_per_s;
        let upload = self.up_bytes as f64 / profile.uplink_bytes_per_s;
        let download = self.down_bytes as f64 / profile.downlink_bytes_per_s;
        Ok(PhaseTimes {
            compute,
            quant,
            pcie,
            upload,
            download,
            total: 0.0,
        }
        .totalled())
    }
}

impl PhaseTimes {
    /// These phases with `total` set to their plain sum (phases are charged as if
    /// serial).
    pub fn totalled(mut self) -> PhaseTimes {
        self.total = self.compute + self.quant + self.pcie + self.upload + self.download;
        self
    }
}

impl Add for WorkCost {
    type Output = WorkCost;
    fn add(self, rhs: WorkCost) -> WorkCost {
        WorkCost {
            flops: self.flops + rhs.flops,
            quant_flops: self.quant_flops + rhs.quant_flops,
            pcie_bytes: self.pcie_bytes + rhs.pcie_bytes,
            up_bytes: self.up_bytes + rhs.up_bytes,
            down_bytes: self.down_bytes + rhs.down_bytes,
        }
    }
}

impl AddAssign for WorkCost {
    fn add_assign(&mut self, rhs: WorkCost) {
        *self = *self + rhs;
    }
}

/// Bytes of a tensor's elements in its own dtype (what sending it costs, uncompressed).
pub fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

/// Bytes of a set of named tensors.
pub fn tensors_bytes<'a>(ts: impl IntoIterator<Item = &'a Tensor>) -> u64 {
    ts.into_iter().map(tensor_bytes).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn toy_profile() -> DeviceProfile {
        DeviceProfile {
            name: "toy".into(),
            memory_bytes: 1 << 30,
            train_flops: 1e12,
            quant_forward_flops: 5e11,
            pcie_bytes_per_s: 1e9,
            uplink_bytes_per_s: 1e6,
            downlink_bytes_per_s: 4e6,
        }
    }

    #[test]
    fn seconds_are_work_over_rate_and_total_is_their_sum() {
        let cost = WorkCost {
            flops: 3e12,
            quant_flops: 1e12,
            pcie_bytes: 2_000_000_000,
            up_bytes: 5_000_000,
            down_bytes: 8_000_000,
        };
        let t = cost.seconds(&toy_profile()).unwrap();
        assert_eq!(t.compute, 3.0);
        assert_eq!(t.quant, 2.0);
        assert_eq!(t.pcie, 2.0);
        assert_eq!(t.upload, 5.0);
        assert_eq!(t.download, 2.0);
        assert_eq!(t.total, 14.0);
    }

    #[test]
    fn bad_work_or_profile_is_an_error_naming_the_field() {
        let cost = WorkCost {
            flops: -1.0,
            ..WorkCost::default()
        };
        let err = cost.seconds(&toy_profile()).unwrap_err().to_string();
        assert!(err.contains("work_cost.flops"), "{err}");
        let mut p = toy_profile();
        p.uplink_bytes_per_s = 0.0;
        let err = WorkCost::default().seconds(&p).unwrap_err().to_string();
        assert!(err.contains("uplink_bytes_per_s"), "{err}");
    }

    #[test]
    fn costs_add_fieldwise_and_tensor_bytes_count_dtype_size() {
        let a = WorkCost {
            flops: 1.0,
            quant_flops: 2.0,
            pcie_bytes: 3,
            up_bytes: 4,
            down_bytes: 5,
        };
        let mut b = a;
        b += a;
        assert_eq!(b, a + a);
        assert_eq!(b.up_bytes, 8);
        let t = Tensor::zeros((3, 4), DType::F16, &Device::Cpu).unwrap();
        let u = Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(tensor_bytes(&t), 24);
        assert_eq!(tensors_bytes([&t, &u]), 44);
    }
}
