//! The participant's side of a deployment: [`serve`] connects any
//! [`fluxmoe_fed::Participant`] to a coordinator's [`crate::transport::GrpcTransport`].
//!
//! The loop: connect (retrying with exponential backoff while the coordinator is not
//! up yet), register with the device profile, then ask for the next task until the
//! coordinator says the run is done. A task lists every tensor of the model to work on
//! with its digest; the participant pulls the tensors its copy of the global lacks or
//! holds with other contents (all of them when the run sends everything), checks what
//! arrives against the digests, works on the patched copy (`train`, or `profile`,
//! which for a stale profile also pulls this round's global the same way), and uploads
//! the reply's header and its deltas. A participant whose own code fails uploads the
//! error, which the coordinator records as this participant's failure for the round.
//!
//! The copy starts as the initial model, which every participant loads itself (the
//! coordinator's run starts from the same model), and becomes each model the
//! participant receives: normally what it pulls is exactly what changed since its last
//! round, and when the copy is out of date for another reason (the process restarted
//! from the initial model, the coordinator restarted from an older checkpoint) the
//! digests say what to fetch and the copy is repaired, not refused.
//!
//! Faults: a call that fails for lack of a connection (the coordinator restarting, a
//! dropped link) is retried with exponential backoff until the coordinator has been
//! unreachable for [`ServeConfig::connect_timeout`]; a pull resumes at the first chunk
//! it has not received, an upload at the first chunk the coordinator did not keep. A coordinator that no longer
//! knows this participant (it restarted) answers `NotFound`, and the participant
//! registers again. A task that closed meanwhile (its round timed out, or the
//! coordinator restarted) is dropped, and the loop asks for the next one.
//!
//! The channel is TLS for an `https://` URL ([`crate::tls`]); a failed handshake
//! (an untrusted coordinator, a client certificate refused) ends `serve` at once with
//! the reason, instead of retrying like a coordinator that is not up yet.
//!
//! One tokio current-thread runtime drives the calls; `train` and `profile` run on it
//! directly (the participant has nothing else to do meanwhile).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use fluxmoe_fed::{DeviceProfile, Global, Participant, ParticipantId, ProfileIns, TrainIns};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Request;

use crate::chunks::{chunk_count, to_chunks_from, ChunkReceiver, Payload};
use crate::codec;
use crate::error::{Error, Result};
use crate::proto::federation_client::FederationClient;
use crate::proto::{
    reply_part, NextTaskRequest, PullRequest, RegisterRequest, ReplyHeader, ReplyPart, Task,
    TaskKind, TensorDigest, UploadOffsetRequest, Which,
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
    /// Give up when the coordinator has been unreachable this long, at the start or
    /// mid-run.
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

    /// The tensors of `manifest` to pull: those the copy lacks or holds with another
    /// digest, or every one with `everything`.
    fn lacking(&self, manifest: &[TensorDigest], everything: bool) -> Result<Vec<String>> {
        if manifest.windows(2).any(|w| w[0].name >= w[1].name) {
            return Err(Error::Protocol(
                "the task's tensors are not ascending by name, each once".into(),
            ));
        }
        Ok(manifest
            .iter()
            .filter(|d| everything || self.digests.get(&d.name) != Some(&d.sha256))
            .map(|d| d.name.clone())
            .collect())
    }

    /// The model `manifest` lists: the tensors `received` (exactly those `asked` for)
    /// and the rest from the copy, each checked against its digest. The copy is not
    /// changed (see [`Held::adopt`]).
    fn view(
        &self,
        manifest: &[TensorDigest],
        asked: &[String],
        mut received: BTreeMap<String, Tensor>,
    ) -> std::result::Result<Held, String> {
        if received.len() != asked.len() || asked.iter().any(|n| !received.contains_key(n)) {
            return Err(format!(
                "asked for {} tensors, received {} others",
                asked.len(),
                received.len()
            ));
        }
        let mut view = Held {
            tensors: Global::new(),
            digests: BTreeMap::new(),
        };
        for d in manifest {
            let (t, digest) = match received.remove(&d.name) {
                Some(t) => {
                    let digest =
                        codec::digest(&codec::record(&d.name, &t).map_err(|e| e.to_string())?);
                    (t, digest)
                }
                None => match (self.tensors.get(&d.name), self.digests.get(&d.name)) {
                    (Some(t), Some(digest)) => (t.clone(), digest.clone()),
                    _ => {
                        return Err(format!(
                            "global tensor `{}` is neither in this participant's copy nor received",
                            d.name
                        ))
                    }
                },
            };
            if digest != d.sha256 {
                return Err(format!(
                    "tensor `{}` does not match the digest the task lists for it",
                    d.name
                ));
            }
            view.tensors.insert(d.name.clone(), t);
            view.digests.insert(d.name.clone(), digest);
        }
        Ok(view)
    }

    /// Make `view` (checked by [`Held::view`]) the copy.
    fn adopt(&mut self, view: Held) {
        *self = view;
    }
}

