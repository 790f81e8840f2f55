//! The participant's side of a deployment: [`serve`] connects any
//! [`fluxmoe_fed::Participant`] to a coordinator's [`crate::transport::GrpcTransport`].
//!
//! The loop: connect (retrying with exponential backoff while the coordinator is not
//! up yet), register with the device profile, then ask for the next task until the
//! coordinator says the run is done. For a training task: pull the global tensors
//! that changed since this participant's copy (all of them when the coordinator sends
//! everything), patch them into the copy, check every tensor of the copy against the
//! digests the task lists, call `train` on the copy, upload the reply's header and its
//! deltas. For a profiling task: pull the
//! model (and this round's global when the request is stale), call `profile`, upload
//! the report. A participant whose own code fails, or whose copy does not match the
//! coordinator's global (a tensor it was told is unchanged that it lacks or holds with
//! other values, or a received tensor of another name, shape or dtype than its copy's),
//! uploads the error, which the coordinator records as this participant's failure for
//! the round; the copy is left as it was.
//!
//! The copy starts as the initial model, which every participant loads itself (the
//! coordinator's run starts from the same model), and follows the global as the
//! participant patches it: what it receives in a round is what changed since the
//! global its copy reflects.
//!
//! The channel is TLS for an `https://` URL ([`crate::tls`]); a failed handshake
//! (an untrusted coordinator, a client certificate refused) ends `serve` at once with
//! the reason, instead of retrying like a coordinator that is not up yet.
//!
//! One tokio current-thread runtime drives the calls; `train` and `profile` run on it
//! directly (the participant has nothing else to do meanwhile).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use fluxmoe_fed::{DeviceProfile, Global, Participant, ParticipantId, ProfileIns, TrainIns};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Request;

use crate::chunks::{to_chunks, ChunkReceiver, Payload};
use crate::codec;
use crate::error::{Error, Result};
use crate::proto::federation_client::FederationClient;
use crate::proto::{
    reply_part, NextTaskRequest, PullRequest, RegisterRequest, ReplyHeader, ReplyPart, TaskKind,
    TensorDigest, Which,
};
use crate::reply::ReplyMeta;
use crate::tls::{tls_failure, ClientTls};
use crate::tokens::{AUTHORIZATION, PARTICIPANT};

/// How a participant reaches its coordinator.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The coordinator, e.g. `http://127.0.0.1:50051`, or `https://...` for TLS.
    pub url: String,
    /// TLS settings for an `https://` URL (the platform's roots when `None`).
    pub tls: Option<ClientTls>,
    pub id: ParticipantId,
    pub token: String,
    /// Reported at registration; the coordinator charges virtual time with it.
    pub profile: DeviceProfile,
    /// Largest model download accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
}

/// Largest `Task` message accepted (its `global` digests grow with the model's tensor
/// count; payloads travel in chunks of at most 1 MiB).
const MAX_TASK_BYTES: usize = 64 << 20;

/// Adds the token and participant id to every call.
type Interceptor =
    Box<dyn FnMut(Request<()>) -> std::result::Result<Request<()>, tonic::Status> + Send>;

type Client = FederationClient<InterceptedService<Channel, Interceptor>>;

/// Serve `participant` until the coordinator says the run is done, starting from
/// `initial`, the model the coordinator's run starts from (the participant's copy of
/// the global, which it keeps up to date with what it receives). Returns the number
/// of tasks answered.
pub fn serve(
    cfg: &ServeConfig,
    participant: &mut dyn Participant,
    initial: Global,
) -> Result<usize> {
    let copy = Held::new(initial)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Connection(format!("cannot start the client runtime: {e}")))?;
    runtime.block_on(serve_async(cfg, participant, copy))
}

/// The participant's copy of the global model, with the SHA-256 of each tensor's
/// payload record ([`codec::record`]).
struct Held {
    tensors: Global,
    digests: BTreeMap<String, Vec<u8>>,
}

impl Held {
    fn new(tensors: Global) -> Result<Self> {
        let digests = tensors
            .iter()
            .map(|(name, t)| Ok((name.clone(), codec::digest(&codec::record(name, t)?))))
            .collect::<Result<_>>()?;
        Ok(Held { tensors, digests })
    }

