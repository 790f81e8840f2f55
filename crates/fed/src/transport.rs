//! Delivering instructions and collecting replies.
//!
//! [`Transport::send_and_receive`] takes one round's instructions and returns every
//! reply and every failure, plus each working participant's virtual time by phase
//! (its reply's [`crate::WorkCost`] on its [`DeviceProfile`]).
//!
//! [`LocalTransport`] runs in-process [`Participant`]s on its `workers` threads
//! (each worker takes the next participant when free, the longest first as predicted
//! from the participant's last measured time in that phase; results do not depend on
//! it), and simulates the network's failures deterministically:
//! - dropout: participant p drops out of round r iff `u < dropout`, with `u` the first
//!   uniform draw of the generator seeded by `(seed, r, p)`, so who drops out depends
//!   neither on order nor on who else was sampled; a dropout does no work;
//! - deadline: a reply whose virtual time exceeds the deadline becomes a
//!   [`FailureKind::Deadline`] failure (its time is still recorded: it was spent);
//! - a participant whose `train` returns `Err` becomes a [`FailureKind::Error`] failure.

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::device::DeviceProfile;
use crate::error::{Error, Result};
use crate::history::{MeasuredRss, ParticipantTime};
use crate::ids::ParticipantId;
use crate::seed::{dropout_stream, round_rng};
use crate::wire::{Failure, FailureKind, Global, ProfileIns, ProfileReply, TrainIns, TrainReply};

/// One round's traffic.
#[derive(Clone, Debug, Default)]
pub struct Exchange {
    /// On-time replies, ascending by participant.
    pub replies: Vec<TrainReply>,
    /// Participants that sent nothing usable, ascending.
    pub failures: Vec<Failure>,
    /// Virtual time of each participant that did work, ascending.
    pub times: Vec<ParticipantTime>,
}

/// One profiling phase's traffic.
#[derive(Clone, Debug, Default)]
pub struct ProfileExchange {
    /// Reports, ascending by participant.
    pub replies: Vec<ProfileReply>,
    /// Participants that could not profile, ascending.
    pub failures: Vec<Failure>,
    /// Virtual seconds of each participant's profiling work.
    pub seconds: BTreeMap<ParticipantId, f64>,
    /// Measured wall seconds of each profiling call.
    pub measured: BTreeMap<ParticipantId, f64>,
}

pub trait Transport {
    /// Every participant reachable through this transport, ascending.
    fn pool(&self) -> Vec<ParticipantId>;

    /// Ask participants to profile a model on their data: `current` (this round's
    /// global) or, for a stale request, `previous` (the global before the last
    /// aggregation).
    fn profile(
        &mut self,
        msgs: Vec<(ParticipantId, ProfileIns)>,
        current: &Global,
        previous: &Global,
    ) -> Result<ProfileExchange>;

    /// Deliver `msgs` (at most one per participant) with the current global model and
    /// collect the answers. `deadline_s` is in virtual seconds from the round start.
    fn send_and_receive(
        &mut self,
        msgs: Vec<(ParticipantId, TrainIns)>,
        global: &Global,
        deadline_s: Option<f64>,
    ) -> Result<Exchange>;
}

/// A participant's local training, as seen by an in-process transport.
pub trait Participant {
    fn train(&mut self, ins: &TrainIns, global: &Global) -> Result<TrainReply>;

