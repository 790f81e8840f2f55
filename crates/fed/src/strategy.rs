//! The [`Strategy`] trait: the policy of a federated run, split into round hooks as in
//! Flower's `Strategy` (`configure_fit` / `aggregate_fit`).
//!
//! Per round r the coordinator calls [`Strategy::configure_train`] (who trains what,
//! with a generator seeded for round r), delivers the instructions, then hands every
//! reply and every failure to [`Strategy::aggregate_train`]. A `None` global in the
//! outcome keeps the previous model. Strategies do no IO, never read a clock and draw
//! randomness only from the generator they are given, so their whole state is what
//! [`Strategy::state`] returns.

use rand::rngs::StdRng;

use crate::cost::WorkCost;
use crate::error::Result;
use crate::ids::{ParticipantId, Round};
use crate::wire::{Failure, Global, ProfileIns, ProfileReply, TrainIns, TrainReply};

/// What a strategy made of a round's replies.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// The next global model, or `None` to keep the previous one.
    pub global: Option<Global>,
    /// Replies that went into the new model, ascending.
    pub accepted: Vec<ParticipantId>,
    /// Replies that were received but not used, with reasons.
    pub rejected: Vec<Failure>,
    /// Server work of the aggregation, charged on the server profile.
    pub cost: WorkCost,
}

pub trait Strategy {
    /// Short identifier, stored in checkpoints to refuse loading another strategy's state.
    fn name(&self) -> &str;

    /// One line describing the configuration, for logs.
    fn summary(&self) -> String;

    /// Optional phase before [`Strategy::configure_train`]: participants to ask for a
    /// profile of the model on their data. `rng` is the round's sampling generator,
    /// handed afterwards to `configure_train`, so a strategy may sample here and
    /// remember its choice. The default asks nobody.
    fn configure_profile(
        &mut self,
        _round: Round,
        _global: &Global,
        _pool: &[ParticipantId],
        _rng: &mut StdRng,
    ) -> Result<Vec<(ParticipantId, ProfileIns)>> {
        Ok(Vec::new())
    }

    /// The profiles (sorted by participant) and failures of the profiling phase.
    fn receive_profiles(
        &mut self,
        _round: Round,
        _replies: Vec<ProfileReply>,
        _failures: Vec<Failure>,
    ) -> Result<()> {
        Ok(())
    }

    /// Choose the participants of `round` from `pool` and their instructions.
    fn configure_train(
        &mut self,
        round: Round,
        global: &Global,
        pool: &[ParticipantId],
        rng: &mut StdRng,
    ) -> Result<Vec<(ParticipantId, TrainIns)>>;

    /// Turn the replies (sorted by participant) and failures of `round` into the next
    /// global model.
    fn aggregate_train(
        &mut self,
        round: Round,
        global: &Global,
        replies: Vec<TrainReply>,
        failures: Vec<Failure>,
    ) -> Result<TrainOutcome>;

    /// What the strategy decided this round, for the round's record (e.g. expert roles
    /// per participant); `Null` (the default) records nothing.
    fn round_report(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Everything needed to continue the run later.
    fn state(&self) -> Result<serde_json::Value>;

    /// Restore what [`Strategy::state`] returned.
    fn load_state(&mut self, state: &serde_json::Value) -> Result<()>;
}
