//! `fluxmoe status`: ask a running coordinator how its run stands (the `Status`
//! call of `proto/fluxmoe.proto`).
//!
//! The call is authenticated like a participant's (`authorization` and
//! `x-fluxmoe-participant` metadata with any valid token of the tokens file; an
//! operator gets a line with an id no participant uses) and travels over the same
//! channel, TLS included. [`Report`] is the answer in plain types: `Display` for
//! people, `Serialize` for scripts.

use std::fmt;
use std::time::Duration;

use fluxmoe_fed::ParticipantId;
use serde::Serialize;
use tonic::metadata::MetadataValue;
use tonic::Request;

use crate::error::{chain, Error, Result};
use crate::proto::federation_client::FederationClient;
use crate::proto::{Phase, StatusReply, StatusRequest};
use crate::tls::{first_call_failed, tls_failure, ClientTls};
use crate::tokens::{AUTHORIZATION, PARTICIPANT};

/// Where and as whom to ask.
#[derive(Clone, Debug)]
pub struct StatusQuery {
    pub url: String,
    pub tls: Option<ClientTls>,
    /// The id and token the call authenticates with.
    pub id: ParticipantId,
    pub token: String,
    /// Connecting and answering together may take this long.
    pub timeout: Duration,
}

/// The coordinator's answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The round of the open tasks, or of the last tasks posted (0 before the first).
    pub round: u32,
    /// `idle`, `profiling`, `training` or `done`.
    pub phase: String,
    pub done: bool,
    pub uptime_s: f64,
    pub tls: bool,
    pub mutual_tls: bool,
    pub participants: Vec<ParticipantReport>,
}

/// One registered participant.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParticipantReport {
    pub id: u32,
    pub device: String,
    /// `working` (a task is open and unanswered), `answered`, `waiting` (no task) or
    /// `revoked`.
    pub state: String,
    pub task_pending: bool,
    /// Wall seconds since its last call; `None` if it never called since registering.
    pub last_seen_s_ago: Option<f64>,
}

impl From<StatusReply> for Report {
    fn from(reply: StatusReply) -> Self {
        let phase = match Phase::try_from(reply.phase) {
            Ok(Phase::Idle) => "idle",
            Ok(Phase::Profiling) => "profiling",
            Ok(Phase::Training) => "training",
            Ok(Phase::Done) => "done",
            _ => "unknown",
        };
        let participants = reply
            .participants
            .into_iter()
            .map(|p| {
                let state = if p.revoked {
                    "revoked"
                } else if p.task_pending {
                    "working"
                } else if p.answered {
                    "answered"
                } else {
                    "waiting"
                };
                ParticipantReport {
                    id: p.id,
                    device: p.device,
                    state: state.into(),
                    task_pending: p.task_pending,
                    last_seen_s_ago: Some(p.last_seen_s_ago).filter(|s| s.is_finite()),
                }
            })
            .collect();
        Report {
            round: reply.round,
            phase: phase.into(),
            done: reply.done,
            uptime_s: reply.uptime_s,
            tls: reply.tls,
            mutual_tls: reply.mutual_tls,
            participants,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let channel = match (self.tls, self.mutual_tls) {
            (true, true) => "mutual TLS",
            (true, false) => "TLS",
            _ => "plain (no TLS)",
        };
        let run = if self.done { ", run done" } else { "" };
        writeln!(
            f,
            "round {}, {}{run}; up {:.0} s; {channel}",
            self.round, self.phase, self.uptime_s
        )?;
        writeln!(f, "{} participants registered", self.participants.len())?;
        if self.participants.is_empty() {
            return Ok(());
        }
        writeln!(f, "{:>4}  {:<20} {:<9} last seen", "id", "device", "state")?;
        for p in &self.participants {
            let seen = p
                .last_seen_s_ago
                .map_or("-".to_string(), |s| format!("{s:.1} s ago"));
            writeln!(f, "{:>4}  {:<20} {:<9} {seen}", p.id, p.device, p.state)?;
        }
        Ok(())
    }
}

/// Ask the coordinator of `q` for its status.
pub fn query(q: &StatusQuery) -> Result<Report> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Connection(format!("cannot start the client runtime: {e}")))?;
    runtime.block_on(query_async(q))
}

async fn query_async(q: &StatusQuery) -> Result<Report> {
    let endpoint = crate::tls::endpoint(&q.url, q.tls.as_ref())?
        .connect_timeout(q.timeout)
        .timeout(q.timeout);
    let channel = endpoint.connect().await.map_err(|e| {
        Error::Connection(match tls_failure(&e) {
            Some(tls) => format!("{}: TLS handshake failed: {tls}", q.url),
            None => format!("{}: {}", q.url, chain(&e)),
        })
    })?;
    let mut request = Request::new(StatusRequest {});
    let bearer: MetadataValue<_> = format!("Bearer {}", q.token)
        .parse()
        .map_err(|_| Error::Config("the token is not valid in a gRPC header".into()))?;
    let id: MetadataValue<_> =
        q.id.0
            .to_string()
            .parse()
            .map_err(|_| Error::Config("participant id".into()))?;
    request.metadata_mut().insert(AUTHORIZATION, bearer);
    request.metadata_mut().insert(PARTICIPANT, id);
    let reply = FederationClient::new(channel)
        .status(request)
        .await
        .map_err(|status| first_call_failed(&q.url, "Status", status))?;
    Ok(reply.into_inner().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ParticipantStatus;

    #[test]
    fn a_reply_reads_as_a_report() {
        let reply = StatusReply {
            participants: vec![
                ParticipantStatus {
                    id: 0,
                    device: "rtx3060".into(),
                    task_pending: true,
                    answered: false,
                    revoked: false,
                    last_seen_s_ago: 0.3,
                },
                ParticipantStatus {
                    id: 2,
                    device: "rtx4090".into(),
                    task_pending: false,
                    answered: false,
                    revoked: true,
                    last_seen_s_ago: f64::NAN,
                },
            ],
            round: 3,
            phase: Phase::Training as i32,
            done: false,
            uptime_s: 12.0,
            tls: true,
            mutual_tls: true,
        };
        let report = Report::from(reply);
        assert_eq!(report.participants[0].state, "working");
        assert_eq!(report.participants[1].state, "revoked");
        assert_eq!(report.participants[1].last_seen_s_ago, None);
        let text = report.to_string();
        assert!(
            text.starts_with("round 3, training; up 12 s; mutual TLS\n2 participants"),
            "{text}"
        );
        assert!(
            text.contains("   0  rtx3060              working   0.3 s ago"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["phase"], "training");
        assert_eq!(
            json["participants"][1]["last_seen_s_ago"],
            serde_json::Value::Null
        );
    }
}
