//! Participant authentication by bearer token.
//!
//! The coordinator's tokens file has one `<participant id> <token>` pair per line;
//! blank lines and lines starting with `#` are ignored. Every call carries
//! `authorization: Bearer <token>` and `x-fluxmoe-participant: <id>` metadata
//! ([`AUTHORIZATION`], [`PARTICIPANT`]); a call whose token is missing or is not the
//! one of its participant is refused with `Unauthenticated` and logged.
//!
//! Revocation: with a [`TokensFile`], the coordinator re-reads the file (at most once
//! per `check_every`, on incoming calls and while a round waits for answers) and the
//! tokens it holds then are those in force. Removing a participant's line (or changing
//! its token) revokes it: its next call is refused, and the transport fails its open
//! task and drops it from the pool ([`LiveTokens::refresh`] says who lost their
//! token). A file that becomes unreadable or malformed changes nothing: the previous
//! tokens stay in force and the problem is logged once (`tracing::error!`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use fluxmoe_fed::ParticipantId;
use tonic::metadata::MetadataMap;

use crate::error::{Error, Result};

/// Metadata key of the bearer token.
pub const AUTHORIZATION: &str = "authorization";
/// Metadata key of the caller's participant id.
pub const PARTICIPANT: &str = "x-fluxmoe-participant";

/// Each participant's token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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

impl Tokens {
    /// The participants of `self` whose token `new` removes or changes.
    fn lost_in(&self, new: &Tokens) -> Vec<ParticipantId> {
        self.0
            .iter()
            .filter(|(id, token)| new.0.get(id) != Some(token))
            .map(|(id, _)| *id)
            .collect()
    }
}

/// The tokens file a coordinator re-reads when it changes.
#[derive(Clone, Debug)]
pub struct TokensFile {
    pub path: PathBuf,
    /// The file is read at most this often (on incoming calls).
    pub check_every: Duration,
}

/// The tokens in force: fixed, or re-read from a [`TokensFile`] when it changes.
#[derive(Debug)]
pub struct LiveTokens {
    current: RwLock<Tokens>,
    watch: Option<Watch>,
}

#[derive(Debug)]
struct Watch {
    file: TokensFile,
    last: Mutex<LastRead>,
}

/// What the last look at the file found, so a change is acted on (or its problem
/// logged) once.
#[derive(Debug)]
struct LastRead {
    at: Instant,
    /// The text last read, or the read error.
    seen: Option<std::result::Result<String, String>>,
}

impl LiveTokens {
    /// `tokens` in force until `file` (if any) changes.
    pub fn new(tokens: Tokens, file: Option<TokensFile>) -> Self {
        let watch = file.map(|file| Watch {
            file,
            last: Mutex::new(LastRead {
                at: Instant::now(),
                seen: None,
            }),
        });
        LiveTokens {
            current: RwLock::new(tokens),
            watch,
        }
    }

    /// How often the file is checked, when there is one.
    pub fn check_every(&self) -> Option<Duration> {
        self.watch.as_ref().map(|w| w.file.check_every)
    }

    /// The participant a call's metadata authenticates under the tokens in force.
    pub fn authenticate(
        &self,
        metadata: &MetadataMap,
    ) -> std::result::Result<ParticipantId, tonic::Status> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .authenticate(metadata)
    }

    /// Re-read the tokens file if it is due for a check. When the file changed and
    /// parses, its tokens come into force and the participants whose token it removed
    /// or changed are returned; otherwise (not due, unchanged, unreadable, malformed)
    /// `None` and the tokens in force stay.
    pub fn refresh(&self) -> Option<Vec<ParticipantId>> {
        let watch = self.watch.as_ref()?;
        let mut last = watch.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.seen.is_some() && last.at.elapsed() < watch.file.check_every {
            return None;
        }
        last.at = Instant::now();
        let path = &watch.file.path;
        let seen = std::fs::read_to_string(path).map_err(|e| e.to_string());
        if last.seen.as_ref() == Some(&seen) {
            return None;
        }
        last.seen = Some(seen.clone());
        let source = path.display().to_string();
        let parsed = seen
            .map_err(|e| format!("{source}: {e}"))
            .and_then(|text| Tokens::parse(&text, &source).map_err(|e| e.to_string()));
        let new = match parsed {
            Ok(new) => new,
            Err(why) => {
                tracing::error!(reason = %why, "tokens file not reloaded; the previous tokens stay in force");
                return None;
            }
        };
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if *current == new {
            return None;
        }
        let lost = current.lost_in(&new);
        tracing::info!(file = %path.display(), participants = new.0.len(), "tokens file reloaded");
        *current = new;
        Some(lost)
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
