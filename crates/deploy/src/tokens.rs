//! Participant authentication by bearer token.
//!
//! The coordinator's tokens file has one `<participant id> <token>` pair per line;
//! blank lines and lines starting with `#` are ignored. Every call carries
//! `authorization: Bearer <token>` and `x-fluxmoe-participant: <id>` metadata
//! ([`AUTHORIZATION`], [`PARTICIPANT`]); a call whose token is missing or is not the
//! one of its participant is refused with `Unauthenticated` and logged.

use std::collections::BTreeMap;
use std::path::Path;

use fluxmoe_fed::ParticipantId;
use tonic::metadata::MetadataMap;

use crate::error::{Error, Result};

/// Metadata key of the bearer token.
pub const AUTHORIZATION: &str = "authorization";
/// Metadata key of the caller's participant id.
pub const PARTICIPANT: &str = "x-fluxmoe-participant";

/// Each participant's token.
#[derive(Clone, Debug, Default)]
pub struct Tokens(BTreeMap<ParticipantId, String>);

impl Tokens {
    /// Parse a tokens file's text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let mut map = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |msg: &str| Error::Config(format!("{source} line {}: {msg}", i + 1));
            let mut words = line.split_whitespace();
            let (Some(id), Some(token), None) = (words.next(), words.next(), words.next()) else {
                return Err(bad("expected `<participant id> <token>`"));
            };
            let id: u32 = id
                .parse()
                .map_err(|_| bad(&format!("participant id `{id}` is not a number")))?;
            if map.insert(ParticipantId(id), token.to_string()).is_some() {
                return Err(bad(&format!("participant {id} has a second token")));
            }
        }
        Ok(Tokens(map))
    }

    /// Read a tokens file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Tokens from pairs (tests, embedding).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (ParticipantId, String)>) -> Self {
        Tokens(pairs.into_iter().collect())
    }

    /// The participant a call's metadata authenticates, or why it does not.
    pub fn authenticate(
        &self,
        metadata: &MetadataMap,
    ) -> std::result::Result<ParticipantId, tonic::Status> {
        let refuse = |why: String| {
            tracing::warn!(reason = %why, "refused an unauthenticated call");
            tonic::Status::unauthenticated(why)
        };
        let id = metadata
            .get(PARTICIPANT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .map(ParticipantId)
            .ok_or_else(|| refuse(format!("missing or malformed `{PARTICIPANT}` metadata")))?;
        let token = metadata
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| refuse(format!("participant {id}: no bearer token")))?;
        match self.0.get(&id) {
            Some(expected) if constant_time_eq(expected.as_bytes(), token.as_bytes()) => Ok(id),
            Some(_) => Err(refuse(format!("participant {id}: wrong token"))),
            None => Err(refuse(format!(
                "participant {id} has no token on this coordinator"
            ))),
        }
    }
}

/// Equality whose time does not depend on where the inputs first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(id: &str, auth: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(PARTICIPANT, id.parse().unwrap());
        if let Some(a) = auth {
            m.insert(AUTHORIZATION, a.parse().unwrap());
        }
        m
    }

    #[test]
    fn tokens_file_parses_and_authenticates() {
        let tokens = Tokens::parse("# fleet\n0 alpha\n\n1 beta\n", "t").unwrap();
        assert_eq!(
            tokens
                .authenticate(&metadata("1", Some("Bearer beta")))
                .unwrap(),
            ParticipantId(1)
        );
        for (id, auth, why) in [
            ("1", Some("Bearer alpha"), "wrong token"),
            ("1", None, "no bearer token"),
            ("1", Some("beta"), "no bearer token"),
            ("7", Some("Bearer beta"), "has no token"),
            ("x", Some("Bearer beta"), "malformed"),
        ] {
            let status = tokens.authenticate(&metadata(id, auth)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(status.message().contains(why), "{}", status.message());
        }
        for (text, why) in [
            ("0", "expected"),
            ("a b", "not a number"),
            ("0 a\n0 b", "second token"),
        ] {
            let err = Tokens::parse(text, "t").unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }
}
