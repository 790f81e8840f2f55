//! [`GrpcTransport`]: the coordinator's side of a deployment, a
//! [`fluxmoe_fed::Transport`] whose participants are other processes.
//!
//! The transport owns a tokio runtime (two worker threads) serving the `Federation`
//! service of `proto/fluxmoe.proto`. Participants register with their device profile;
//! the pool is every registered participant. [`Transport::send_and_receive`] posts
//! each sampled participant its instruction as a task with the tensors it must
//! download, and blocks the calling (coordinator) thread until every task has an answer or
//! `reply_timeout` (wall clock) has passed; a participant that has not answered by
//! then becomes a [`FailureKind::Deadline`] failure. Answers become the
//! [`Exchange`] through `fluxmoe_fed::transport::settle_train`, the code
//! `LocalTransport` uses, so virtual time, deadlines in virtual seconds and ordering
//! are those of the simulation.
//!
//! What travels: a participant keeps its copy of the global model between rounds
//! (see [`crate::participant`]). A task lists every tensor of the model to work on
//! with the SHA-256 of its payload record (digests are kept while a tensor stays in
//! the global, so an unchanged tensor is not encoded again), and the participant pulls
//! by name the tensors its copy lacks: under `Download::Changed` exactly those
//! [`TrainIns::must_download`] names when its copy is the one the coordinator
//! accounted for, and also whatever else differs when it is not (a participant that
//! restarted from the initial model, or copies ahead of a coordinator restarted from a
//! checkpoint), so a stale copy is repaired instead of failing. Payloads are built on
//! request from records encoded once per tensor and shared by every payload that
//! carries them; a payload stays cached with its task, so a pull interrupted by a
//! dropped connection resumes at its next chunk (`PullRequest.first_chunk`) on the
//! same bytes. The virtual clock charges what the simulation charges, which is what
//! travels unless a copy needed repair (the participant logs a repair).
//!
//! Before anything is aggregated an upload is checked: the payload is size-limited and
//! checksummed ([`crate::codec`]), its deltas must be for tensors the participant was
//! told to tune this round, with the global tensor's shape and dtype, finite, and
//! within `max_delta_norm` when one is set. Dropping the
//! transport tells every participant the run is done, waits briefly for them to hear
//! it, and stops the server.
//!
//! Security and operation: the server speaks TLS (optionally mutual) when given a
//! [`ServerTls`] and warns when it serves plain on a non-loopback address. Tokens come
//! from [`LiveTokens`]: with a tokens file, a participant whose line is removed is
//! revoked: refused from its next call on, its open task failed at once (the round
//! does not wait for it), and out of the pool. The `Status` call reports the
//! registered participants, the round, the phase and whether the run is done.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor, TensorId};
use fluxmoe_fed::transport::{check_recipients, settle_profile, settle_train};
use fluxmoe_fed::{
    DeviceProfile, Exchange, Failure, FailureKind, Global, MeasuredRss, ParticipantId,
    ProfileExchange, ProfileIns, ProfileReply, TrainIns, Transport,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::chunks::{chunk_count, to_chunks_from};
use crate::chunks::{ChunkReceiver, Payload};
use crate::codec;
use crate::error::{Error, Result};
use crate::proto::federation_server::{Federation, FederationServer};
use crate::proto::{
    reply_part, Chunk, NextTaskRequest, ParticipantStatus, Phase, PullRequest, PushAck,
    RegisterReply, RegisterRequest, ReplyPart, StatusReply, StatusRequest, Task, TaskKind,
    TensorDigest, UploadOffsetReply, UploadOffsetRequest, Which,
};
use crate::reply::ReplyMeta;
use crate::tls::ServerTls;
use crate::tokens::{LiveTokens, Tokens, TokensFile};

/// How the coordinator serves its participants.
#[derive(Clone, Debug)]
pub struct GrpcTransportConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port; see
    /// [`GrpcTransport::local_addr`]).
    pub listen: SocketAddr,
    pub tokens: Tokens,
    /// Re-read the tokens from this file when it changes (revocation); `tokens` are
    /// in force until then.
    pub tokens_file: Option<TokensFile>,
    /// Serve TLS (mutual when it names a client CA); plain HTTP/2 when `None`.
    pub tls: Option<ServerTls>,
    /// Wall-clock time the coordinator waits for a round's answers.
    pub reply_timeout: Duration,
    /// Largest upload accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Refuse an update with a delta whose L2 norm exceeds this (`None`: no bound).
    pub max_delta_norm: Option<f64>,
    /// How long a `NextTask` call waits for work before answering "wait".
    pub poll_interval: Duration,
    /// Set when the run stops to be resumed later (SIGTERM): dropping the transport
    /// then does not tell participants the run is done, so they keep retrying until
    /// the coordinator is back.
    pub suspend: Option<Arc<AtomicBool>>,
}

