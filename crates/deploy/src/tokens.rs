//! Participant authentication by bearer token.
//!
//! The coordinator's tokens file has one `<participant id> <token>` pair per line;
//! blank lines and lines starting with `#` are ignored. Every call carries
//! `authorization: Bearer <token>` and `x-fluxmoe-participant: <id>` metadata
//! ([`AUTHORIZATION`], [`PARTICIPANT`]); a call whose token is missing or is not the
//! one of its participant is refused with `Unauthenticated` and logged.
//!
//! Revocation: with a [`TokensFile`], the coordinator re-reads the file (at most once
//! per `check_every`, on incoming calls, when the pool is asked for and while a round
//! waits for answers); once two checks in a row read the same changed text, its
//! tokens are those in force. Removing a participant's line (or changing its token)
//! revokes it: its next call is refused, and the transport fails its open task and
//! drops it from the pool ([`LiveTokens::refresh`] says who lost their token). A file
//! that becomes unreadable, malformed or empty changes nothing: the previous tokens
//! stay in force and the problem is logged once (`tracing::error!`).

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

/// What the file held at the last checks, so a change is acted on (or its problem
/// logged) once, and only once it has settled.
#[derive(Debug)]
struct LastRead {
    at: Option<Instant>,
    /// The text read at the last check, or the read error.
    seen: Option<FileText>,
    /// The text last acted on (taken into force, or refused and logged).
    settled: Option<FileText>,
}

type FileText = std::result::Result<String, String>;

impl LiveTokens {
    /// `tokens` in force until `file` (if any) changes.
    pub fn new(tokens: Tokens, file: Option<TokensFile>) -> Self {
        let watch = file.map(|file| Watch {
            file,
            last: Mutex::new(LastRead {
                at: None,
                seen: None,
                settled: None,
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

    /// Re-read the tokens file if it is due for a check. A change is acted on once
    /// two checks in a row read the same text (a file caught mid-write is not taken
    /// for the new tokens): if it parses and holds at least one token, its tokens come
    /// into force and the participants whose token it removed or changed are
    /// returned. Otherwise (not due, unchanged, not settled, unreadable, malformed,
    /// empty) `None`, and the tokens in force stay.
    pub fn refresh(&self) -> Option<Vec<ParticipantId>> {
        let watch = self.watch.as_ref()?;
        let mut last = watch.last.lock().unwrap_or_else(|e| e.into_inner());
        if last
            .at
            .is_some_and(|at| at.elapsed() < watch.file.check_every)
        {
            return None;
        }
        last.at = Some(Instant::now());
        let path = &watch.file.path;
        let read = std::fs::read_to_string(path).map_err(|e| e.to_string());
        let settled = last.seen.as_ref() == Some(&read);
        last.seen = Some(read.clone());
        if !settled || last.settled.as_ref() == Some(&read) {
            return None;
        }
        last.settled = Some(read.clone());
        let new = match parse_reloaded(read, path) {
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

/// The tokens of a re-read tokens file, or why they are not taken: unreadable,
/// malformed, or empty (rather a mistake or a write in progress than "revoke all").
fn parse_reloaded(read: FileText, path: &Path) -> std::result::Result<Tokens, String> {
    let source = path.display().to_string();
    let text = read.map_err(|e| format!("{source}: {e}"))?;
    let tokens = Tokens::parse(&text, &source).map_err(|e| e.to_string())?;
    if tokens.0.is_empty() {
        return Err(format!(
            "{source} holds no token (to stop the run, stop the coordinator)"
        ));
    }
    Ok(tokens)
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

    #[test]
    fn a_tokens_file_change_applies_once_settled_and_a_bad_one_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("tokens.txt");
        std::fs::write(&path, "0 alpha\n1 beta\n2 gamma\n").unwrap();
        let live = LiveTokens::new(
            Tokens::parse("0 alpha\n1 beta\n2 gamma\n", "t").unwrap(),
            Some(TokensFile {
                path: path.clone(),
                check_every: Duration::ZERO,
            }),
        );
        let ok = |live: &LiveTokens, id: &str, token: &str| {
            live.authenticate(&metadata(id, Some(&format!("Bearer {token}"))))
                .is_ok()
        };
        // The file as it was: nothing changes.
        assert_eq!((live.refresh(), live.refresh()), (None, None));
        // 1 removed, 2's token changed: seen once, then taken.
        std::fs::write(&path, "0 alpha\n2 delta\n").unwrap();
        assert_eq!(live.refresh(), None);
        assert!(ok(&live, "1", "beta"));
        assert_eq!(
            live.refresh(),
            Some(vec![ParticipantId(1), ParticipantId(2)])
        );
        assert!(!ok(&live, "1", "beta") && !ok(&live, "2", "gamma"));
        assert!(ok(&live, "2", "delta") && ok(&live, "0", "alpha"));
        assert_eq!(live.refresh(), None);
        // Malformed, empty, missing: the tokens in force stay.
        for bad in [Some("0 alpha\nnot a line\n"), Some("# nobody\n"), None] {
            match bad {
                Some(text) => std::fs::write(&path, text).unwrap(),
                None => std::fs::remove_file(&path).unwrap(),
            }
            assert_eq!((live.refresh(), live.refresh()), (None, None));
            assert!(ok(&live, "2", "delta") && ok(&live, "0", "alpha"));
        }
        // Fixed again: 2 goes.
        std::fs::write(&path, "0 alpha\n").unwrap();
        assert_eq!(live.refresh(), None);
        assert_eq!(live.refresh(), Some(vec![ParticipantId(2)]));
        // Without a file, nothing is ever re-read.
        let fixed = LiveTokens::new(Tokens::default(), None);
        assert_eq!((fixed.refresh(), fixed.check_every()), (None, None));
    }
}