    /// Profile `model` on local data (strategies with a profiling phase); `current` is
    /// this round's global (the same as `model` unless the request is stale), for
    /// measuring profiling error. The default refuses.
    fn profile(
        &mut self,
        ins: &ProfileIns,
        _model: &Global,
        _current: &Global,
    ) -> Result<ProfileReply> {
        Err(Error::State(format!(
            "round {}: this participant cannot profile",
            ins.round
        )))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalTransportConfig {
    /// Probability in [0, 1) that a sampled participant drops out of a round.
    pub dropout: f64,
    pub seed: u64,
    /// Participants trained at once on threads (1 = one after another). Results are
    /// the same for any value; memory grows with it.
    #[serde(default = "one_worker")]
    pub workers: usize,
}

fn one_worker() -> usize {
    1
}

struct Member {
    participant: Box<dyn Participant + Send>,
    profile: DeviceProfile,
}

pub struct LocalTransport {
    cfg: LocalTransportConfig,
    members: BTreeMap<ParticipantId, Member>,
    /// Each participant's last measured seconds of training, and of profiling: the
    /// prediction that orders the next phase longest first.
    train_measured: BTreeMap<ParticipantId, f64>,
    profile_measured: BTreeMap<ParticipantId, f64>,
}

impl LocalTransport {
    pub fn new(cfg: LocalTransportConfig) -> Result<Self> {
        if !(0.0..1.0).contains(&cfg.dropout) {
            return Err(Error::config(
                "transport.dropout",
                format!("must be in [0, 1), got {}", cfg.dropout),
            ));
        }
        Ok(LocalTransport {
            cfg,
            members: BTreeMap::new(),
            train_measured: BTreeMap::new(),
            profile_measured: BTreeMap::new(),
        })
    }

    /// Register a participant running on `profile`.
    pub fn add(
        &mut self,
        id: ParticipantId,
        participant: Box<dyn Participant + Send>,
        profile: DeviceProfile,
    ) -> Result<()> {
        profile.validate()?;
        if self.members.contains_key(&id) {
            return Err(Error::config(
                "transport.participants",
                format!("participant {id} added twice"),
            ));
        }
        self.members.insert(
            id,
            Member {
                participant,
                profile,
            },
        );
        Ok(())
    }
}

/// Sort `msgs` by recipient; a recipient named twice, or one `known` does not accept,
/// is an error. Every transport checks a round's instructions with this.
pub fn check_recipients<T>(
    msgs: &mut [(ParticipantId, T)],
    known: impl Fn(ParticipantId) -> bool,
) -> Result<()> {
    msgs.sort_by_key(|(id, _)| *id);
    for pair in msgs.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(Error::DuplicateParticipant(pair[0].0));
        }
    }
    if let Some((id, _)) = msgs.iter().find(|(id, _)| !known(*id)) {
        return Err(Error::UnknownParticipant(*id));
    }
    Ok(())
}

/// Record participant `id`'s answer to a [`ProfileIns`] into `out`: a report charged
/// on `profile`, or a [`FailureKind::Error`] failure. Shared by every transport so
/// profiling is accounted the same way in simulation and deployment.
pub fn settle_profile(
    out: &mut ProfileExchange,
    id: ParticipantId,
    result: Result<ProfileReply>,
    profile: &DeviceProfile,
    measured_s: f64,
) {
    let result = result.and_then(|reply| {
        if reply.participant != id {
            return Err(Error::State(format!(
                "profile claims to come from participant {}",
                reply.participant
            )));
        }
        let seconds = reply.cost.seconds(profile)?.total;
        Ok((reply, seconds))
    });
    match result {
        Ok((reply, seconds)) => {
            out.seconds.insert(id, seconds);
            out.measured.insert(id, measured_s);
            out.replies.push(reply);
        }
        Err(e) => {
            tracing::warn!(participant = %id, error = %e, "profiling failed");
            out.failures
                .push(Failure::new(id, FailureKind::Error, e.to_string()));
        }
    }
}

