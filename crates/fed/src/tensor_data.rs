//! [`TensorData`]: a tensor as exact JSON, for small checkpointed state (server
//! optimizer moments). Values are stored as IEEE-754 bit patterns, so a save/load
//! cycle is bit-exact; big tensors (the global model) go to safetensors instead.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorData {
    /// `"f32"` or `"f64"`.
    pub dtype: String,
    pub shape: Vec<usize>,
    /// `f32::to_bits` / `f64::to_bits` of each element, row-major.
    pub bits: Vec<u64>,
}

impl TensorData {
    /// Snapshot an F32 or F64 tensor (`name` is for the error message).
    pub fn from_tensor(name: &str, t: &Tensor) -> Result<Self> {
        let shape = t.dims().to_vec();
        let flat = t.flatten_all()?;
        let (dtype, bits) = match t.dtype() {
            DType::F32 => (
                "f32",
                flat.to_vec1::<f32>()?
                    .into_iter()
                    .map(|x| u64::from(x.to_bits()))
                    .collect(),
            ),
            DType::F64 => (
                "f64",
                flat.to_vec1::<f64>()?
                    .into_iter()
                    .map(f64::to_bits)
                    .collect(),
            ),
            other => {
                return Err(Error::tensor(
                    name,
                    format!("state tensors must be f32 or f64, got {other:?}"),
                ))
            }
        };
        Ok(TensorData {
            dtype: dtype.to_string(),
            shape,
            bits,
        })
    }

    /// Rebuild the tensor on `device` (`name` is for the error message).
    pub fn to_tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        let n: usize = self.shape.iter().product();
        if n != self.bits.len() {
            return Err(Error::tensor(
                name,
                format!(
                    "shape {:?} needs {n} values, state has {}",
                    self.shape,
                    self.bits.len()
                ),
            ));
        }
        let t = match self.dtype.as_str() {
            "f32" => {
                let mut values = Vec::with_capacity(n);
                for &b in &self.bits {
                    let b = u32::try_from(b).map_err(|_| {
                        Error::tensor(name, format!("f32 bit pattern {b:#x} does not fit 32 bits"))
                    })?;
                    values.push(f32::from_bits(b));
                }
                Tensor::from_vec(values, self.shape.as_slice(), device)?
            }
            "f64" => {
                let values: Vec<f64> = self.bits.iter().map(|&b| f64::from_bits(b)).collect();
                Tensor::from_vec(values, self.shape.as_slice(), device)?
            }
            other => {
                return Err(Error::tensor(
                    name,
                    format!("state dtype must be \"f32\" or \"f64\", got {other:?}"),
                ))
            }
        };
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_bit_exact_through_json() {
        let values = [0.1f32, -0.0, f32::MIN_POSITIVE, 1.0 / 3.0, 1e-40, 7.5e30];
        let t = Tensor::from_vec(values.to_vec(), (2, 3), &Device::Cpu).unwrap();
        let data = TensorData::from_tensor("m", &t).unwrap();
        let json = serde_json::to_string(&data).unwrap();
        let back: TensorData = serde_json::from_str(&json).unwrap();
        let t2 = back.to_tensor("m", &Device::Cpu).unwrap();
        assert_eq!(t2.dims(), &[2, 3]);
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f32::to_bits)
                .collect()
        };
        assert_eq!(bits(&t), bits(&t2));
    }

    #[test]
    fn inconsistent_state_is_an_error_naming_the_tensor() {
        let data = TensorData {
            dtype: "f32".into(),
            shape: vec![2, 2],
            bits: vec![0; 3],
        };
        let err = data
            .to_tensor("v.layer", &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tensor `v.layer`") && err.contains("needs 4 values"),
            "{err}"
        );
        let f16 = Tensor::zeros(2, DType::F16, &Device::Cpu).unwrap();
        assert!(TensorData::from_tensor("x", &f16).is_err());
    }
}