/// Retries of calls that failed for lack of a connection: exponential backoff, until
/// the coordinator has been unreachable for the configured time.
struct Retry {
    timeout: Duration,
    since: Option<Instant>,
    backoff: Duration,
}

impl Retry {
    fn new(timeout: Duration) -> Self {
        Retry {
            timeout,
            since: None,
            backoff: Duration::from_millis(100),
        }
    }

    /// A call succeeded: the coordinator is reachable.
    fn reset(&mut self) {
        self.since = None;
        self.backoff = Duration::from_millis(100);
    }

    /// `call` failed with `status`: wait before retrying it, or fail when the status
    /// is not about the connection or the coordinator has been unreachable too long.
    async fn wait(&mut self, call: &'static str, status: tonic::Status) -> Result<()> {
        if !is_connection(&status) {
            return Err(Error::Status { call, status });
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() + self.backoff > self.timeout {
            return Err(Error::Connection(format!(
                "the coordinator has been unreachable for {:?} ({call}: {})",
                since.elapsed(),
                status.message()
            )));
        }
        tracing::warn!(call, error = %status.message(), backoff = ?self.backoff, "coordinator unreachable: retrying");
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
        Ok(())
    }
}

/// Whether `status` says the call did not get through (no connection, a connection
/// lost mid-call) rather than that the coordinator refused it.
fn is_connection(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled | Code::Aborted
    )
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
    let mut link = Link {
        client: connect(cfg).await?,
        cfg,
        retry: Retry::new(cfg.connect_timeout),
    };
    link.register(true).await?;
    let mut answered = 0;
    loop {
        let task = match link.client.next_task(NextTaskRequest {}).await {
            Ok(task) => task.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => {
                tracing::info!(participant = %cfg.id, "the coordinator does not know this participant (it restarted): registering again");
                link.register(false).await?;
                continue;
            }
            Err(status) => {
                link.retry.wait("NextTask", status).await?;
                continue;
            }
        };
        link.retry.reset();
        let kind = TaskKind::try_from(task.kind).unwrap_or(TaskKind::Unspecified);
        let answer = match kind {
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
                let wants = Wants::of_train(&ins);
                let Some(model) = link.fetch(&copy, &task, Which::Model, wants).await? else {
                    continue;
                };
                let start = Instant::now();
                let trained = match model {
                    Ok(view) => {
                        copy.adopt(view);
                        participant
                            .train(&ins, &copy.tensors)
                            .map_err(|e| e.to_string())
                    }
                    Err(msg) => Err(refused_copy(cfg, msg)),
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
                let Some(model) = link
                    .fetch(&copy, &task, Which::Model, Wants::PROFILE)
                    .await?
                else {
                    continue;
                };
                let current = if ins.stale {
                    match link
                        .fetch(&copy, &task, Which::Current, Wants::PROFILE)
                        .await?
                    {
                        Some(current) => Some(current),
                        None => continue,
                    }
                } else {
                    None
                };
                let start = Instant::now();
                let profiled = match (model, current) {
                    (Ok(model), None) => {
                        copy.adopt(model);
                        participant
                            .profile(&ins, &copy.tensors, &copy.tensors)
                            .map_err(|e| e.to_string())
                    }
                    (Ok(model), Some(Ok(current))) => {
                        // The copy follows the newer of the two: this round's global.
                        copy.adopt(current);
                        participant
                            .profile(&ins, &model.tensors, &copy.tensors)
                            .map_err(|e| e.to_string())
                    }
                    (Err(msg), _) | (_, Some(Err(msg))) => Err(refused_copy(cfg, msg)),
                };
                let measured_s = start.elapsed().as_secs_f64();
                let h = match profiled {
                    Ok(reply) => header(task.task_id, to_json(&reply)?, String::new(), measured_s),
                    Err(e) => header(task.task_id, String::new(), e, measured_s),
                };
                (h, BTreeMap::new())
            }
        };
        let (header, deltas) = answer;
        if link.push(header, &deltas).await? {
            answered += 1;
        }
    }
}