/// Record participant `id`'s training outcome into `out`: its virtual time on
/// `profile` (from the reply's [`crate::WorkCost`]) and either the reply or a failure
/// (its own error, a reply claiming another sender, or virtual time over
/// `deadline_s`). Shared by every transport so a deployment charges time and judges
/// deadlines exactly as the simulation does. Call in ascending id order.
pub fn settle_train(
    out: &mut Exchange,
    id: ParticipantId,
    trained: Result<TrainReply>,
    profile: &DeviceProfile,
    measured_s: f64,
    rss: MeasuredRss,
    deadline_s: Option<f64>,
) {
    let reply = match trained {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(participant = %id, error = %e, "participant failed");
            out.failures
                .push(Failure::new(id, FailureKind::Error, e.to_string()));
            return;
        }
    };
    if reply.participant != id {
        out.failures.push(Failure::new(
            id,
            FailureKind::Error,
            format!(
                "reply claims to come from participant {}",
                reply.participant
            ),
        ));
        return;
    }
    let phases = match reply.cost.seconds(profile) {
        Ok(phases) => phases,
        Err(e) => {
            out.failures
                .push(Failure::new(id, FailureKind::Error, e.to_string()));
            return;
        }
    };
    out.times.push(ParticipantTime {
        participant: id,
        device: profile.name.clone(),
        phases,
        up_bytes: reply.cost.up_bytes,
        down_bytes: reply.cost.down_bytes,
        profile_s: 0.0,
        profile_hidden_s: 0.0,
        measured_s,
        profile_measured_s: 0.0,
        peak_rss_bytes: rss.peak_bytes,
        rss_start_bytes: rss.start_bytes,
        heap_peak_bytes: rss.heap_peak_bytes,
    });
    match deadline_s {
        Some(deadline) if phases.total > deadline => out.failures.push(Failure::new(
            id,
            FailureKind::Deadline,
            format!(
                "virtual time {} s exceeds the deadline {deadline} s",
                phases.total
            ),
        )),
        _ => out.replies.push(reply),
    }
}

impl Transport for LocalTransport {
    fn pool(&self) -> Vec<ParticipantId> {
        self.members.keys().copied().collect()
    }

    /// Participants profile on the transport's workers, as they train (longest
    /// first, each worker taking the next when free). Dropouts are simulated in the
    /// training phase only.
    fn profile(
        &mut self,
        mut msgs: Vec<(ParticipantId, ProfileIns)>,
        current: &Global,
        previous: &Global,
    ) -> Result<ProfileExchange> {
        check_recipients(&mut msgs, |id| self.members.contains_key(&id))?;
        let jobs: BTreeMap<ParticipantId, ProfileIns> = msgs.into_iter().collect();
        let members = longest_first(with_jobs(&mut self.members, &jobs), &self.profile_measured);
        let work = |id: ParticipantId, member: &mut Member| {
            let ins = &jobs[&id];
            let model = if ins.stale { previous } else { current };
            let start = std::time::Instant::now();
            let result = member.participant.profile(ins, model, current);
            (result, start.elapsed().as_secs_f64())
        };
        let failed = |id: ParticipantId| {
            (
                Err(Error::Participant {
                    participant: id,
                    msg: "it panicked".into(),
                }),
                0.0,
            )
        };
        let results = on_workers(members, self.cfg.workers, &work, &failed);
        let mut out = ProfileExchange::default();
        for (id, (result, measured_s)) in results {
            if measured_s > 0.0 {
                self.profile_measured.insert(id, measured_s);
            }
            settle_profile(&mut out, id, result, &self.members[&id].profile, measured_s);
        }
        Ok(out)
    }

