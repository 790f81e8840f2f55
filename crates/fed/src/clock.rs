//! Clocks. The coordinator charges every round's time to a [`Clock`] and reads
//! time-to-accuracy from it; nothing else in this crate knows what time it is.
//!
//! [`VirtualClock`] is the deterministic clock of the cost model (seconds of virtual
//! time, advanced only by the coordinator). A wall clock, for measured runs, lives at
//! the edge (the CLI), because this crate never reads the system time.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A monotone clock in seconds.
pub trait Clock {
    /// Seconds since the start of the run.
    fn now(&self) -> f64;
    /// Charge `seconds` (finite, >= 0) of work.
    fn advance(&mut self, seconds: f64) -> Result<()>;
    /// Restore the time of a checkpoint.
    fn restore(&mut self, now: f64) -> Result<()>;
}

/// Deterministic virtual time, in seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VirtualClock {
    now: f64,
}

impl VirtualClock {
    pub fn new() -> Self {
        VirtualClock { now: 0.0 }
    }
}

fn check_seconds(field: &str, seconds: f64) -> Result<()> {
    if seconds.is_finite() && seconds >= 0.0 {
        Ok(())
    } else {
        Err(Error::config(
            field,
            format!("must be finite and >= 0, got {seconds}"),
        ))
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> f64 {
        self.now
    }

    fn advance(&mut self, seconds: f64) -> Result<()> {
        check_seconds("clock.advance", seconds)?;
        self.now += seconds;
        Ok(())
    }

    fn restore(&mut self, now: f64) -> Result<()> {
        check_seconds("clock.now", now)?;
        self.now = now;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_clock_accumulates_and_rejects_bad_steps() {
        let mut clock = VirtualClock::new();
        assert_eq!(clock.now(), 0.0);
        clock.advance(1.5).unwrap();
        clock.advance(2.25).unwrap();
        assert_eq!(clock.now(), 3.75);
        assert!(clock.advance(-1.0).is_err());
        assert!(clock.advance(f64::NAN).is_err());
        assert_eq!(clock.now(), 3.75);
        clock.restore(10.0).unwrap();
        assert_eq!(clock.now(), 10.0);
    }
}