/// The reason a task failed when the model received does not check out.
fn refused_copy(cfg: &ServeConfig, msg: String) -> String {
    tracing::warn!(participant = %cfg.id, reason = %msg, "the model received does not check out");
    msg
}

/// How a pull ended.
enum Pulled {
    Tensors(BTreeMap<String, Tensor>),
    /// The task closed meanwhile.
    Closed,
    /// The payload did not decode or check out, twice.
    Corrupt(String),
}

/// What an instruction says about the tensors to pull.
#[derive(Clone, Copy)]
enum Wants<'a> {
    /// Every tensor: the run keeps no copy between rounds.
    Everything,
    /// What the copy lacks; `changed` names the tensors that changed since the copy the
    /// coordinator accounts for, when it knows.
    Lacking {
        changed: Option<&'a std::collections::BTreeSet<String>>,
    },
}

impl<'a> Wants<'a> {
    fn of_train(ins: &'a TrainIns) -> Self {
        match &ins.changed {
            None => Wants::Everything,
            Some(changed) => Wants::Lacking {
                changed: Some(changed),
            },
        }
    }

    /// A profile names no changes: the copy pulls whatever it lacks.
    const PROFILE: Wants<'static> = Wants::Lacking { changed: None };
}

fn header(task_id: u64, reply_json: String, error: String, measured_s: f64) -> ReplyHeader {
    ReplyHeader {
        task_id,
        reply_json,
        error,
        measured_s,
        sha256: Vec::new(),
        first_chunk: 0,
    }
}

fn parse<T: serde::de::DeserializeOwned>(json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| Error::Protocol(format!("instruction: {e}")))
}

fn to_json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Protocol(format!("reply: {e}")))
}

/// The connection to the coordinator, the participant's settings, and how lost
/// connections are retried: what every call needs.
struct Link<'a> {
    client: Client,
    cfg: &'a ServeConfig,
    retry: Retry,
}