    fn send_and_receive(
        &mut self,
        mut msgs: Vec<(ParticipantId, TrainIns)>,
        global: &Global,
        deadline_s: Option<f64>,
    ) -> Result<Exchange> {
        check_recipients(&mut msgs, |id| self.members.contains_key(&id))?;
        let mut out = Exchange::default();
        // Dropouts first: they do no work.
        let mut jobs: BTreeMap<ParticipantId, TrainIns> = BTreeMap::new();
        for (id, ins) in msgs {
            let u: f64 = round_rng(self.cfg.seed, ins.round, dropout_stream(id)).gen();
            if u < self.cfg.dropout {
                out.failures.push(Failure::new(
                    id,
                    FailureKind::Dropout,
                    "dropped out (simulated)",
                ));
            } else {
                jobs.insert(id, ins);
            }
        }
        let members = longest_first(with_jobs(&mut self.members, &jobs), &self.train_measured);
        // Peak memory is per process: measured only when participants run one at a time.
        let measure_peak = self.cfg.workers <= 1;
        let train = |id: ParticipantId, member: &mut Member| {
            let mut rss = MeasuredRss::default();
            let mut heap_start = None;
            if measure_peak {
                crate::measure::reset_peak_rss();
                rss.start_bytes = crate::measure::rss_bytes();
                heap_start = crate::measure::heap_live_bytes();
                crate::measure::reset_heap_peak();
            }
            let start = std::time::Instant::now();
            let trained = member.participant.train(&jobs[&id], global);
            let measured_s = start.elapsed().as_secs_f64();
            if measure_peak {
                rss.peak_bytes = crate::measure::peak_rss_bytes();
                rss.heap_peak_bytes = crate::measure::heap_peak_bytes()
                    .zip(heap_start)
                    .map(|(peak, start)| peak.saturating_sub(start));
            }
            tracing::debug!(
                participant = %id,
                measured_s,
                rss_start = ?rss.start_bytes,
                peak_rss = ?rss.peak_bytes,
                heap_peak = ?rss.heap_peak_bytes,
                rss_after = ?crate::measure::rss_bytes(),
                "participant trained"
            );
            (trained, measured_s, rss)
        };
        // A panicking participant fails, not the round.
        let failed = |id: ParticipantId| {
            let e = Error::Participant {
                participant: id,
                msg: "it panicked".into(),
            };
            (Err(e), 0.0, MeasuredRss::default())
        };
        let results = on_workers(members, self.cfg.workers, &train, &failed);
        for (id, (trained, measured_s, rss)) in results {
            if measured_s > 0.0 {
                self.train_measured.insert(id, measured_s);
            }
            let profile = &self.members[&id].profile;
            settle_train(&mut out, id, trained, profile, measured_s, rss, deadline_s);
        }
        out.failures.sort_by_key(|f| f.participant);
        Ok(out)
    }
}

/// The members that have a job in `jobs`, ascending by id.
fn with_jobs<'a, J>(
    members: &'a mut BTreeMap<ParticipantId, Member>,
    jobs: &BTreeMap<ParticipantId, J>,
) -> Vec<(ParticipantId, &'a mut Member)> {
    members
        .iter_mut()
        .filter(|(id, _)| jobs.contains_key(id))
        .map(|(id, m)| (*id, m))
        .collect()
}

/// Run `work` for every member on `workers` threads. Members start in the given
/// order, each on the next free worker, so a phase lasts about as long as its work
/// divided among the workers (a static split by position made it last as long as the
/// slower share). Which worker runs a member, and with whom, depends on timing; the
/// results do not. A member whose `work` panics yields `failed(id)`, and only that
/// member. Results come back ascending by id.
fn on_workers<M: Send, R: Send>(
    members: Vec<(ParticipantId, &mut M)>,
    workers: usize,
    work: &(dyn Fn(ParticipantId, &mut M) -> R + Sync),
    failed: &(dyn Fn(ParticipantId) -> R + Sync),
) -> Vec<(ParticipantId, R)> {
    let run = |id: ParticipantId, member: &mut M| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(id, member)))
            .unwrap_or_else(|_| failed(id))
    };
    let ids: Vec<ParticipantId> = members.iter().map(|(id, _)| *id).collect();
    let workers = workers.clamp(1, ids.len().max(1));
    let mut results: Vec<(ParticipantId, R)> = if workers == 1 {
        members
            .into_iter()
            .map(|(id, m)| (id, run(id, m)))
            .collect()
    } else {
        let queue = std::sync::Mutex::new(members.into_iter());
        let next = || {
            queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .next()
        };
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        while let Some((id, m)) = next() {
                            done.push((id, run(id, m)));
                        }
                        done
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        })
    };
    // A member lost with a worker that died outside `work` still gets its answer.
    let answered: std::collections::BTreeSet<ParticipantId> = results.iter().map(|r| r.0).collect();
    for id in ids {
        if !answered.contains(&id) {
            results.push((id, failed(id)));
        }
    }
    results.sort_by_key(|r| r.0);
    results
}

