//! End-to-end runs of the round loop with toy participants: hand-computed round
//! times, deadline and dropout handling, time-to-accuracy, determinism and resume.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use fluxmoe_fed::{
    load_checkpoint, save_checkpoint, Clock, Coordinator, DeviceProfile, Download, Evaluator,
    FailureKind, FedAvgFull, FedAvgFullConfig, Global, LocalTransport, LocalTransportConfig,
    Participant, ParticipantId, ProfileIns, ProfileReply, Round, RoundRecord, RunConfig,
    ServerOptimizerConfig, Strategy, TargetConfig, TrainIns, TrainOutcome, TrainReply,
    VirtualClock, WorkCost,
};
use fluxmoe_fed::{AggregateConfig, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Returns deltas drawn from a generator seeded by (its id, the round), so its
/// behaviour is a pure function of the instruction: no state to checkpoint.
struct Toy {
    id: ParticipantId,
    flops: f64,
}

impl Participant for Toy {
    /// 5 quantized FLOP; reports the sum of the `w` it was given.
    fn profile(&mut self, ins: &ProfileIns, model: &Global, _: &Global) -> Result<ProfileReply> {
        let sum = model["w"].sum_all()?.to_scalar::<f32>()?;
        Ok(ProfileReply {
            participant: self.id,
            report: serde_json::json!({ "round": ins.round.0, "w_sum": sum }),
            cost: WorkCost {
                quant_flops: 5.0,
                ..WorkCost::default()
            },
        })
    }

    fn train(&mut self, ins: &TrainIns, global: &Global) -> Result<TrainReply> {
        let mut rng = StdRng::seed_from_u64(u64::from(self.id.0) * 1000 + u64::from(ins.round.0));
        let mut deltas = BTreeMap::new();
        for name in &ins.trainable {
            let w = &global[name];
            let values: Vec<f32> = (0..w.elem_count())
                .map(|_| rng.gen_range(-0.5f32..0.5))
                .collect();
            deltas.insert(
                name.clone(),
                Tensor::from_vec(values, w.dims(), w.device())?,
            );
        }
        Ok(TrainReply {
            participant: self.id,
            deltas,
            weights: BTreeMap::from([("*".to_string(), f64::from(self.id.0 + 1))]),
            metrics: BTreeMap::from([(
                "loss".to_string(),
                f64::from(self.id.0) + 1.0 / f64::from(ins.round.0),
            )]),
            cost: WorkCost {
                flops: self.flops,
                up_bytes: 100,
                down_bytes: 200,
                ..WorkCost::default()
            },
            report: serde_json::Value::Null,
        })
    }
}

/// 1 FLOP/s and 100 B/s links: virtual seconds are easy to compute by hand.
fn unit_profile(name: &str) -> DeviceProfile {
    DeviceProfile {
        name: name.into(),
        memory_bytes: 1 << 30,
        train_flops: 1.0,
        quant_forward_flops: 1.0,
        pcie_bytes_per_s: 1.0,
        uplink_bytes_per_s: 100.0,
        downlink_bytes_per_s: 100.0,
    }
}

fn global() -> Global {
    let dev = Device::Cpu;
    Global::from([
        (
            "w".to_string(),
            Tensor::new(&[1.0f32, 2.0, 3.0, 4.0], &dev).unwrap(),
        ),
        (
            "frozen".to_string(),
            Tensor::new(&[[0.5f32, 0.25]], &dev).unwrap(),
        ),
    ])
}

fn strategy(per_round: usize, optimizer: ServerOptimizerConfig) -> FedAvgFull {
    FedAvgFull::new(FedAvgFullConfig {
        per_round,
        trainable: Some(vec!["w".into()]),
        min_replies: 1,
        aggregate: AggregateConfig {
            max_delta_norm: Some(10.0),
        },
        server_optimizer: optimizer,
        params: BTreeMap::new(),
    })
    .unwrap()
}

fn transport(dropout: f64, flops: &[f64]) -> LocalTransport {
    let mut t = LocalTransport::new(LocalTransportConfig {
        dropout,
        seed: 11,
        workers: 1,
    })
    .unwrap();
    for (i, &f) in flops.iter().enumerate() {
        let id = ParticipantId(i as u32);
        t.add(
            id,
            Box::new(Toy { id, flops: f }),
            unit_profile(&format!("dev{i}")),
        )
        .unwrap();
    }
    t
}

fn run_cfg(n_rounds: u32, seed: u64, deadline_s: Option<f64>, server_flops: f64) -> RunConfig {
    let mut server = unit_profile("server");
    server.train_flops = server_flops;
    RunConfig {
        n_rounds,
        seed,
        deadline_s,
        eval_every: 1,
        target: None,
        server,
        download: Download::Everything,
    }
}

fn bits(g: &Global) -> BTreeMap<String, Vec<u32>> {
    g.iter()
        .map(|(k, t)| {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (k.clone(), v.into_iter().map(f32::to_bits).collect())
        })
        .collect()
}

fn adam() -> ServerOptimizerConfig {
    ServerOptimizerConfig::Adam {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        tau: 1e-3,
    }
}

/// Scores the model by the mean of `w`.
struct MeanOfW;

impl Evaluator for MeanOfW {
    fn evaluate(&mut self, _round: Round, global: &Global) -> Result<f64> {
        Ok(f64::from(global["w"].mean_all()?.to_scalar::<f32>()?))
    }
}

#[test]
fn round_time_is_slowest_participant_plus_aggregation() {
    // Two participants: 2 FLOP + 1 s up + 2 s down = 5 s, and 5 FLOP + 3 s = 8 s.
    let mut s = strategy(2, ServerOptimizerConfig::fedavg());
    let mut t = transport(0.0, &[2.0, 5.0]);
    let mut clock = VirtualClock::new();
    // FedAvg server work on `w` (4 elements) with 2 replies: validation 2·4 per reply,
    // averaging (2·2 + 1)·4, SGD step 2·4 → 16 + 20 + 8 = 44 FLOP; at 11 FLOP/s = 4 s.
    let g0 = global();
    let mut coord = Coordinator::new(run_cfg(1, 5, None, 11.0), g0.clone()).unwrap();
    let h = coord
        .run_rounds(&mut s, &mut t, &mut clock, None, 10, &mut |_| {})
        .unwrap();
    assert_eq!(h.records.len(), 1);
    let r = &h.records[0];
    assert_eq!(r.train_s, 8.0);
    assert_eq!(r.aggregate_s, 4.0);
    assert_eq!(r.round_s, 12.0);
    assert_eq!(clock.now(), 12.0);
    assert_eq!(r.virtual_time_end, 12.0);
    assert_eq!(r.bytes_up, 200);
    assert_eq!(r.bytes_down, 400);
    assert_eq!(r.times[0].phases.upload, 1.0);
    assert_eq!(r.times[1].device, "dev1");
    // loss metrics 0 + 1 and 1 + 1 → mean 1.5.
    assert_eq!(r.train_metrics["loss"], 1.5);
    assert!(r.global_updated);
    // `frozen` was not trainable: it is the very same tensor.
    assert_eq!(coord.global()["frozen"].id(), g0["frozen"].id());
    assert!(coord.finished());
}

#[test]
fn stragglers_past_the_deadline_are_dropped_and_the_wait_is_capped() {
    let mut s = strategy(3, ServerOptimizerConfig::fedavg());
    let mut t = transport(0.0, &[1.0, 2.0, 50.0]);
    let mut clock = VirtualClock::new();
    let mut coord = Coordinator::new(run_cfg(1, 5, Some(10.0), 1e9), global()).unwrap();
    let h = coord
        .run_rounds(&mut s, &mut t, &mut clock, None, 1, &mut |_| {})
        .unwrap();
    let r = &h.records[0];
    assert_eq!(
        r.participants,
        vec![ParticipantId(0), ParticipantId(1), ParticipantId(2)]
    );
    assert_eq!(r.accepted, vec![ParticipantId(0), ParticipantId(1)]);
    assert_eq!(r.dropped.len(), 1);
    assert_eq!(r.dropped[0].participant, ParticipantId(2));
    assert_eq!(r.dropped[0].kind, FailureKind::Deadline);
    // The straggler needed 53 s; the server waited 10.
    assert_eq!(r.train_s, 10.0);
    assert_eq!(r.times.len(), 3);
}

#[test]
fn round_with_every_participant_dropped_keeps_the_model() {
    // Dropout 0.99: with this seed nobody replies in round 1.
    let mut s = strategy(2, ServerOptimizerConfig::fedavg());
    let mut t = transport(0.99, &[1.0, 1.0]);
    let mut clock = VirtualClock::new();
    let g0 = global();
    let mut coord = Coordinator::new(run_cfg(1, 5, None, 1.0), g0.clone()).unwrap();
    let h = coord
        .run_rounds(&mut s, &mut t, &mut clock, None, 1, &mut |_| {})
        .unwrap();
    let r = &h.records[0];
    assert!(r.dropped.iter().all(|f| f.kind == FailureKind::Dropout));
    assert_eq!(r.dropped.len(), 2);
    assert!(!r.global_updated);
    assert_eq!(r.round_s, 0.0);
    assert_eq!(coord.global()["w"].id(), g0["w"].id());
}

#[test]
fn time_to_accuracy_is_the_first_round_reaching_the_target_and_can_stop_the_run() {
    // A participant whose delta is always +1 on every trainable element.
    struct Up(ParticipantId);
    impl Participant for Up {
        fn train(&mut self, ins: &TrainIns, global: &Global) -> Result<TrainReply> {
            let deltas = ins
                .trainable
                .iter()
                .map(|n| Ok((n.clone(), global[n].ones_like()?)))
                .collect::<Result<_>>()?;
            Ok(TrainReply {
                participant: self.0,
                deltas,
                weights: BTreeMap::from([("*".to_string(), 1.0)]),
                metrics: BTreeMap::new(),
                cost: WorkCost {
                    flops: 3.0,
                    ..WorkCost::default()
                },
                report: serde_json::Value::Null,
            })
        }
    }
    let mut t = LocalTransport::new(LocalTransportConfig {
        dropout: 0.0,
        seed: 0,
        workers: 1,
    })
    .unwrap();
    t.add(
        ParticipantId(0),
        Box::new(Up(ParticipantId(0))),
        unit_profile("a"),
    )
    .unwrap();
    let mut cfg = run_cfg(10, 1, None, 1e12);
    // mean(w) starts at 2.5 and grows by 1 a round: 5.5 at round 3.
    cfg.target = Some(TargetConfig {
        value: 5.0,
        higher_is_better: true,
        stop: true,
    });
    let mut s = strategy(1, ServerOptimizerConfig::fedavg());
    let mut clock = VirtualClock::new();
    let mut coord = Coordinator::new(cfg, global()).unwrap();
    let mut seen = Vec::new();
    let h = coord
        .run_rounds(
            &mut s,
            &mut t,
            &mut clock,
            Some(&mut MeanOfW),
            10,
            &mut |r: &mut RoundRecord| {
                r.wall_seconds = Some(0.5);
                seen.push(r.round);
            },
        )
        .unwrap();
    assert_eq!(seen, vec![Round(1), Round(2), Round(3)]);
    assert_eq!(h.records.len(), 3);
    assert_eq!(h.records[2].eval, Some(5.5));
    assert_eq!(h.records[0].wall_seconds, Some(0.5));
    // The coordinator times its own aggregation, and the evaluation where there was one.
    for r in &h.records {
        assert!(r.aggregate_wall_seconds.is_some_and(|s| s >= 0.0));
        assert_eq!(
            r.eval_wall_seconds.is_some(),
            r.eval.is_some(),
            "{:?}",
            r.round
        );
        let line = r.to_json_line().unwrap();
        assert_eq!(&serde_json::from_str::<RoundRecord>(&line).unwrap(), r);
        // Records written before these fields existed still load.
        let mut old: serde_json::Value = serde_json::from_str(&line).unwrap();
        let fields = old.as_object_mut().unwrap();
        fields.remove("aggregate_wall_seconds");
        fields.remove("eval_wall_seconds");
        let old: RoundRecord = serde_json::from_value(old).unwrap();
        assert_eq!(old.without_measurements(), r.without_measurements());
    }
    let hit = h.target_hit.unwrap();
    assert_eq!(hit.round, Round(3));
    assert_eq!(hit.metric, 5.5);
    assert_eq!(h.time_to_target(), Some(h.records[2].virtual_time_end));
    assert!(coord.finished());
    assert_eq!(coord.next_round(), Round(4));
}

fn run_straight(seed: u64, n_rounds: u32) -> (Global, Vec<RoundRecord>) {
    let mut s = strategy(3, adam());
    let mut t = transport(0.25, &[1.0, 2.0, 3.0, 4.0, 40.0]);
    let mut clock = VirtualClock::new();
    let mut coord = Coordinator::new(run_cfg(n_rounds, seed, Some(20.0), 100.0), global()).unwrap();
    let h = coord
        .run_rounds(
            &mut s,
            &mut t,
            &mut clock,
            Some(&mut MeanOfW),
            n_rounds,
            &mut |_| {},
        )
        .unwrap();
    let records = h
        .records
        .iter()
        .map(RoundRecord::without_measurements)
        .collect();
    (coord.into_global(), records)
}

#[test]
fn same_seed_gives_bit_identical_runs_and_another_seed_differs() {
    let (g1, r1) = run_straight(7, 4);
    let (g2, r2) = run_straight(7, 4);
    assert_eq!(bits(&g1), bits(&g2));
    assert_eq!(r1, r2);
    let (g3, r3) = run_straight(8, 4);
    assert_ne!(bits(&g1)["w"], bits(&g3)["w"]);
    assert_ne!(
        r1.iter()
            .map(|r| r.participants.clone())
            .collect::<Vec<_>>(),
        r3.iter()
            .map(|r| r.participants.clone())
            .collect::<Vec<_>>()
    );
    // The run did exercise failures and the optimizer.
    assert!(r1.iter().any(|r| !r.dropped.is_empty()));
    assert_eq!(bits(&g1)["frozen"], bits(&global())["frozen"]);
}

#[test]
fn resume_from_a_checkpoint_matches_the_uninterrupted_run_bit_for_bit() {
    let (straight, straight_records) = run_straight(7, 4);

    let dir = tempfile::tempdir().unwrap();
    let cfg = run_cfg(4, 7, Some(20.0), 100.0);
    {
        let mut s = strategy(3, adam());
        let mut t = transport(0.25, &[1.0, 2.0, 3.0, 4.0, 40.0]);
        let mut clock = VirtualClock::new();
        let mut coord = Coordinator::new(cfg.clone(), global()).unwrap();
        let h = coord
            .run_rounds(
                &mut s,
                &mut t,
                &mut clock,
                Some(&mut MeanOfW),
                2,
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(
            h.records
                .iter()
                .map(RoundRecord::without_measurements)
                .collect::<Vec<_>>(),
            straight_records[..2]
        );
        let state = coord.state(&s, &clock).unwrap();
        assert_eq!(state.next_round, Round(3));
        save_checkpoint(dir.path(), &state, coord.global(), coord.previous()).unwrap();
    }
    // Fresh objects, as in a new process.
    let (state, g) = load_checkpoint(dir.path(), &Device::Cpu).unwrap();
    let mut s = strategy(3, adam());
    let mut t = transport(0.25, &[1.0, 2.0, 3.0, 4.0, 40.0]);
    let mut clock = VirtualClock::new();
    let mut coord = Coordinator::resume(cfg.clone(), g, &state, &mut s, &mut clock).unwrap();
    assert_eq!(clock.now(), straight_records[1].virtual_time_end);
    let h = coord
        .run_rounds(
            &mut s,
            &mut t,
            &mut clock,
            Some(&mut MeanOfW),
            10,
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(
        h.records
            .iter()
            .map(RoundRecord::without_measurements)
            .collect::<Vec<_>>(),
        straight_records[2..]
    );
    assert_eq!(bits(coord.global()), bits(&straight));

    // Resuming with the wrong seed or strategy is refused.
    let mut wrong_seed = cfg.clone();
    wrong_seed.seed = 8;
    let err = Coordinator::resume(
        wrong_seed,
        global(),
        &state,
        &mut strategy(3, adam()),
        &mut VirtualClock::new(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("seed 7") && err.contains("seed 8"), "{err}");
    let mut renamed = state.clone();
    renamed.strategy = "flux".into();
    let err = Coordinator::resume(
        cfg,
        global(),
        &renamed,
        &mut strategy(3, adam()),
        &mut VirtualClock::new(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("strategy `flux`"), "{err}");
}

#[test]
fn records_are_single_json_lines_that_round_trip() {
    let (_, records) = run_straight(3, 2);
    for r in &records {
        let line = r.to_json_line().unwrap();
        assert!(!line.contains('\n'));
        let back: RoundRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(&back, r);
    }
}

#[test]
fn missing_checkpoint_and_bad_run_config_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_checkpoint(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("state.json"), "{err}");
    let mut cfg = run_cfg(0, 1, None, 1.0);
    assert!(Coordinator::new(cfg.clone(), global())
        .err()
        .unwrap()
        .to_string()
        .contains("n_rounds"));
    cfg.n_rounds = 2;
    cfg.deadline_s = Some(-1.0);
    assert!(Coordinator::new(cfg, global())
        .err()
        .unwrap()
        .to_string()
        .contains("deadline_s"));
}

/// FedAvg-full with a profiling phase asking every participant, fresh or stale.
struct Profiling {
    inner: FedAvgFull,
    stale: bool,
    reports: Vec<serde_json::Value>,
}

impl Strategy for Profiling {
    fn name(&self) -> &str {
        "profiling"
    }
    fn summary(&self) -> String {
        String::new()
    }
    fn configure_profile(
        &mut self,
        round: Round,
        _global: &Global,
        pool: &[ParticipantId],
        _rng: &mut StdRng,
    ) -> Result<Vec<(ParticipantId, ProfileIns)>> {
        let ins = ProfileIns {
            round,
            stale: self.stale,
            params: BTreeMap::new(),
        };
        Ok(pool.iter().map(|&id| (id, ins.clone())).collect())
    }
    fn receive_profiles(
        &mut self,
        _round: Round,
        replies: Vec<ProfileReply>,
        failures: Vec<fluxmoe_fed::Failure>,
    ) -> Result<()> {
        assert!(failures.is_empty());
        self.reports.extend(replies.into_iter().map(|r| r.report));
        Ok(())
    }
    fn configure_train(
        &mut self,
        round: Round,
        global: &Global,
        pool: &[ParticipantId],
        rng: &mut StdRng,
    ) -> Result<Vec<(ParticipantId, TrainIns)>> {
        self.inner.configure_train(round, global, pool, rng)
    }
    fn aggregate_train(
        &mut self,
        round: Round,
        global: &Global,
        replies: Vec<TrainReply>,
        failures: Vec<fluxmoe_fed::Failure>,
    ) -> Result<TrainOutcome> {
        self.inner.aggregate_train(round, global, replies, failures)
    }
    fn state(&self) -> Result<serde_json::Value> {
        self.inner.state()
    }
    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        self.inner.load_state(state)
    }
}

#[test]
fn profiling_is_on_the_critical_path_unless_stale_and_stale_reads_the_previous_model() {
    let run = |stale: bool| {
        let mut s = Profiling {
            inner: strategy(2, ServerOptimizerConfig::fedavg()),
            stale,
            reports: Vec::new(),
        };
        let mut t = transport(0.0, &[2.0, 5.0]);
        let mut clock = VirtualClock::new();
        let mut coord = Coordinator::new(run_cfg(2, 5, None, 11.0), global()).unwrap();
        let h = coord
            .run_rounds(&mut s, &mut t, &mut clock, None, 10, &mut |_| {})
            .unwrap();
        (h.records, s.reports)
    };
    // Fresh: 5 s of profiling precede the 8 s of the slower participant; aggregation 4 s.
    let (fresh, fresh_reports) = run(false);
    for r in &fresh {
        assert_eq!(r.times[1].profile_s, 5.0);
        assert_eq!(r.times[1].profile_hidden_s, 0.0);
        assert_eq!(r.train_s, 13.0);
        assert_eq!(r.round_s, 17.0);
    }
    // Stale, round 1: only the 2 s download hide profiling (no aggregation before).
    // Round 2: the previous aggregation (4 s) + download (2 s) hide 5 s entirely.
    let (stale, stale_reports) = run(true);
    assert_eq!(stale[0].times[1].profile_hidden_s, 2.0);
    assert_eq!(stale[0].train_s, 11.0);
    assert_eq!(stale[1].times[1].profile_hidden_s, 5.0);
    assert_eq!(stale[1].train_s, 8.0);
    assert_eq!(stale[1].round_s, 12.0);
    // Round 1 both profile the initial model; in round 2 fresh sees the round-1 model,
    // stale the initial one again.
    let w0 = 10.0;
    assert_eq!(fresh_reports[0]["w_sum"], w0);
    assert_eq!(stale_reports[2]["w_sum"], w0);
    assert_ne!(fresh_reports[2]["w_sum"], w0);
}

/// What each participant was told it must download: `(round, participant, changed)`.
type DownloadLog = std::sync::Arc<std::sync::Mutex<Vec<(u32, u32, Option<Vec<String>>)>>>;

/// Logs its instruction's `changed` set; its update of `w` is NaN (so rejected) in
/// round 2, a plain step otherwise.
struct Recorder {
    id: ParticipantId,
    log: DownloadLog,
}

impl Participant for Recorder {
    fn train(&mut self, ins: &TrainIns, global: &Global) -> Result<TrainReply> {
        let changed = ins.changed.as_ref().map(|c| c.iter().cloned().collect());
        self.log
            .lock()
            .unwrap()
            .push((ins.round.0, self.id.0, changed));
        let step = if ins.round.0 == 2 { f32::NAN } else { 0.1 };
        let deltas = ins
            .trainable
            .iter()
            .map(|n| {
                Ok((
                    n.clone(),
                    global[n].ones_like()?.affine(f64::from(step), 0.0)?,
                ))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        Ok(TrainReply {
            participant: self.id,
            deltas,
            weights: BTreeMap::from([("*".to_string(), 1.0)]),
            metrics: BTreeMap::new(),
            cost: WorkCost::default(),
            report: serde_json::Value::Null,
        })
    }
}

fn download_log(download: Download, split_at: Option<u32>) -> Vec<(u32, u32, Option<Vec<String>>)> {
    let log = DownloadLog::default();
    let make_transport = || {
        let mut t = LocalTransport::new(LocalTransportConfig {
            dropout: 0.0,
            seed: 1,
            workers: 1,
        })
        .unwrap();
        for i in 0..2 {
            let id = ParticipantId(i);
            let p = Recorder {
                id,
                log: log.clone(),
            };
            t.add(id, Box::new(p), unit_profile("dev")).unwrap();
        }
        t
    };
    let cfg = RunConfig {
        download,
        ..run_cfg(4, 3, None, 100.0)
    };
    let dir = tempfile::tempdir().unwrap();
    let mut s = strategy(2, ServerOptimizerConfig::fedavg());
    let mut clock = VirtualClock::new();
    let mut coord = Coordinator::new(cfg.clone(), global()).unwrap();
    if let Some(k) = split_at {
        coord
            .run_rounds(
                &mut s,
                &mut make_transport(),
                &mut clock,
                None,
                k,
                &mut |_| {},
            )
            .unwrap();
        let state = coord.state(&s, &clock).unwrap();
        save_checkpoint(dir.path(), &state, coord.global(), coord.previous()).unwrap();
        let (state, g) = load_checkpoint(dir.path(), &Device::Cpu).unwrap();
        s = strategy(2, ServerOptimizerConfig::fedavg());
        clock = VirtualClock::new();
        coord = Coordinator::resume(cfg, g, &state, &mut s, &mut clock).unwrap();
    }
    coord
        .run_rounds(
            &mut s,
            &mut make_transport(),
            &mut clock,
            None,
            10,
            &mut |_| {},
        )
        .unwrap();
    let mut out = log.lock().unwrap().clone();
    out.sort_by_key(|e| (e.0, e.1));
    out
}

#[test]
fn participants_download_only_what_changed_since_their_copy() {
    let w = || Some(vec!["w".to_string()]);
    let none = || Some(vec![]);
    let log = download_log(Download::Changed, None);
    assert_eq!(
        log,
        vec![
            // Everyone starts from the initial model: nothing to fetch.
            (1, 0, none()),
            (1, 1, none()),
            // Round 1 changed `w` (never `frozen`).
            (2, 0, w()),
            (2, 1, w()),
            // Round 2's NaN updates were rejected: the copies from round 2 are current.
            (3, 0, none()),
            (3, 1, none()),
            (4, 0, w()),
            (4, 1, w()),
        ]
    );
    // The bookkeeping survives a checkpoint.
    assert_eq!(download_log(Download::Changed, Some(2)), log);
    // `everything`: no copy is assumed.
    assert!(download_log(Download::Everything, None)
        .iter()
        .all(|(_, _, c)| c.is_none()));
}
