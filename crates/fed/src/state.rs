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

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::history::TargetHit;
use crate::ids::{ParticipantId, Round};
use crate::wire::Global;

pub const STATE_FILE: &str = "state.json";
/// Global tensors of the checkpoint whose next round is `round`.
pub fn global_file(round: Round) -> String {
    format!("global-r{}.safetensors", round.0)
}

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
    /// Aggregation seconds of the last completed round (what stale profiling overlaps).
    #[serde(default)]
    pub last_aggregate_s: f64,
    /// File holding the tensors in which the previous global (before the last
    /// aggregation) differs from this one, if saved (stale profiling reads it).
    #[serde(default)]
    pub previous_file: Option<String>,
    /// Per global tensor, the last round that changed it (absent: never changed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub changed_in: BTreeMap<String, u32>,
    /// Per participant, the rounds its copy of the global reflects (absent: none, it
    /// holds the initial model).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub held: BTreeMap<ParticipantId, u32>,
}

impl CoordinatorState {
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::json("coordinator state", e))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::json("coordinator state", e))
    }
}

/// Write `global-r<next round>.safetensors`, then `state.json`, into `dir` (created if
/// missing), each to a temporary name first and then renamed into place. The state
/// names its tensors file through its round, so a crash at any point leaves the
/// previous checkpoint (or the new one) whole; older tensors files are removed last.
///
/// With `previous`, the tensors in which it differs from `global` (by identity: the
/// round loop shares untouched tensors) go to `previous-r<next round>.safetensors`,
/// named in the state, so a resumed run can profile the previous model again.
pub fn save_checkpoint(
    dir: &Path,
    state: &CoordinatorState,
    global: &Global,
    previous: Option<&Global>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let global_name = global_file(state.next_round);
    write_tensors(dir, &global_name, global.iter())?;
    let mut state = state.clone();
    state.previous_file = None;
    if let Some(prev) = previous {
        let name = format!("previous-r{}.safetensors", state.next_round.0);
        let changed = prev
            .iter()
            .filter(|(k, v)| global.get(*k).is_none_or(|g| g.id() != v.id()));
        write_tensors(dir, &name, changed)?;
        state.previous_file = Some(name);
    }
    let state_tmp = dir.join(format!("{STATE_FILE}.tmp"));
    std::fs::write(&state_tmp, state.to_json()?).map_err(|e| Error::io(&state_tmp, e))?;
    rename(&state_tmp, &dir.join(STATE_FILE))?;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = (name.starts_with("global-r") && name != global_name)
                || (name.starts_with("previous-r")
                    && Some(name.as_str()) != state.previous_file.as_deref());
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

fn write_tensors<'a>(
    dir: &Path,
    name: &str,
    tensors: impl Iterator<Item = (&'a String, &'a candle_core::Tensor)>,
) -> Result<()> {
    let tensors: HashMap<&str, candle_core::Tensor> =
        tensors.map(|(k, v)| (k.as_str(), v.clone())).collect();
    let tmp = dir.join(format!("{name}.tmp"));
    candle_core::safetensors::save(&tensors, &tmp)?;
    rename(&tmp, &dir.join(name))
}

/// The previous global saved with a checkpoint (see [`save_checkpoint`]), rebuilt from
/// `global` and the saved differences; `None` if the checkpoint has none.
pub fn load_previous(
    dir: &Path,
    state: &CoordinatorState,
    global: &Global,
    device: &Device,
) -> Result<Option<Global>> {
    let Some(name) = &state.previous_file else {
        return Ok(None);
    };
    let mut prev = global.clone();
    let changed = candle_core::safetensors::load(dir.join(name), device)
        .map_err(|e| Error::State(format!("{}: {e}", dir.join(name).display())))?;
    for (k, v) in changed {
        prev.insert(k, v);
    }
    Ok(Some(prev))
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| Error::io(to, e))
}

/// Read a checkpoint written by [`save_checkpoint`], placing tensors on `device`.
pub fn load_checkpoint(dir: &Path, device: &Device) -> Result<(CoordinatorState, Global)> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state = CoordinatorState::from_json(&text)
        .map_err(|e| Error::State(format!("{}: {e}", state_path.display())))?;
    let global_path = dir.join(global_file(state.next_round));
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    fn state(next: u32) -> CoordinatorState {
        CoordinatorState {
            next_round: Round(next),
            seed: 1,
            clock_s: f64::from(next),
            strategy: "s".into(),
            strategy_state: serde_json::Value::Null,
            target_hit: None,
            last_aggregate_s: 0.0,
            previous_file: None,
            changed_in: BTreeMap::new(),
            held: BTreeMap::new(),
        }
    }

    fn global(x: f32) -> Global {
        Global::from([("w".to_string(), Tensor::new(&[x, x], &Device::Cpu).unwrap())])
    }

    #[test]
    fn an_interrupted_save_leaves_the_previous_checkpoint_whole() {
        let dir = tempfile::tempdir().unwrap();
        save_checkpoint(dir.path(), &state(3), &global(3.0), None).unwrap();
        save_checkpoint(dir.path(), &state(4), &global(4.0), None).unwrap();
        // Only the latest tensors file is kept.
        assert!(!dir.path().join(global_file(Round(3))).exists());
        // A crash after the new tensors were written but before the state was: the
        // old state still finds its own tensors.
        candle_core::safetensors::save(
            &HashMap::from([("w", Tensor::new(&[5f32, 5.0], &Device::Cpu).unwrap())]),
            dir.path().join(global_file(Round(5))),
        )
        .unwrap();
        std::fs::write(dir.path().join("state.json.tmp"), "{half").unwrap();
        let (s, g) = load_checkpoint(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(s.next_round, Round(4));
        assert_eq!(g["w"].to_vec1::<f32>().unwrap(), vec![4.0, 4.0]);
    }
}