impl Link<'_> {
    /// Register, retrying while the coordinator is unreachable. The `first`
    /// registration runs on the connection just made, so a connection closed under it is
    /// the coordinator refusing this client (mutual TLS) or a TLS coordinator reached over
    /// `http://`: retrying does not heal that, and the error says so.
    async fn register(&mut self, first: bool) -> Result<()> {
        let device_profile_json = serde_json::to_string(&self.cfg.profile)
            .map_err(|e| Error::Config(format!("device profile: {e}")))?;
        loop {
            let request = RegisterRequest {
                device_profile_json: device_profile_json.clone(),
            };
            match self.client.register(request).await {
                Ok(_) => {
                    self.retry.reset();
                    tracing::info!(participant = %self.cfg.id, url = %self.cfg.url, "registered");
                    return Ok(());
                }
                Err(status) if first => {
                    return Err(crate::tls::first_call_failed(
                        &self.cfg.url,
                        "Register",
                        status,
                    ))
                }
                Err(status) => self.retry.wait("Register", status).await?,
            }
        }
    }

    /// Pull what the copy lacks of the task's model (`Which::Model`, the task's `global`)
    /// or this round's global (`Which::Current`, its `current`) and check it: the model, or
    /// why it does not check out; `None` when the task closed meanwhile.
    async fn fetch(
        &mut self,
        copy: &Held,
        task: &Task,
        which: Which,
        wants: Wants<'_>,
    ) -> Result<Option<std::result::Result<Held, String>>> {
        let manifest = match which {
            Which::Current => &task.current,
            _ => &task.global,
        };
        let names = copy.lacking(manifest, matches!(wants, Wants::Everything))?;
        if let Wants::Lacking {
            changed: Some(changed),
        } = wants
        {
            let repaired = names.iter().filter(|n| !changed.contains(*n)).count();
            if repaired > 0 {
                tracing::warn!(
                    participant = %self.cfg.id,
                    repaired,
                    "this participant's copy is not the one the coordinator accounted for: \
                     pulling the tensors that differ"
                );
            }
        }
        Ok(match self.pull(task.task_id, which, &names).await? {
            Pulled::Closed => None,
            Pulled::Corrupt(msg) => Some(Err(format!(
                "the payload pulled for task {} did not check out twice: {msg}",
                task.task_id
            ))),
            Pulled::Tensors(received) => Some(
                copy.view(manifest, &names, received)
                    .map_err(|msg| format!("this participant's copy of the global model: {msg}")),
            ),
        })
    }

    /// Download the tensors `names` of a payload of task `task_id`, resuming at the next
    /// chunk when the stream breaks. A payload that does not decode or check out (its
    /// SHA-256) is pulled once more from the start; a second bad one fails the task, not
    /// this participant.
    async fn pull(&mut self, task_id: u64, which: Which, names: &[String]) -> Result<Pulled> {
        if names.is_empty() {
            return Ok(Pulled::Tensors(BTreeMap::new()));
        }
        let mut receiver = ChunkReceiver::new(self.cfg.max_payload_bytes);
        let mut corrupt = 0;
        let mut restart = false;
        loop {
            let request = PullRequest {
                task_id,
                which: which as i32,
                names: names.to_vec(),
                first_chunk: receiver.received() as u64,
            };
            let broke = match self.client.pull_tensors(request).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(chunk)) => {
                                self.retry.reset();
                                match receiver.accept(chunk) {
                                    Ok(None) => {}
                                    Ok(Some(tensors)) => return Ok(Pulled::Tensors(tensors)),
                                    Err(e) if corrupt == 0 => {
                                        corrupt += 1;
                                        tracing::warn!(participant = %self.cfg.id, task_id, reason = %e, "the payload pulled does not check out: pulling it again from the start");
                                        receiver = ChunkReceiver::new(self.cfg.max_payload_bytes);
                                        restart = true;
                                        break tonic::Status::data_loss(e.to_string());
                                    }
                                    Err(e) => return Ok(Pulled::Corrupt(e.to_string())),
                                }
                            }
                            Ok(None) => return Err(ChunkReceiver::ended_early()),
                            Err(status) => break status,
                        }
                    }
                }
                Err(status) => status,
            };
            if broke.code() == tonic::Code::FailedPrecondition {
                tracing::warn!(participant = %self.cfg.id, task_id, reason = %broke.message(), "task closed: dropped");
                return Ok(Pulled::Closed);
            }
            if std::mem::take(&mut restart) {
                continue;
            }
            self.retry.wait("PullTensors", broke).await?;
        }
    }

    /// Upload `header` and the payload of `deltas`; when the connection breaks, resume at
    /// the first chunk the coordinator did not keep (`UploadOffset`), or from the start if
    /// it kept none. Whether the coordinator took it (it does not when the task closed
    /// meanwhile).
    async fn push(
        &mut self,
        mut header: ReplyHeader,
        deltas: &BTreeMap<String, Tensor>,
    ) -> Result<bool> {
        let payload = Payload::encode(deltas)?;
        header.sha256 = payload.sha256.clone();
        let mut first = 0;
        loop {
            header.first_chunk = first as u64;
            let parts = std::iter::once(ReplyPart {
                part: Some(reply_part::Part::Header(header.clone())),
            })
            .chain(
                to_chunks_from(Arc::clone(&payload), first).map(|c| ReplyPart {
                    part: Some(reply_part::Part::Chunk(c)),
                }),
            );
            match self.client.push_reply(tokio_stream::iter(parts)).await {
                Ok(_) => {
                    self.retry.reset();
                    return Ok(true);
                }
                // The round closed (timeout, restart) while this participant worked.
                Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                    tracing::warn!(task_id = header.task_id, reason = %status.message(), "answer not taken");
                    return Ok(false);
                }
                // The coordinator no longer holds the chunks before `first`: start over.
                Err(status) if status.code() == tonic::Code::OutOfRange && first > 0 => first = 0,
                Err(status) => {
                    self.retry.wait("PushReply", status).await?;
                    let offset = UploadOffsetRequest {
                        task_id: header.task_id,
                        sha256: payload.sha256.clone(),
                    };
                    first = match self.client.upload_offset(offset).await {
                        Ok(reply) => usize::try_from(reply.into_inner().chunks)
                            .unwrap_or(0)
                            .min(chunk_count(&payload) - 1),
                        Err(_) => 0,
                    };
                }
            }
        }
    }
}
