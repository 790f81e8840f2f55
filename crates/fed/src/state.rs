//! Coordinator checkpoints, for resuming a run between rounds.
//!
//! A checkpoint is a folder with `state.json` ([`CoordinatorState`]: next round, run
//! seed, clock time, strategy name and state, target hit) and `global.safetensors`
//! (the global tensors). No generator state is saved: every round's generators are
//! derived from `(seed, round)` ([`crate::seed`]), so a resumed run draws exactly what
//! the uninterrupted run would have. The participants' own state (local optimizers,
//! data order) is theirs to checkpoint.
//!
//! These two functions are the crate's only file IO, kept at the edge.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::history::TargetHit;
use crate::ids::Round;
use crate::wire::Global;

pub const STATE_FILE: &str = "state.json";
pub const GLOBAL_FILE: &str = "global.safetensors";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CoordinatorState {
    /// The round the resumed run starts with.
    pub next_round: Round,
    pub seed: u64,
    /// Virtual clock at the end of the last completed round, seconds.
    pub clock_s: f64,
    pub strategy: String,
    pub strategy_state: serde_json::Value,
    pub target_hit: Option<TargetHit>,
}

impl CoordinatorState {
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::json("coordinator state", e))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::json("coordinator state", e))
    }
}

/// Write `state.json` and `global.safetensors` into `dir` (created if missing).
pub fn save_checkpoint(dir: &Path, state: &CoordinatorState, global: &Global) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let state_path = dir.join(STATE_FILE);
    std::fs::write(&state_path, state.to_json()?).map_err(|e| Error::io(&state_path, e))?;
    let tensors: HashMap<&str, candle_core::Tensor> = global
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    candle_core::safetensors::save(&tensors, dir.join(GLOBAL_FILE))?;
    Ok(())
}

/// Read a checkpoint written by [`save_checkpoint`], placing tensors on `device`.
pub fn load_checkpoint(dir: &Path, device: &Device) -> Result<(CoordinatorState, Global)> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state = CoordinatorState::from_json(&text)
        .map_err(|e| Error::State(format!("{}: {e}", state_path.display())))?;
    let global_path = dir.join(GLOBAL_FILE);
    if !global_path.exists() {
        return Err(Error::io(
            &global_path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "global tensors missing"),
        ));
    }
    let global: Global = candle_core::safetensors::load(&global_path, device)?
        .into_iter()
        .collect();
    Ok((state, global))
}