    /// Patch the tensors `received` for `ins` into the copy, then check the whole copy
    /// against `global`, the coordinator's digest of every global tensor. Nothing is
    /// patched when a received tensor is refused.
    fn patch(
        &mut self,
        ins: &TrainIns,
        received: BTreeMap<String, Tensor>,
        global: &[TensorDigest],
    ) -> std::result::Result<(), String> {
        let expected: BTreeMap<&str, &[u8]> = global
            .iter()
            .map(|d| (d.name.as_str(), d.sha256.as_slice()))
            .collect();
        if expected.len() != global.len() {
            return Err("the task lists a global tensor twice".into());
        }
        for &name in expected.keys() {
            if ins.must_download(name) && !received.contains_key(name) {
                return Err(format!(
                    "global tensor `{name}` changed since this participant's copy but was not sent"
                ));
            }
        }
        let mut patched = Vec::with_capacity(received.len());
        for (name, t) in received {
            let Some(&sha256) = expected.get(name.as_str()) else {
                return Err(format!(
                    "received tensor `{name}`, which is not in the global model"
                ));
            };
            if !ins.must_download(&name) {
                return Err(format!(
                    "received tensor `{name}`, which the instruction says is unchanged"
                ));
            }
            let Some(old) = self.tensors.get(&name) else {
                return Err(format!(
                    "received tensor `{name}`, which is not in this participant's copy of the global model"
                ));
            };
            if old.dtype() != t.dtype() || old.dims() != t.dims() {
                return Err(format!(
                    "received tensor `{name}` as {:?} {:?}; this participant's copy holds it as {:?} {:?}",
                    t.dtype(),
                    t.dims(),
                    old.dtype(),
                    old.dims()
                ));
            }
            let digest = codec::digest(&codec::record(&name, &t).map_err(|e| e.to_string())?);
            if digest != sha256 {
                return Err(format!(
                    "received tensor `{name}` does not match the digest the task lists for it"
                ));
            }
            patched.push((name, t, digest));
        }
        for (name, t, digest) in patched {
            self.tensors.insert(name.clone(), t);
            self.digests.insert(name, digest);
        }
        for (&name, &sha256) in &expected {
            match self.digests.get(name) {
                None => {
                    return Err(format!(
                        "global tensor `{name}` is not in this participant's copy, and it was not \
                         sent because the instruction says it is unchanged since the copy"
                    ))
                }
                Some(d) if d.as_slice() != sha256 => {
                    return Err(format!(
                        "global tensor `{name}`: this participant's copy differs from the \
                         coordinator's, though the instruction says it is unchanged since the copy \
                         (the participant started from another model, or the coordinator resumed \
                         from a checkpoint while the participant started afresh)"
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(name) = self
            .tensors
            .keys()
            .find(|n| !expected.contains_key(n.as_str()))
        {
            return Err(format!(
                "tensor `{name}` of this participant's copy is not in the global model"
            ));
        }
        Ok(())
    }
}

async fn connect(cfg: &ServeConfig) -> Result<Client> {
    let endpoint = crate::tls::endpoint(&cfg.url, cfg.tls.as_ref())?;
    let start = Instant::now();
    let mut backoff = Duration::from_millis(50);
    let channel = loop {
        match endpoint.connect().await {
            Ok(channel) => break channel,
            // Retrying does not heal a failed handshake.
            Err(e) if tls_failure(&e).is_some() => {
                return Err(Error::Connection(format!(
                    "{}: TLS handshake failed: {}",
                    cfg.url,
                    tls_failure(&e).unwrap_or_default()
                )))
            }
            Err(e) if start.elapsed() + backoff < cfg.connect_timeout => {
                tracing::debug!(url = %cfg.url, error = %e, ?backoff, "coordinator not reachable yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(Error::Connection(format!(
                    "{} unreachable for {:?}: {}",
                    cfg.url,
                    cfg.connect_timeout,
                    crate::error::chain(&e)
                )))
            }
        }
    };
    let bearer: MetadataValue<_> = format!("Bearer {}", cfg.token)
        .parse()
        .map_err(|_| Error::Config("the token is not valid in a gRPC header".into()))?;
    let id: MetadataValue<_> = cfg
        .id
        .0
        .to_string()
        .parse()
        .map_err(|_| Error::Config("participant id".into()))?;
    let intercept: Interceptor = Box::new(move |mut req: Request<()>| {
        req.metadata_mut().insert(AUTHORIZATION, bearer.clone());
        req.metadata_mut().insert(PARTICIPANT, id.clone());
        Ok(req)
    });
    // A training task lists a digest per global tensor: tens of thousands for the largest
    // MoE checkpoints, more than gRPC's default 4 MiB message limit allows.
    Ok(FederationClient::with_interceptor(channel, intercept)
        .max_decoding_message_size(MAX_TASK_BYTES))
}

async fn serve_async(
    cfg: &ServeConfig,
    participant: &mut dyn Participant,
    mut copy: Held,
) -> Result<usize> {
    let mut client = connect(cfg).await?;
    let profile_json = serde_json::to_string(&cfg.profile)
        .map_err(|e| Error::Config(format!("device profile: {e}")))?;
    client
        .register(RegisterRequest {
            device_profile_json: profile_json,
        })
        .await
        .map_err(|status| crate::tls::first_call_failed(&cfg.url, "Register", status))?;
    tracing::info!(participant = %cfg.id, url = %cfg.url, "registered");
    let mut answered = 0;
    loop {
        let task = client
            .next_task(NextTaskRequest {})
            .await
            .map_err(|status| Error::Status {
                call: "NextTask",
                status,
            })?
            .into_inner();
        let kind = TaskKind::try_from(task.kind).unwrap_or(TaskKind::Unspecified);
        let (header, deltas) = match kind {
            TaskKind::Wait => continue,
            TaskKind::Done => {
                tracing::info!(participant = %cfg.id, answered, "the run is done");
                return Ok(answered);
            }
            TaskKind::Unspecified => {
                return Err(Error::Protocol(format!("unknown task kind {}", task.kind)))
            }
            TaskKind::Train => {
                let ins: TrainIns = parse(&task.instruction_json)?;
                let received = pull(&mut client, cfg, task.task_id, Which::Model).await?;
                let patched = copy.patch(&ins, received, &task.global);
                let start = Instant::now();
                let trained = match patched {
                    Ok(()) => participant
                        .train(&ins, &copy.tensors)
                        .map_err(|e| e.to_string()),
                    Err(msg) => {
                        tracing::warn!(participant = %cfg.id, reason = %msg, "cannot train");
                        Err(format!(
                            "this participant's copy of the global model: {msg}"
                        ))
                    }
                };
                let measured_s = start.elapsed().as_secs_f64();
                match trained {
                    Ok(reply) => {
                        let (meta, deltas) = ReplyMeta::split(reply);
                        (
                            header(task.task_id, to_json(&meta)?, String::new(), measured_s),
                            deltas,
                        )
                    }
                    Err(e) => (
                        header(task.task_id, String::new(), e, measured_s),
                        BTreeMap::new(),
                    ),
                }
            }
            TaskKind::Profile => {
                let ins: ProfileIns = parse(&task.instruction_json)?;
                let model = pull(&mut client, cfg, task.task_id, Which::Model).await?;
                let current = if ins.stale {
                    pull(&mut client, cfg, task.task_id, Which::Current).await?
                } else {
                    model.clone()
                };
                let start = Instant::now();
                let profiled = participant.profile(&ins, &model, &current);
                let measured_s = start.elapsed().as_secs_f64();
                let h = match profiled {
                    Ok(reply) => header(task.task_id, to_json(&reply)?, String::new(), measured_s),
                    Err(e) => header(task.task_id, String::new(), e.to_string(), measured_s),
                };
                (h, BTreeMap::new())
            }
        };
        match push(&mut client, header, &deltas).await {
            Ok(()) => answered += 1,
            // The round closed (timeout) while this participant worked: not fatal.
            Err(Error::Status { status, .. })
                if status.code() == tonic::Code::FailedPrecondition =>
            {
                tracing::warn!(participant = %cfg.id, reason = %status.message(), "answer not taken");
            }
            Err(e) => return Err(e),
        }
    }
}

fn header(task_id: u64, reply_json: String, error: String, measured_s: f64) -> ReplyHeader {
    ReplyHeader {
        task_id,
        reply_json,
        error,
        measured_s,
    }
}

fn parse<T: serde::de::DeserializeOwned>(json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| Error::Protocol(format!("instruction: {e}")))
}

fn to_json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Protocol(format!("reply: {e}")))
}

