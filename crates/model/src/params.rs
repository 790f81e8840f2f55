//! [`ParamStore`]: every tensor of a checkpoint by its HF key, each either frozen
//! (a plain tensor, never tracked by autograd) or trainable (a [`Var`]).
//!
//! Layers are built from the store by key (see `model.rs`) and hold cheap handles to the
//! same storage, so an optimizer step on a `Var` is seen by the model at once. Changing
//! which parameters are trainable means rebuilding the model from the store (cheap: no
//! weight is copied except when a frozen tensor first becomes a `Var`).

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};

use crate::{Error, Result};

#[derive(Debug, Clone)]
enum Slot {
    Frozen(Tensor),
    Trainable(Var),
}

/// Named parameters: the model's weights plus any extra checkpoint tensors (buffers
/// such as LLaMA-MoE's `rotary_emb.inv_freq`), kept so a save writes them back.
#[derive(Debug, Clone, Default)]
pub struct ParamStore {
    slots: BTreeMap<String, Slot>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Build a store of frozen tensors. Floating-point tensors are converted to f32,
    /// the compute precision; others are kept as they are.
    pub fn from_tensors(tensors: impl IntoIterator<Item = (String, Tensor)>) -> Result<Self> {
        let mut slots = BTreeMap::new();
        for (name, t) in tensors {
            let t = if t.dtype().is_float() && t.dtype() != DType::F32 {
                t.to_dtype(DType::F32)?
            } else {
                t
            };
            slots.insert(name, Slot::Frozen(t));
        }
        Ok(Self { slots })
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.slots.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.keys().map(String::as_str)
    }

    /// The tensor stored under `name` (a handle sharing storage, trainable or not).
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.slots.get(name).map(|s| match s {
            Slot::Frozen(t) => t,
            Slot::Trainable(v) => v.as_tensor(),
        })
    }

    /// All tensors by name.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.slots.iter().map(|(n, s)| {
            let t = match s {
                Slot::Frozen(t) => t,
                Slot::Trainable(v) => v.as_tensor(),
            };
            (n.as_str(), t)
        })
    }

    /// The tensor `name`, checked to have `shape`; errors name the tensor.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensor(name).ok_or_else(|| Error::MissingTensor {
            path: "checkpoint".into(),
            name: name.to_string(),
        })?;
        if t.dims() != shape {
            return Err(Error::Shape {
                name: name.to_string(),
                expected: shape.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        Ok(t.clone())
    }

    /// Insert or replace a frozen tensor.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.slots.insert(name.into(), Slot::Frozen(tensor));
    }

    /// Make exactly the parameters for which `is_trainable(name)` holds trainable; all
    /// others become frozen (no gradient is tracked or held for them). Only f32 tensors
    /// can be trainable. Returns the number of trainable parameters (tensors).
    pub fn set_trainable(&mut self, is_trainable: impl Fn(&str) -> bool) -> Result<usize> {
        let mut n = 0;
        for (name, slot) in self.slots.iter_mut() {
            let want = is_trainable(name);
            let next = match (&*slot, want) {
                (Slot::Frozen(t), true) if t.dtype() == DType::F32 => {
                    Slot::Trainable(Var::from_tensor(t)?)
                }
                (Slot::Trainable(v), false) => Slot::Frozen(v.as_tensor().detach()),
                _ => continue,
            };
            *slot = next;
        }
        for slot in self.slots.values() {
            if matches!(slot, Slot::Trainable(_)) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The trainable parameters, by name, in key order.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.slots
            .iter()
            .filter_map(|(n, s)| match s {
                Slot::Trainable(v) => Some((n.clone(), v.clone())),
                Slot::Frozen(_) => None,
            })
            .collect()
    }

    pub fn is_trainable(&self, name: &str) -> bool {
        matches!(self.slots.get(name), Some(Slot::Trainable(_)))
    }

    /// Number of scalar elements over all tensors.
    pub fn elem_count(&self) -> usize {
        self.tensors().map(|(_, t)| t.elem_count()).sum()
    }
}

/// A glob over parameter names where `*` matches any run of characters, e.g.
/// `model.layers.*.mlp.experts.3.*`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn glob_matches_like_a_shell() {
        assert!(glob_match("a.*.c", "a.b.c"));
        assert!(glob_match("a.*.c", "a.b.x.c"));
        assert!(!glob_match("a.*.c", "a.b.d"));
        assert!(glob_match(
            "*experts.1.*",
            "model.layers.0.mlp.experts.1.w1.weight"
        ));
        assert!(!glob_match(
            "*experts.1.*",
            "model.layers.0.mlp.experts.11.w1.weight"
        ));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    #[test]
    fn trainability_round_trips_without_changing_values() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[1f32, 2.0], &dev).unwrap();
        let b = Tensor::new(&[3f32], &dev).unwrap();
        let mut s = ParamStore::from_tensors([("a".to_string(), a), ("b".to_string(), b)]).unwrap();
        assert_eq!(s.set_trainable(|n| n == "a").unwrap(), 1);
        assert!(s.is_trainable("a") && !s.is_trainable("b"));
        assert_eq!(s.set_trainable(|n| n == "b").unwrap(), 1);
        assert_eq!(
            s.tensor("a").unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0, 2.0]
        );
        let err = s.get("a", &[3]).unwrap_err().to_string();
        assert!(err.contains("expected shape [3], got [2]"), "{err}");
        assert!(s.get("zzz", &[1]).unwrap_err().to_string().contains("zzz"));
    }
}