/// A task posted to one participant and not yet answered.
struct Pending {
    task_id: u64,
    kind: TaskKind,
    round: u32,
    instruction_json: String,
    /// The digest of every tensor of `model` (the task's `global`).
    global: Arc<Vec<TensorDigest>>,
    /// Stale profiling only: the digest of every tensor of `current`.
    current_digests: Arc<Vec<TensorDigest>>,
    /// The model to train or profile on.
    model: Arc<Global>,
    /// This round's global (profiling; the same as `model` unless stale).
    current: Arc<Global>,
    /// Shape and dtype of each tensor the participant may send a delta for.
    allowed: BTreeMap<String, (DType, Vec<usize>)>,
    /// The payloads pulled for this task, by what was asked: a resumed pull gets the
    /// same bytes.
    served: HashMap<(Which, Vec<String>), Arc<Payload>>,
}

/// What the coordinator makes of an answer: the reply header (JSON) and deltas, or
/// the participant's error; and the participant's measured seconds.
type Received = (fluxmoe_fed::Result<(String, Global)>, f64);

/// What came back for a task: the reply header and deltas, or the participant's error.
struct Answer {
    result: std::result::Result<(String, BTreeMap<String, Tensor>), String>,
    measured_s: f64,
}

#[derive(Default)]
struct State {
    profiles: BTreeMap<ParticipantId, DeviceProfile>,
    pending: BTreeMap<ParticipantId, Pending>,
    answers: BTreeMap<ParticipantId, Answer>,
    next_task_id: u64,
    done: bool,
    /// Participants told the run is done.
    dismissed: BTreeSet<ParticipantId>,
    /// Registered participants whose token was revoked: out of the pool.
    revoked: BTreeSet<ParticipantId>,
    /// When each participant last called (`Status` aside).
    last_seen: BTreeMap<ParticipantId, Instant>,
    /// The round of the last tasks posted.
    round: u32,
    /// Broken uploads, by participant (at most one each: its open task's).
    partial: BTreeMap<ParticipantId, PartialUpload>,
}

impl State {
    /// Registered participants that are not revoked.
    fn active(&self) -> impl Iterator<Item = ParticipantId> + '_ {
        self.profiles
            .keys()
            .copied()
            .filter(|id| !self.revoked.contains(id))
    }

    /// Answer the open task of every revoked participant with its failure, so the
    /// round does not wait for it.
    fn fail_revoked(&mut self) {
        let open: Vec<ParticipantId> = self
            .pending
            .keys()
            .copied()
            .filter(|id| self.revoked.contains(id) && !self.answers.contains_key(id))
            .collect();
        for id in open {
            self.answers.insert(
                id,
                Answer {
                    result: Err(format!("participant {id}'s token was revoked")),
                    measured_s: 0.0,
                },
            );
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the coordinator thread (registrations, answers, dismissals).
    changed: Condvar,
    /// Wakes participants waiting in `NextTask`.
    posted: tokio::sync::Notify,
    tokens: LiveTokens,
    /// What `Status` reports about the channel: TLS, mutual TLS.
    tls: (bool, bool),
    started: Instant,
    max_payload_bytes: usize,
    max_delta_norm: Option<f64>,
    poll_interval: Duration,
    pulls: PullLog,
    uploads: UploadLog,
    /// Payload records of the tensors pulled, by name and tensor (see [`Digests`]).
    records: Mutex<Records>,
}

/// One payload a participant pulled.
#[derive(Clone, Debug, PartialEq)]
pub struct Pull {
    pub participant: ParticipantId,
    /// The round of the task it pulled for.
    pub round: u32,
    pub kind: TaskKind,
    pub which: Which,
    /// Tensors in the payload.
    pub tensors: usize,
    /// Bytes of the payload (its header and records).
    pub bytes: usize,
    /// The chunk the stream started at: 0, or where a broken stream resumed.
    pub first_chunk: usize,
}

/// Every payload pulled from a [`GrpcTransport`], in order; a handle that outlives
/// the transport (see [`GrpcTransport::pulls`]).
#[derive(Clone, Debug, Default)]
pub struct PullLog(Arc<Mutex<Vec<Pull>>>);

impl PullLog {
    /// The pulls so far.
    pub fn pulls(&self) -> Vec<Pull> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn push(&self, pull: Pull) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(pull);
    }
}

/// One upload the coordinator received whole.
#[derive(Clone, Debug, PartialEq)]
pub struct Upload {
    pub participant: ParticipantId,
    pub task_id: u64,
    /// The chunk this stream started at: 0, or where a broken upload resumed.
    pub first_chunk: usize,
    /// Chunks of the payload.
    pub chunks: usize,
}

/// Every upload received whole, in order (see [`GrpcTransport::uploads`]).
#[derive(Clone, Debug, Default)]
pub struct UploadLog(Arc<Mutex<Vec<Upload>>>);

impl UploadLog {
    /// The uploads so far.
    pub fn uploads(&self) -> Vec<Upload> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn push(&self, upload: Upload) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(upload);
    }
}