/// Download one payload of task `task_id`.
async fn pull(
    client: &mut Client,
    cfg: &ServeConfig,
    task_id: u64,
    which: Which,
) -> Result<BTreeMap<String, Tensor>> {
    let status = |status| Error::Status {
        call: "PullTensors",
        status,
    };
    let mut stream = client
        .pull_tensors(PullRequest {
            task_id,
            which: which as i32,
        })
        .await
        .map_err(status)?
        .into_inner();
    let mut receiver = ChunkReceiver::new(cfg.max_payload_bytes);
    while let Some(chunk) = stream.message().await.map_err(status)? {
        if let Some(tensors) = receiver.accept(chunk)? {
            return Ok(tensors);
        }
    }
    Err(ChunkReceiver::ended_early())
}

/// Upload `header` and the payload of `deltas`.
async fn push(
    client: &mut Client,
    header: ReplyHeader,
    deltas: &BTreeMap<String, Tensor>,
) -> Result<()> {
    let payload = Payload::encode(deltas)?;
    let parts = std::iter::once(ReplyPart {
        part: Some(reply_part::Part::Header(header)),
    })
    .chain(to_chunks(payload).map(|c| ReplyPart {
        part: Some(reply_part::Part::Chunk(c)),
    }));
    client
        .push_reply(tokio_stream::iter(parts))
        .await
        .map_err(|status| Error::Status {
            call: "PushReply",
            status,
        })?;
    Ok(())
}