/// `members` reordered to start the longest first: by `predicted` seconds,
/// descending, members without a prediction first, ties by id. With workers taking
/// the next member when free, the longest-first order keeps a long member from
/// starting last while the other workers idle.
fn longest_first<'a, M>(
    mut members: Vec<(ParticipantId, &'a mut M)>,
    predicted: &BTreeMap<ParticipantId, f64>,
) -> Vec<(ParticipantId, &'a mut M)> {
    let key = |id: &ParticipantId| predicted.get(id).copied().unwrap_or(f64::INFINITY);
    members.sort_by(|(a, _), (b, _)| key(b).total_cmp(&key(a)).then(a.cmp(b)));
    members
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::WorkCost;
    use crate::ids::Round;

    /// Replies with `flops` of work and no deltas; fails when told to.
    struct Fixed {
        id: ParticipantId,
        flops: f64,
        fail: bool,
        calls: usize,
    }

    impl Participant for Fixed {
        fn train(&mut self, _ins: &TrainIns, _global: &Global) -> Result<TrainReply> {
            self.calls += 1;
            if self.fail {
                return Err(Error::Participant {
                    participant: self.id,
                    msg: "out of memory".into(),
                });
            }
            Ok(TrainReply {
                participant: self.id,
                deltas: BTreeMap::new(),
                weights: BTreeMap::new(),
                metrics: BTreeMap::new(),
                cost: WorkCost {
                    flops: self.flops,
                    up_bytes: 10,
                    ..WorkCost::default()
                },
                report: serde_json::Value::Null,
            })
        }
    }

    fn profile() -> DeviceProfile {
        DeviceProfile {
            name: "unit".into(),
            memory_bytes: 1,
            train_flops: 1.0,
            quant_forward_flops: 1.0,
            pcie_bytes_per_s: 1.0,
            uplink_bytes_per_s: 10.0,
            downlink_bytes_per_s: 1.0,
        }
    }

    fn transport(dropout: f64, specs: &[(u32, f64, bool)]) -> LocalTransport {
        let mut t = LocalTransport::new(LocalTransportConfig {
            dropout,
            seed: 3,
            workers: 1,
        })
        .unwrap();
        for &(id, flops, fail) in specs {
            let p = Fixed {
                id: ParticipantId(id),
                flops,
                fail,
                calls: 0,
            };
            t.add(ParticipantId(id), Box::new(p), profile()).unwrap();
        }
        t
    }

    fn ins(round: u32) -> TrainIns {
        TrainIns {
            round: Round(round),
            trainable: vec![],
            params: BTreeMap::new(),
            changed: None,
        }
    }

    #[test]
    fn replies_sorted_stragglers_and_errors_become_failures() {
        let mut t = transport(0.0, &[(1, 2.0, false), (2, 9.0, false), (3, 1.0, true)]);
        let msgs = vec![
            (ParticipantId(3), ins(1)),
            (ParticipantId(2), ins(1)),
            (ParticipantId(1), ins(1)),
        ];
        let ex = t.send_and_receive(msgs, &Global::new(), Some(5.0)).unwrap();
        assert_eq!(ex.replies.len(), 1);
        assert_eq!(ex.replies[0].participant, ParticipantId(1));
        let kinds: Vec<(u32, FailureKind)> = ex
            .failures
            .iter()
            .map(|f| (f.participant.0, f.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![(2, FailureKind::Deadline), (3, FailureKind::Error)]
        );
        assert!(ex.failures[0]
            .reason
            .contains("virtual time 10 s exceeds the deadline 5 s"));
        assert!(ex.failures[1].reason.contains("out of memory"));
        // 2 FLOP at 1 FLOP/s + 10 B at 10 B/s = 3 s; the straggler's 10 s is recorded too.
        let totals: Vec<(u32, f64)> = ex
            .times
            .iter()
            .map(|t| (t.participant.0, t.phases.total))
            .collect();
        assert_eq!(totals, vec![(1, 3.0), (2, 10.0)]);
    }

    #[test]
    fn dropout_is_seeded_per_round_and_participant() {
        let specs: Vec<(u32, f64, bool)> = (0..100).map(|i| (i, 1.0, false)).collect();
        let run = |round: u32, ids: &[u32]| -> Vec<u32> {
            let mut t = transport(0.3, &specs);
            let msgs = ids
                .iter()
                .map(|&i| (ParticipantId(i), ins(round)))
                .collect();
            let ex = t.send_and_receive(msgs, &Global::new(), None).unwrap();
            assert!(ex.failures.iter().all(|f| f.kind == FailureKind::Dropout));
            ex.failures.iter().map(|f| f.participant.0).collect()
        };
        let all: Vec<u32> = (0..100).collect();
        let dropped = run(1, &all);
        assert_eq!(dropped, run(1, &all));
        assert!((15..=45).contains(&dropped.len()), "{}", dropped.len());
        // A subset sees the same fate for its members.
        let evens: Vec<u32> = (0..100).step_by(2).collect();
        let dropped_evens = run(1, &evens);
        let expect: Vec<u32> = dropped.iter().copied().filter(|i| i % 2 == 0).collect();
        assert_eq!(dropped_evens, expect);
        assert_ne!(dropped, run(2, &all));
    }

    /// Panics when trained.
    struct Panics;

    impl Participant for Panics {
        fn train(&mut self, _ins: &TrainIns, _global: &Global) -> Result<TrainReply> {
            panic!("a participant's bug");
        }
    }

    #[test]
    fn a_panicking_participant_fails_alone_with_any_number_of_workers() {
        for workers in [1, 2, 3] {
            let mut t = LocalTransport::new(LocalTransportConfig {
                dropout: 0.0,
                seed: 3,
                workers,
            })
            .unwrap();
            for id in [1, 2, 4, 5] {
                let p = Fixed {
                    id: ParticipantId(id),
                    flops: f64::from(id),
                    fail: false,
                    calls: 0,
                };
                t.add(ParticipantId(id), Box::new(p), profile()).unwrap();
            }
            t.add(ParticipantId(3), Box::new(Panics), profile())
                .unwrap();
            for round in 1..=2 {
                let msgs = (1..=5).map(|i| (ParticipantId(i), ins(round))).collect();
                let ex = t.send_and_receive(msgs, &Global::new(), None).unwrap();
                let replied: Vec<u32> = ex.replies.iter().map(|r| r.participant.0).collect();
                assert_eq!(replied, vec![1, 2, 4, 5], "{workers} workers");
                assert_eq!(ex.failures.len(), 1);
                assert_eq!(ex.failures[0].participant, ParticipantId(3));
                assert_eq!(ex.failures[0].kind, FailureKind::Error);
                assert!(ex.failures[0].reason.contains("panicked"));
                let timed: Vec<u32> = ex.times.iter().map(|t| t.participant.0).collect();
                assert_eq!(timed, vec![1, 2, 4, 5]);
            }
        }
    }

    #[test]
    fn the_longest_predicted_member_starts_first() {
        let mut slots = [0u8; 4];
        let members: Vec<(ParticipantId, &mut u8)> = slots
            .iter_mut()
            .enumerate()
            .map(|(i, m)| (ParticipantId(i as u32), m))
            .collect();
        let predicted = BTreeMap::from([
            (ParticipantId(0), 2.0),
            (ParticipantId(1), 7.5),
            (ParticipantId(3), 2.0),
        ]);
        let order: Vec<u32> = longest_first(members, &predicted)
            .into_iter()
            .map(|(id, _)| id.0)
            .collect();
        // Participant 2 has never run: it might be the longest.
        assert_eq!(order, vec![2, 1, 0, 3]);
    }

    #[test]
    fn unknown_and_duplicate_participants_and_bad_config_are_errors() {
        let mut t = transport(0.0, &[(1, 1.0, false)]);
        let err = t
            .send_and_receive(vec![(ParticipantId(9), ins(1))], &Global::new(), None)
            .unwrap_err();
        assert!(matches!(err, Error::UnknownParticipant(ParticipantId(9))));
        let err = t
            .send_and_receive(
                vec![(ParticipantId(1), ins(1)), (ParticipantId(1), ins(1))],
                &Global::new(),
                None,
            )
            .unwrap_err();
        assert!(matches!(err, Error::DuplicateParticipant(ParticipantId(1))));
        assert!(LocalTransport::new(LocalTransportConfig {
            dropout: 1.0,
            seed: 0,
            workers: 1,
        })
        .is_err());
        assert_eq!(t.pool(), vec![ParticipantId(1)]);
    }
}