/// The chunks of a broken upload, kept so that the participant can resume it.
struct PartialUpload {
    task_id: u64,
    sha256: Vec<u8>,
    receiver: ChunkReceiver,
}

/// The SHA-256 of each global tensor's payload record, by name and tensor (global
/// tensors are immutable, so a tensor's id stands for its contents).
type Digests = HashMap<(String, TensorId), Vec<u8>>;

/// Encoded payload records, by name and tensor as [`Digests`].
type Records = HashMap<(String, TensorId), Arc<Vec<u8>>>;

/// Every tensor of `global` with the digest of its record. A tensor not in `digests`
/// yet is encoded for its digest only (its record is not kept: most tensors are never
/// pulled).
fn manifest(digests: &mut Digests, global: &Global) -> Result<Arc<Vec<TensorDigest>>> {
    let list = global
        .iter()
        .map(|(name, t)| {
            let key = (name.clone(), t.id());
            let sha256 = match digests.get(&key) {
                Some(d) => d.clone(),
                None => {
                    let d = codec::digest(&codec::record(name, t)?);
                    digests.insert(key, d.clone());
                    d
                }
            };
            Ok(TensorDigest {
                name: name.clone(),
                sha256,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(list))
}

/// Forget what is kept of tensors no longer in any of `globals`.
fn keep_live<V>(map: &mut HashMap<(String, TensorId), V>, globals: &[&Global]) {
    let live: HashSet<(&str, TensorId)> = globals
        .iter()
        .flat_map(|g| g.iter().map(|(n, t)| (n.as_str(), t.id())))
        .collect();
    map.retain(|(name, id), _| live.contains(&(name.as_str(), *id)));
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicked handler cannot leave the maps half-updated (each update is one
        // insert or remove), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn records(&self) -> MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep only the records of tensors still in one of `globals`.
    fn keep_records(&self, globals: &[&Global]) {
        keep_live(&mut self.records(), globals);
    }

    /// The payload of the tensors `names` (ascending, each in `model`) of `model`, from
    /// records encoded at most once per tensor.
    fn payload(&self, model: &Global, names: &[String]) -> Result<Arc<Payload>> {
        let mut records = Vec::with_capacity(names.len());
        for name in names {
            let t = model.get(name).ok_or_else(|| {
                Error::Protocol(format!("tensor `{name}` is not in the task's model"))
            })?;
            let key = (name.clone(), t.id());
            let cached = self.records().get(&key).cloned();
            let record = match cached {
                Some(r) => r,
                None => {
                    let r = Arc::new(codec::record(name, t)?);
                    self.records().insert(key, Arc::clone(&r));
                    r
                }
            };
            records.push(record);
        }
        Payload::from_records(records)
    }

    /// Re-read the tokens file if due; revoke the registered participants whose token
    /// it removed or changed.
    fn refresh_tokens(&self) {
        let Some(lost) = self.tokens.refresh() else {
            return;
        };
        let mut state = self.lock();
        for id in lost {
            if state.profiles.contains_key(&id) && state.revoked.insert(id) {
                tracing::warn!(participant = %id, "token revoked: the participant is out of the run");
            }
        }
        state.fail_revoked();
        drop(state);
        self.changed.notify_all();
    }

    /// The participant a call authenticates, under the tokens in force (re-read
    /// first if due); a revoked participant is refused until it registers again.
    /// Every authenticated call but `Status` counts as the participant being seen.
    fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        call: Call,
    ) -> std::result::Result<ParticipantId, Status> {
        self.refresh_tokens();
        let id = self.tokens.authenticate(metadata)?;
        if call == Call::Status {
            return Ok(id);
        }
        let mut state = self.lock();
        if call != Call::Register && state.revoked.contains(&id) {
            tracing::warn!(participant = %id, "refused a call of a revoked participant");
            return Err(Status::unauthenticated(format!(
                "participant {id}'s token was revoked"
            )));
        }
        state.last_seen.insert(id, Instant::now());
        Ok(id)
    }

    /// The coordinator's state for `Status`.
    fn status(&self) -> StatusReply {
        let state = self.lock();
        let open = state.pending.values().next();
        let phase = match open.map(|p| p.kind) {
            _ if state.done => Phase::Done,
            Some(TaskKind::Profile) => Phase::Profiling,
            Some(_) => Phase::Training,
            None => Phase::Idle,
        };
        let participants = state
            .profiles
            .iter()
            .map(|(id, profile)| {
                let answered = state.answers.contains_key(id);
                ParticipantStatus {
                    id: id.0,
                    device: profile.name.clone(),
                    task_pending: state.pending.contains_key(id) && !answered,
                    answered: state.pending.contains_key(id) && answered,
                    revoked: state.revoked.contains(id),
                    last_seen_s_ago: state
                        .last_seen
                        .get(id)
                        .map_or(f64::NAN, |t| t.elapsed().as_secs_f64()),
                }
            })
            .collect();
        StatusReply {
            participants,
            round: open.map_or(state.round, |p| p.round),
            phase: phase as i32,
            done: state.done,
            uptime_s: self.started.elapsed().as_secs_f64(),
            tls: self.tls.0,
            mutual_tls: self.tls.1,
        }
    }
}

/// Which call is being authenticated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Register,
    Status,
    Other,
}

/// The coordinator's transport over gRPC.
pub struct GrpcTransport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    reply_timeout: Duration,
    digests: Digests,
    suspend: Option<Arc<AtomicBool>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server task, awaited on drop so in-flight answers (the last "done"s) are
    /// delivered before the runtime stops.
    server: Option<tokio::task::JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl GrpcTransport {
    /// Start serving on `cfg.listen`.
    pub fn bind(cfg: GrpcTransportConfig) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fluxmoe-grpc")
            .enable_all()
            .build()
            .map_err(|e| Error::Connection(format!("cannot start the server runtime: {e}")))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(cfg.listen))
            .map_err(|e| Error::Connection(format!("cannot listen on {}: {e}", cfg.listen)))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::Connection(format!("listening socket: {e}")))?;
        let mut builder = server_builder(cfg.tls.as_ref(), local_addr)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            posted: tokio::sync::Notify::new(),
            tokens: LiveTokens::new(cfg.tokens, cfg.tokens_file),
            tls: (
                cfg.tls.is_some(),
                cfg.tls.as_ref().is_some_and(ServerTls::mutual),
            ),
            started: Instant::now(),
            max_payload_bytes: cfg.max_payload_bytes,
            max_delta_norm: cfg.max_delta_norm,
            poll_interval: cfg.poll_interval,
            pulls: PullLog::default(),
            uploads: UploadLog::default(),
            records: Mutex::new(HashMap::new()),
        });
        let service = FederationServer::new(Service {
            shared: Arc::clone(&shared),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = runtime.spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let served = builder
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the gRPC server stopped");
            }
        });
        tracing::info!(%local_addr, tls = cfg.tls.is_some(), "coordinator listening");
        Ok(GrpcTransport {
            shared,
            local_addr,
            reply_timeout: cfg.reply_timeout,
            digests: Digests::new(),
            suspend: cfg.suspend,
            shutdown: Some(tx),
            server: Some(server),
            runtime: Some(runtime),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every payload participants have pulled so far, and later (the log outlives
    /// the transport): what actually travelled.
    pub fn pulls(&self) -> PullLog {
        self.shared.pulls.clone()
    }

    /// Every upload received whole so far, and later (the log outlives the transport).
    pub fn uploads(&self) -> UploadLog {
        self.shared.uploads.clone()
    }

    /// Block until at least `n` participants have registered, or fail after `timeout`.
    pub fn wait_for_participants(&self, n: usize, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let mut state = self.shared.lock();
        while state.active().count() < n {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(Error::Connection(format!(
                    "{} of {n} participants registered within {timeout:?}",
                    state.active().count()
                )));
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Post one task per message, wait for the answers (or the timeout), and return
    /// each recipient's device profile with its answer (the reply header and deltas,
    /// or its error, and its measured seconds) or, when it did not answer in time,
    /// its deadline failure.
    fn exchange(
        &mut self,
        tasks: Vec<(ParticipantId, Pending)>,
    ) -> Vec<(
        ParticipantId,
        DeviceProfile,
        std::result::Result<Received, Failure>,
    )> {
        let ids: Vec<ParticipantId> = tasks.iter().map(|(id, _)| *id).collect();
        self.shared.refresh_tokens();
        {
            let mut state = self.shared.lock();
            for (id, mut task) in tasks {
                state.next_task_id += 1;
                task.task_id = state.next_task_id;
                state.answers.remove(&id);
                state.round = task.round;
                state.pending.insert(id, task);
            }
            state.fail_revoked();
        }
        self.shared.posted.notify_waiters();
        let start = Instant::now();
        // With a tokens file, wake up to re-read it: a participant revoked meanwhile
        // fails now rather than at the timeout.
        let tick = self.shared.tokens.check_every().unwrap_or(Duration::MAX);
        let mut state = self.shared.lock();
        while !ids.iter().all(|id| state.answers.contains_key(id)) {
            let left = self.reply_timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left.min(tick))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            drop(state);
            self.shared.refresh_tokens();
            state = self.shared.lock();
        }
        ids.into_iter()
            .map(|id| {
                state.pending.remove(&id);
                state.partial.remove(&id);
                let profile = state.profiles[&id].clone();
                let received = match state.answers.remove(&id) {
                    Some(answer) => Ok((
                        answer.result.map_err(|msg| participant_error(id, msg)),
                        answer.measured_s,
                    )),
                    None => Err(self.late(id)),
                };
                (id, profile, received)
            })
            .collect()
    }

    fn late(&self, id: ParticipantId) -> Failure {
        tracing::warn!(participant = %id, timeout = ?self.reply_timeout, "no answer in time");
        Failure::new(
            id,
            FailureKind::Deadline,
            format!("no answer within {:?} (wall clock)", self.reply_timeout),
        )
    }

    fn known(&self) -> impl Fn(ParticipantId) -> bool {
        // Revoked participants stay known: a task for one fails at once.
        let known: Vec<ParticipantId> = self.shared.lock().profiles.keys().copied().collect();
        move |id| known.binary_search(&id).is_ok()
    }
}

/// What a task works on: the model and its digests, and for a stale profile this
/// round's global and its digests too.
struct Models {
    model: Arc<Global>,
    global: Arc<Vec<TensorDigest>>,
    current: Arc<Global>,
    current_digests: Arc<Vec<TensorDigest>>,
}

impl Models {
    /// A task on `model` itself: its current model is the same one, held once.
    fn of(model: Global, digests: Arc<Vec<TensorDigest>>) -> Models {
        let model = Arc::new(model);
        Models {
            current: Arc::clone(&model),
            model,
            global: digests,
            current_digests: Arc::default(),
        }
    }
}

fn task(
    kind: TaskKind,
    round: u32,
    instruction: &impl serde::Serialize,
    models: &Models,
    allowed: BTreeMap<String, (DType, Vec<usize>)>,
) -> fluxmoe_fed::Result<Pending> {
    Ok(Pending {
        task_id: 0,
        kind,
        round,
        instruction_json: serde_json::to_string(instruction)
            .map_err(|e| fluxmoe_fed::Error::json("instruction", e))?,
        global: Arc::clone(&models.global),
        current_digests: Arc::clone(&models.current_digests),
        model: Arc::clone(&models.model),
        current: Arc::clone(&models.current),
        allowed,
        served: HashMap::new(),
    })
}

impl Transport for GrpcTransport {
    fn pool(&self) -> Vec<ParticipantId> {
        // Asked before each round's sampling: a revocation applies from there.
        self.shared.refresh_tokens();
        self.shared.lock().active().collect()
    }

    fn profile(
        &mut self,
        mut msgs: Vec<(ParticipantId, ProfileIns)>,
        current: &Global,
        previous: &Global,
    ) -> fluxmoe_fed::Result<ProfileExchange> {
        check_recipients(&mut msgs, self.known())?;
        let stale = msgs.iter().any(|(_, ins)| ins.stale);
        let fresh = Models::of(current.clone(), manifest(&mut self.digests, current)?);
        let stale = if stale {
            Some(Models {
                model: Arc::new(previous.clone()),
                global: manifest(&mut self.digests, previous)?,
                current: Arc::clone(&fresh.model),
                current_digests: Arc::clone(&fresh.global),
            })
        } else {
            None
        };
        keep_live(&mut self.digests, &[current, previous]);
        self.shared.keep_records(&[current, previous]);
        let mut tasks = Vec::with_capacity(msgs.len());
        for (id, ins) in &msgs {
            let models = match (&stale, ins.stale) {
                (Some(stale), true) => stale,
                _ => &fresh,
            };
            let t = task(TaskKind::Profile, ins.round.0, ins, models, BTreeMap::new())?;
            tasks.push((*id, t));
        }
        let mut out = ProfileExchange::default();
        for (id, profile, received) in self.exchange(tasks) {
            match received {
                Ok((result, measured_s)) => {
                    let result = result.and_then(|(json, _)| from_json::<ProfileReply>(&json, id));
                    settle_profile(&mut out, id, result, &profile, measured_s);
                }
                Err(late) => out.failures.push(late),
            }
        }
        out.failures.sort_by_key(|f| f.participant);
        Ok(out)
    }

    fn send_and_receive(
        &mut self,
        mut msgs: Vec<(ParticipantId, TrainIns)>,
        global: &Global,
        deadline_s: Option<f64>,
    ) -> fluxmoe_fed::Result<Exchange> {
        check_recipients(&mut msgs, self.known())?;
        for (_, ins) in &msgs {
            if let Some(name) = ins
                .changed
                .iter()
                .flatten()
                .find(|name| !global.contains_key(*name))
            {
                return Err(fluxmoe_fed::Error::tensor(
                    name,
                    "named as changed but not in the global model",
                ));
            }
        }
        let models = Models::of(global.clone(), manifest(&mut self.digests, global)?);
        keep_live(&mut self.digests, &[global]);
        self.shared.keep_records(&[global]);
        let mut tasks = Vec::with_capacity(msgs.len());
        for (id, ins) in &msgs {
            let mut allowed = BTreeMap::new();
            for name in &ins.trainable {
                let t = global.get(name).ok_or_else(|| {
                    fluxmoe_fed::Error::tensor(
                        name,
                        "instructed for training but not in the global model",
                    )
                })?;
                allowed.insert(name.clone(), (t.dtype(), t.dims().to_vec()));
            }
            let t = task(TaskKind::Train, ins.round.0, ins, &models, allowed)?;
            tasks.push((*id, t));
        }
        let mut out = Exchange::default();
        for (id, profile, received) in self.exchange(tasks) {
            match received {
                Ok((result, measured_s)) => {
                    let trained = result.and_then(|(json, deltas)| {
                        Ok(from_json::<ReplyMeta>(&json, id)?.join(deltas))
                    });
                    settle_train(
                        &mut out,
                        id,
                        trained,
                        &profile,
                        measured_s,
                        MeasuredRss::default(),
                        deadline_s,
                    );
                }
                Err(late) => out.failures.push(late),
            }
        }
        out.failures.sort_by_key(|f| f.participant);
        Ok(out)
    }
}

fn participant_error(participant: ParticipantId, msg: String) -> fluxmoe_fed::Error {
    fluxmoe_fed::Error::Participant { participant, msg }
}

/// Parse participant `id`'s JSON reply header.
fn from_json<T: serde::de::DeserializeOwned>(
    json: &str,
    id: ParticipantId,
) -> fluxmoe_fed::Result<T> {
    serde_json::from_str(json)
        .map_err(|e| fluxmoe_fed::Error::json(format!("participant {id}'s reply"), e))
}

impl Drop for GrpcTransport {
    /// Tell every participant the run is done (unless the run is suspended), give
    /// them up to 5 s to hear it, stop the server gracefully (up to 5 s more for calls
    /// in flight).
    fn drop(&mut self) {
        if self
            .suspend
            .as_ref()
            .is_some_and(|s| s.load(Ordering::SeqCst))
        {
            tracing::info!("suspended: participants keep waiting for the coordinator");
        } else {
            self.shared.lock().done = true;
            self.shared.posted.notify_waiters();
            let start = Instant::now();
            let grace = Duration::from_secs(5);
            let mut state = self.shared.lock();
            while state.active().any(|id| !state.dismissed.contains(&id)) && start.elapsed() < grace
            {
                state = self
                    .shared
                    .changed
                    .wait_timeout(state, grace.saturating_sub(start.elapsed()))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.runtime.take() {
            if let Some(server) = self.server.take() {
                let _ = rt.block_on(async move {
                    tokio::time::timeout(Duration::from_secs(5), server).await
                });
            }
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// The `Federation` service: thin handlers over the shared state.
struct Service {
    shared: Arc<Shared>,
}

type ChunkStream = Pin<Box<dyn Stream<Item = std::result::Result<Chunk, Status>> + Send>>;

impl Service {
    /// The id of a task `id` may answer or pull for, or why not.
    fn check_task(&self, id: ParticipantId, task_id: u64) -> std::result::Result<(), Status> {
        match self.shared.lock().pending.get(&id) {
            Some(p) if p.task_id == task_id => Ok(()),
            _ => Err(Status::failed_precondition(format!(
                "participant {id}: task {task_id} is not open (finished, timed out or never posted)"
            ))),
        }
    }

    /// Read an upload: the header, then the payload's chunks.
    async fn read_upload(
        &self,
        id: ParticipantId,
        mut stream: Streaming<ReplyPart>,
    ) -> std::result::Result<(u64, Answer), Status> {
        let header = match stream.message().await? {
            Some(ReplyPart {
                part: Some(reply_part::Part::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "an upload must start with its header",
                ))
            }
        };
        self.check_task(id, header.task_id)?;
        let first_chunk = usize::try_from(header.first_chunk).unwrap_or(usize::MAX);
        let mut receiver = if first_chunk == 0 {
            ChunkReceiver::new(self.shared.max_payload_bytes)
        } else {
            match self.shared.lock().partial.remove(&id) {
                Some(p)
                    if p.task_id == header.task_id
                        && p.sha256 == header.sha256
                        && p.receiver.received() == first_chunk =>
                {
                    p.receiver
                }
                _ => {
                    return Err(Status::out_of_range(format!(
                        "no broken upload of this payload holds chunks 0..{first_chunk}: \
                         send it from chunk 0"
                    )))
                }
            }
        };
        let deltas = loop {
            let message = match stream.message().await {
                Ok(m) => m,
                Err(status) => {
                    // The connection broke: keep what arrived for a resumed upload.
                    if !header.sha256.is_empty() && receiver.received() > 0 {
                        tracing::debug!(participant = %id, chunks = receiver.received(), "upload broken: kept for resumption");
                        self.shared.lock().partial.insert(
                            id,
                            PartialUpload {
                                task_id: header.task_id,
                                sha256: header.sha256.clone(),
                                receiver,
                            },
                        );
                    }
                    return Err(status);
                }
            };
            let chunk = match message {
                Some(ReplyPart {
                    part: Some(reply_part::Part::Chunk(c)),
                }) => c,
                Some(_) => return Err(Status::invalid_argument("a second header in one upload")),
                None => {
                    return Err(Status::invalid_argument(
                        ChunkReceiver::ended_early().to_string(),
                    ))
                }
            };
            if let Some(tensors) = receiver
                .accept(chunk)
                .map_err(|e| Status::invalid_argument(e.to_string()))?
            {
                break tensors;
            }
        };
        self.shared.uploads.push(Upload {
            participant: id,
            task_id: header.task_id,
            first_chunk,
            chunks: receiver.received(),
        });
        let result = if header.error.is_empty() {
            // A refused update fails this participant's round, not the upload call.
            match self.check_deltas(id, header.task_id, &deltas) {
                Ok(()) => Ok((header.reply_json, deltas)),
                Err(status) => Err(format!("update refused: {}", status.message())),
            }
        } else {
            Err(header.error)
        };
        Ok((
            header.task_id,
            Answer {
                result,
                measured_s: header.measured_s,
            },
        ))
    }

    /// Every delta must be for a tensor assigned to `id` this round, with its shape
    /// and dtype, and hold only finite values.
    fn check_deltas(
        &self,
        id: ParticipantId,
        task_id: u64,
        deltas: &BTreeMap<String, Tensor>,
    ) -> std::result::Result<(), Status> {
        let state = self.shared.lock();
        let Some(pending) = state.pending.get(&id).filter(|p| p.task_id == task_id) else {
            return Err(Status::failed_precondition(format!(
                "participant {id}: task {task_id} closed during the upload"
            )));
        };
        for (name, t) in deltas {
            let refuse = |why: String| {
                tracing::warn!(participant = %id, tensor = %name, reason = %why, "refused an update");
                Status::invalid_argument(format!("delta `{name}`: {why}"))
            };
            let Some((dtype, dims)) = pending.allowed.get(name) else {
                return Err(refuse("not assigned to this participant this round".into()));
            };
            if t.dtype() != *dtype || t.dims() != dims.as_slice() {
                return Err(refuse(format!(
                    "{:?} {:?}, the global tensor is {dtype:?} {dims:?}",
                    t.dtype(),
                    t.dims()
                )));
            }
            // In f64 no finite f32/f16 value overflows when squared: a non-finite sum
            // means NaN or Inf in the delta itself.
            let sq_norm = squared_norm(t).map_err(|e| refuse(e.to_string()))?;
            if !sq_norm.is_finite() {
                return Err(refuse("holds NaN or infinite values".into()));
            }
            if let Some(max) = self.shared.max_delta_norm {
                if sq_norm.sqrt() > max {
                    return Err(refuse(format!(
                        "L2 norm {} above the bound {max}",
                        sq_norm.sqrt()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The squared L2 norm of `t`, summed in f64.
fn squared_norm(t: &Tensor) -> candle_core::Result<f64> {
    t.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()
}

#[tonic::async_trait]
impl Federation for Service {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> std::result::Result<Response<RegisterReply>, Status> {
        let id = self
            .shared
            .authenticate(request.metadata(), Call::Register)?;
        let profile: DeviceProfile =
            serde_json::from_str(&request.get_ref().device_profile_json)
                .map_err(|e| Status::invalid_argument(format!("device profile: {e}")))?;
        profile
            .validate()
            .map_err(|e| Status::invalid_argument(format!("device profile: {e}")))?;
        tracing::info!(participant = %id, device = %profile.name, "participant registered");
        {
            let mut state = self.shared.lock();
            state.profiles.insert(id, profile);
            state.revoked.remove(&id);
        }
        self.shared.changed.notify_all();
        Ok(Response::new(RegisterReply {}))
    }

    async fn next_task(
        &self,
        request: Request<NextTaskRequest>,
    ) -> std::result::Result<Response<Task>, Status> {
        let id = self.shared.authenticate(request.metadata(), Call::Other)?;
        let deadline = tokio::time::Instant::now() + self.shared.poll_interval;
        loop {
            let notified = self.shared.posted.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.shared.lock();
                if !state.profiles.contains_key(&id) {
                    // Also what a participant hears from a restarted coordinator.
                    return Err(Status::not_found(format!(
                        "participant {id} has not registered"
                    )));
                }
                if let Some(p) = state
                    .pending
                    .get(&id)
                    .filter(|_| !state.answers.contains_key(&id))
                {
                    return Ok(Response::new(Task {
                        kind: p.kind as i32,
                        task_id: p.task_id,
                        instruction_json: p.instruction_json.clone(),
                        global: p.global.as_ref().clone(),
                        current: p.current_digests.as_ref().clone(),
                    }));
                }
                if state.done {
                    state.dismissed.insert(id);
                    drop(state);
                    self.shared.changed.notify_all();
                    return Ok(Response::new(Task {
                        kind: TaskKind::Done as i32,
                        ..Task::default()
                    }));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Response::new(Task {
                    kind: TaskKind::Wait as i32,
                    ..Task::default()
                }));
            }
        }
    }

    type PullTensorsStream = ChunkStream;

    async fn pull_tensors(
        &self,
        request: Request<PullRequest>,
    ) -> std::result::Result<Response<ChunkStream>, Status> {
        let id = self.shared.authenticate(request.metadata(), Call::Other)?;
        let req = request.into_inner();
        let which = match Which::try_from(req.which) {
            Ok(w @ (Which::Model | Which::Current)) => w,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "unknown payload {}",
                    req.which
                )))
            }
        };
        if req.names.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Status::invalid_argument(
                "the tensors asked for must be ascending by name, each once",
            ));
        }
        let not_open = || {
            Status::failed_precondition(format!(
                "participant {id}: task {} is not open",
                req.task_id
            ))
        };
        let key = (which, req.names);
        let (round, kind, cached, model) = {
            let state = self.shared.lock();
            let pending = state
                .pending
                .get(&id)
                .filter(|p| p.task_id == req.task_id)
                .ok_or_else(not_open)?;
            let model = match which {
                Which::Current => Arc::clone(&pending.current),
                _ => Arc::clone(&pending.model),
            };
            (
                pending.round,
                pending.kind,
                pending.served.get(&key).cloned(),
                model,
            )
        };
        let payload = match cached {
            Some(p) => p,
            None => {
                // Encoding is CPU work: off the runtime's threads.
                let shared = Arc::clone(&self.shared);
                let names = key.1.clone();
                let built = tokio::task::spawn_blocking(move || shared.payload(&model, &names))
                    .await
                    .map_err(|e| Status::internal(format!("building the payload: {e}")))?
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let mut state = self.shared.lock();
                let pending = state
                    .pending
                    .get_mut(&id)
                    .filter(|p| p.task_id == req.task_id)
                    .ok_or_else(not_open)?;
                Arc::clone(pending.served.entry(key).or_insert(built))
            }
        };
        let first_chunk = usize::try_from(req.first_chunk).unwrap_or(usize::MAX);
        if first_chunk >= chunk_count(&payload) {
            return Err(Status::out_of_range(format!(
                "chunk {first_chunk} of a payload of {} chunks",
                chunk_count(&payload)
            )));
        }
        self.shared.pulls.push(Pull {
            participant: id,
            round,
            kind,
            which,
            tensors: payload.tensors(),
            bytes: payload.len(),
            first_chunk,
        });
        let stream = tokio_stream::iter(to_chunks_from(payload, first_chunk).map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn push_reply(
        &self,
        request: Request<Streaming<ReplyPart>>,
    ) -> std::result::Result<Response<PushAck>, Status> {
        let id = self.shared.authenticate(request.metadata(), Call::Other)?;
        let (task_id, answer) = self.read_upload(id, request.into_inner()).await?;
        {
            let mut state = self.shared.lock();
            // Revoked during the upload: its failure stands.
            if state.revoked.contains(&id) {
                return Err(Status::unauthenticated(format!(
                    "participant {id}'s token was revoked"
                )));
            }
            if state.pending.get(&id).is_none_or(|p| p.task_id != task_id) {
                return Err(Status::failed_precondition(format!(
                    "participant {id}: task {task_id} closed during the upload"
                )));
            }
            state.answers.insert(id, answer);
        }
        tracing::debug!(participant = %id, task_id, "answer received");
        self.shared.changed.notify_all();
        Ok(Response::new(PushAck {}))
    }

    async fn upload_offset(
        &self,
        request: Request<UploadOffsetRequest>,
    ) -> std::result::Result<Response<UploadOffsetReply>, Status> {
        let id = self.shared.authenticate(request.metadata(), Call::Other)?;
        let req = request.into_inner();
        let chunks = self
            .shared
            .lock()
            .partial
            .get(&id)
            .filter(|p| p.task_id == req.task_id && p.sha256 == req.sha256)
            .map_or(0, |p| p.receiver.received() as u64);
        Ok(Response::new(UploadOffsetReply { chunks }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> std::result::Result<Response<StatusReply>, Status> {
        self.shared.authenticate(request.metadata(), Call::Status)?;
        Ok(Response::new(self.shared.status()))
    }
}

/// The server, TLS when `tls` is given; plain on a non-loopback address is warned about.
fn server_builder(
    tls: Option<&ServerTls>,
    local_addr: SocketAddr,
) -> Result<tonic::transport::Server> {
    let server = tonic::transport::Server::builder();
    match tls {
        Some(tls) => server
            .tls_config(tls.to_tonic())
            .map_err(|e| Error::Config(format!("TLS: {}", crate::error::chain(&e)))),
        None => {
            if !local_addr.ip().is_loopback() {
                tracing::warn!(
                    %local_addr,
                    "serving without TLS on a non-loopback address: tokens and tensors travel in clear"
                );
            }
            Ok(server)
        }
    }
}
