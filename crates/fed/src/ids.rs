//! Identifier newtypes: who takes part ([`ParticipantId`]) and when ([`Round`]).
//!
//! Rounds count from 1, as in Flower's `for current_round in range(1, num_rounds + 1)`;
//! round 0 never exists, so "no round yet" is a separate `Option`, not a magic value.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A participant (client) of the federation. Ordered by its number, which is the
/// order replies are processed in so results never depend on arrival order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ParticipantId(pub u32);

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A federated round, starting at 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Round(pub u32);

impl Round {
    pub const FIRST: Round = Round(1);

    /// The round after this one.
    pub fn next(self) -> Round {
        Round(self.0 + 1)
    }
}

impl fmt::Display for Round {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_serialize_as_plain_numbers_and_order_by_value() {
        assert_eq!(serde_json::to_string(&ParticipantId(7)).unwrap(), "7");
        assert_eq!(serde_json::from_str::<Round>("3").unwrap(), Round(3));
        assert!(ParticipantId(2) < ParticipantId(10));
        assert_eq!(Round::FIRST.next(), Round(2));
        assert_eq!(ParticipantId(4).to_string(), "#4");
    }
}
