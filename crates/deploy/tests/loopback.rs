//! The deployment over loopback: coordinator and three participants talking gRPC
//! (participants on threads of this process) against the simulation of the same
//! config and seed (over plain HTTP/2 and over mutual TLS), what travels under each
//! `fleet.download`, plus the failure modes of the transport and of a participant's
//! copy of the global.
//!
//! The model, task and config helpers are the simulation tests' (`common`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use candle_core::{Device, Tensor};
use fluxmoe_deploy::proto::TaskKind;
use fluxmoe_deploy::{
    serve, CaCertificates, ClientTls, GrpcTransport, GrpcTransportConfig, Identity, Pull,
    ServeConfig, ServerTls, Tokens,
};
use fluxmoe_fed::{
    DeviceProfile, Download, FailureKind, Global, Participant, ParticipantId, Round, TrainIns,
    TrainReply, Transport, WorkCost,
};
use fluxmoe_sim::{run, run_over, RunFile};

#[path = "../../sim/tests/common/mod.rs"]
mod common;
use common::{config, final_bytes, method_config, model_dir, records};

mod certs;

fn token(id: ParticipantId) -> String {
    format!("secret-{}", id.0)
}

fn bind(n: u32, reply_timeout: Duration) -> GrpcTransport {
    bind_tls(n, reply_timeout, None)
}

fn bind_tls(n: u32, reply_timeout: Duration, tls: Option<ServerTls>) -> GrpcTransport {
    GrpcTransport::bind(GrpcTransportConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tokens: Tokens::from_pairs((0..n).map(|i| (ParticipantId(i), token(ParticipantId(i))))),
        tokens_file: None,
        tls,
        reply_timeout,
        max_payload_bytes: 1 << 30,
        poll_interval: Duration::from_millis(500),
    })
    .unwrap()
}

fn serve_cfg(transport: &GrpcTransport, id: ParticipantId, profile: DeviceProfile) -> ServeConfig {
    ServeConfig {
        url: format!("http://{}", transport.local_addr()),
        tls: None,
        id,
        token: token(id),
        profile,
        max_payload_bytes: 1 << 30,
        connect_timeout: Duration::from_secs(10),
    }
}

/// Run `file` simulated (output `sim`) and deployed over loopback (output `deployed`,
/// three participants on threads) and check the two agree bit for bit: final weights
/// and round records (measurements aside). Returns the payloads participants pulled and
/// the number of tensors in the global model.
fn assert_deployment_matches_simulation(
    make: impl Fn(&Path, &str) -> RunFile,
) -> (Vec<Pull>, usize) {
    assert_deployment_matches_simulation_over(make, None)
}

/// Mutual TLS settings: the coordinator's (a server certificate for 127.0.0.1,
/// participants' certificates required) and a participant's (the CA, its certificate).
fn mutual_tls() -> (ServerTls, ClientTls) {
    let ca = certs::Ca::new("fluxmoe test CA");
    let server = ca.server(&[]);
    let client = ca.client("participant");
    let ca_pem = CaCertificates::from_pem(ca.pem.cert.clone(), "ca").unwrap();
    let server_tls = ServerTls {
        identity: Identity::from_pem(server.cert, server.key, "server", "server key").unwrap(),
        client_ca: Some(ca_pem.clone()),
    };
    let client_tls = ClientTls {
        ca: Some(ca_pem),
        domain: None,
        identity: Some(
            Identity::from_pem(client.cert, client.key, "client", "client key").unwrap(),
        ),
    };
    (server_tls, client_tls)
}

/// [`assert_deployment_matches_simulation`], over TLS when `tls` is given.
fn assert_deployment_matches_simulation_over(
    make: impl Fn(&Path, &str) -> RunFile,
    tls: Option<(ServerTls, ClientTls)>,
) -> (Vec<Pull>, usize) {
    let (server_tls, client_tls) = tls.unzip();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_dir(root);
    run(&make(root, "sim"), &model, false, &mut |_| {}).unwrap();

    let file = make(root, "deployed");
    let transport = bind_tls(3, Duration::from_secs(300), server_tls);
    let pulls = transport.pulls();
    let (members, initial) = fluxmoe_sim::members_and_initial(&file, &model).unwrap();
    let n_tensors = initial.len();
    let participants: Vec<_> = members
        .into_iter()
        .map(|m| {
            let mut cfg = serve_cfg(&transport, m.id, m.profile);
            if let Some(tls) = &client_tls {
                cfg.url = format!("https://{}", transport.local_addr());
                cfg.tls = Some(tls.clone());
            }
            let mut participant = m.participant;
            let initial = initial.clone();
            std::thread::spawn(move || serve(&cfg, &mut participant, initial))
        })
        .collect();
    let mut transport = Some(transport);
    run_over(&file, &model, false, &mut |_| {}, &mut |_members| {
        let t = transport.take().expect("the transport is built once");
        t.wait_for_participants(3, Duration::from_secs(60))
            .map_err(fluxmoe_fed::Error::from)?;
        Ok(Box::new(t))
    })
    .unwrap();
    let answered: usize = participants
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .sum();
    // At least two of three participants trained in each of the two rounds.
    assert!(answered >= 4, "{answered} tasks answered");
    assert_eq!(final_bytes(root, "sim"), final_bytes(root, "deployed"));
    assert_eq!(records(root, "sim"), records(root, "deployed"));
    (pulls.pulls(), n_tensors)
}

/// The training pulls of `round`.
fn train_pulls(pulls: &[Pull], round: u32) -> Vec<&Pull> {
    pulls
        .iter()
        .filter(|p| p.kind == TaskKind::Train && p.round == round)
        .collect()
}

#[test]
fn fedavg_full_over_loopback_matches_the_simulation_bit_for_bit() {
    // `fleet.download = "changed"`, the default.
    let (pulls, _) = assert_deployment_matches_simulation(|root, out| config(root, out, 2));
    // Every participant starts from the initial model: nothing travels in round 1.
    let first = train_pulls(&pulls, 1);
    assert!(first.len() >= 2, "{pulls:?}");
    assert!(first.iter().all(|p| p.tensors == 0), "{first:?}");
}

#[test]
fn fedavg_full_over_mutual_tls_matches_the_simulation_bit_for_bit() {
    let (pulls, _) = assert_deployment_matches_simulation_over(
        |root, out| config(root, out, 2),
        Some(mutual_tls()),
    );
    assert!(train_pulls(&pulls, 2).len() >= 2, "{pulls:?}");
}

#[test]
fn flux_over_loopback_matches_the_simulation_bit_for_bit() {
    // Profiling tasks travel too (stale ones pull the previous global as well).
    let (pulls, n_tensors) =
        assert_deployment_matches_simulation(|root, out| method_config(root, out, "flux", 2));
    let first = train_pulls(&pulls, 1);
    assert!(first.iter().all(|p| p.tensors == 0), "{first:?}");
    // Profiling reads the whole current global (and the previous one when stale).
    let profiles: Vec<&Pull> = pulls
        .iter()
        .filter(|p| p.kind == TaskKind::Profile)
        .collect();
    assert!(!profiles.is_empty());
    assert!(
        profiles.iter().all(|p| p.tensors == n_tensors),
        "{profiles:?}"
    );
}

#[test]
fn under_download_changed_only_what_changed_travels() {
    let (changed, n_tensors) =
        assert_deployment_matches_simulation(|root, out| config(root, out, 2));
    let (everything, _) = assert_deployment_matches_simulation(|root, out| {
        let mut file = config(root, out, 2);
        file.fleet.download = Download::Everything;
        file
    });
    let bytes = |pulls: &[Pull]| -> usize { pulls.iter().map(|p| p.bytes).sum() };
    for round in [1, 2] {
        let (c, e) = (
            train_pulls(&changed, round),
            train_pulls(&everything, round),
        );
        assert!(c.len() >= 2 && e.len() >= 2, "round {round}: {c:?} {e:?}");
        // "everything" ships the whole model to every participant every round.
        assert!(e.iter().all(|p| p.tensors == n_tensors), "{e:?}");
        let c_bytes: usize = c.iter().map(|p| p.bytes).sum();
        let e_bytes: usize = e.iter().map(|p| p.bytes).sum();
        println!("round {round}: changed {c_bytes} B, everything {e_bytes} B");
    }
    // Round 1: a payload header and no tensor; round 2: the tensors round 1 changed
    // (the trained experts), not the whole model.
    for p in train_pulls(&changed, 1) {
        assert_eq!((p.tensors, p.bytes), (0, 9), "{p:?}");
    }
    for p in train_pulls(&changed, 2) {
        assert!(p.tensors > 0 && p.tensors < n_tensors, "{p:?}");
    }
    assert!(
        bytes(&changed) * 2 < bytes(&everything),
        "changed {} B, everything {} B",
        bytes(&changed),
        bytes(&everything)
    );
}

/// Returns a delta filled with `fill` for every name in `deltas`, after sleeping `sleep`.
struct Toy {
    id: ParticipantId,
    deltas: Vec<&'static str>,
    fill: f64,
    sleep: Duration,
}

impl Participant for Toy {
    fn train(&mut self, _ins: &TrainIns, global: &Global) -> fluxmoe_fed::Result<TrainReply> {
        std::thread::sleep(self.sleep);
        let deltas = self
            .deltas
            .iter()
            .map(|&n| {
                let delta = global[n].ones_like().unwrap().affine(self.fill, 0.0);
                (n.to_string(), delta.unwrap())
            })
            .collect();
        Ok(TrainReply {
            participant: self.id,
            deltas,
            weights: BTreeMap::from([("*".to_string(), 0.1 + 0.2)]),
            metrics: BTreeMap::new(),
            cost: WorkCost {
                flops: 3.0,
                ..WorkCost::default()
            },
            report: serde_json::Value::Null,
        })
    }
}

fn unit_profile() -> DeviceProfile {
    DeviceProfile {
        name: "unit".into(),
        memory_bytes: 1,
        train_flops: 1.0,
        quant_forward_flops: 1.0,
        pcie_bytes_per_s: 1.0,
        uplink_bytes_per_s: 1.0,
        downlink_bytes_per_s: 1.0,
    }
}

#[test]
fn bad_tokens_unassigned_or_nan_updates_and_silent_participants_fail_cleanly() {
    let mut transport = bind(4, Duration::from_secs(2));
    // A wrong token is refused at registration.
    let mut intruder = serve_cfg(&transport, ParticipantId(0), unit_profile());
    intruder.token = "guess".into();
    let mut toy = Toy {
        id: ParticipantId(0),
        deltas: vec![],
        fill: 1.0,
        sleep: Duration::ZERO,
    };
    let err = serve(&intruder, &mut toy, Global::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Register") && err.contains("wrong token"),
        "{err}"
    );

    let global: Global = BTreeMap::from([
        (
            "a".to_string(),
            Tensor::new(&[1.5f32, -2.0], &Device::Cpu).unwrap(),
        ),
        (
            "b".to_string(),
            Tensor::new(&[3.0f32], &Device::Cpu).unwrap(),
        ),
    ]);
    // 0 answers properly, 1 sends a delta it was not assigned, 2 is too slow, 3 sends NaN.
    let specs = [
        (0, vec!["a"], 0, 1.0),
        (1, vec!["a", "b"], 0, 1.0),
        (2, vec!["a"], 4, 1.0),
        (3, vec!["a"], 0, f64::NAN),
    ];
    let threads: Vec<_> = specs
        .into_iter()
        .map(|(i, deltas, sleep_s, fill)| {
            let id = ParticipantId(i);
            let cfg = serve_cfg(&transport, id, unit_profile());
            let mut toy = Toy {
                id,
                deltas,
                fill,
                sleep: Duration::from_secs(sleep_s),
            };
            let copy = global.clone();
            std::thread::spawn(move || serve(&cfg, &mut toy, copy))
        })
        .collect();
    transport
        .wait_for_participants(4, Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        transport.pool(),
        (0..4).map(ParticipantId).collect::<Vec<_>>()
    );
    let ins = TrainIns {
        round: Round(1),
        trainable: vec!["a".into()],
        params: BTreeMap::new(),
        changed: None,
    };
    let msgs = (0..4).map(|i| (ParticipantId(i), ins.clone())).collect();
    let ex = transport.send_and_receive(msgs, &global, None).unwrap();
    assert_eq!(ex.replies.len(), 1);
    let reply = &ex.replies[0];
    assert_eq!(reply.participant, ParticipantId(0));
    assert_eq!(reply.weight_of("a"), Some(0.1 + 0.2));
    assert_eq!(reply.deltas["a"].to_vec1::<f32>().unwrap(), vec![1.0, 1.0]);
    // Virtual time from the reply's cost on the registered profile: 3 FLOP at 1 FLOP/s.
    assert_eq!(ex.times[0].phases.total, 3.0);
    let failures: Vec<(u32, FailureKind)> = ex
        .failures
        .iter()
        .map(|f| (f.participant.0, f.kind))
        .collect();
    assert_eq!(
        failures,
        vec![
            (1, FailureKind::Error),
            (2, FailureKind::Deadline),
            (3, FailureKind::Error)
        ]
    );
    assert!(
        ex.failures[2].reason.contains("NaN or infinite"),
        "{}",
        ex.failures[2].reason
    );
    assert!(
        ex.failures[0].reason.contains("delta `b`: not assigned"),
        "{}",
        ex.failures[0].reason
    );
    assert!(
        ex.failures[1].reason.contains("no answer within"),
        "{}",
        ex.failures[1].reason
    );
    // Unknown recipients are refused before anything is sent.
    let err = transport
        .send_and_receive(vec![(ParticipantId(9), ins)], &global, None)
        .unwrap_err();
    assert!(matches!(
        err,
        fluxmoe_fed::Error::UnknownParticipant(ParticipantId(9))
    ));
    drop(transport);
    for t in threads {
        // Every participant, the slow one included, hears that the run is done.
        t.join().unwrap().unwrap();
    }
}

/// Returns its copy of global tensor `a` as its delta for `a`: what it trained on.
struct Echo(ParticipantId);

impl Participant for Echo {
    fn train(&mut self, _ins: &TrainIns, global: &Global) -> fluxmoe_fed::Result<TrainReply> {
        Ok(TrainReply {
            participant: self.0,
            deltas: BTreeMap::from([("a".to_string(), global["a"].clone())]),
            weights: BTreeMap::new(),
            metrics: BTreeMap::new(),
            cost: WorkCost::default(),
            report: serde_json::Value::Null,
        })
    }
}

fn f32s(values: &[f32]) -> Tensor {
    Tensor::new(values, &Device::Cpu).unwrap()
}

#[test]
fn a_copy_that_does_not_match_the_global_fails_that_participant_only() {
    let mut transport = bind(4, Duration::from_secs(30));
    let pulls = transport.pulls();
    let global: Global = BTreeMap::from([
        ("a".to_string(), f32s(&[1.5, -2.0])),
        ("b".to_string(), f32s(&[3.0])),
    ]);
    let without = |name: &str, replace: Option<Tensor>| {
        let mut copy = global.clone();
        match replace {
            Some(t) => copy.insert(name.to_string(), t),
            None => copy.remove(name),
        };
        copy
    };
    // 0 holds the initial model; 1 lacks `b`; 2 holds other values for `b`; 3 holds
    // `a` with another shape.
    let copies = [
        global.clone(),
        without("b", None),
        without("b", Some(f32s(&[4.0]))),
        without("a", Some(f32s(&[1.5, -2.0, 0.0]))),
    ];
    let threads: Vec<_> = copies
        .into_iter()
        .enumerate()
        .map(|(i, copy)| {
            let id = ParticipantId(i as u32);
            let cfg = serve_cfg(&transport, id, unit_profile());
            std::thread::spawn(move || serve(&cfg, &mut Echo(id), copy))
        })
        .collect();
    transport
        .wait_for_participants(4, Duration::from_secs(30))
        .unwrap();
    let exchange =
        |transport: &mut GrpcTransport, round: u32, global: &Global, changed: &[&str]| {
            let ins = TrainIns {
                round: Round(round),
                trainable: vec!["a".into()],
                params: BTreeMap::new(),
                changed: Some(changed.iter().map(|s| s.to_string()).collect()),
            };
            let msgs = (0..4).map(|i| (ParticipantId(i), ins.clone())).collect();
            let ex = transport.send_and_receive(msgs, global, None).unwrap();
            assert_eq!(ex.replies.len(), 1, "{:?}", ex.failures);
            assert_eq!(ex.replies[0].participant, ParticipantId(0));
            let failed: Vec<(u32, FailureKind)> = ex
                .failures
                .iter()
                .map(|f| (f.participant.0, f.kind))
                .collect();
            assert_eq!(
                failed,
                vec![
                    (1, FailureKind::Error),
                    (2, FailureKind::Error),
                    (3, FailureKind::Error)
                ]
            );
            let reasons: Vec<String> = ex.failures.iter().map(|f| f.reason.clone()).collect();
            (ex.replies[0].deltas["a"].to_vec1::<f32>().unwrap(), reasons)
        };

    // Round 1: nothing changed, nothing travels; 0 trains on the model it holds.
    let (a, reasons) = exchange(&mut transport, 1, &global, &[]);
    assert_eq!(a, vec![1.5, -2.0]);
    assert!(
        reasons[0].contains("global tensor `b` is not in this participant's copy"),
        "{}",
        reasons[0]
    );
    assert!(
        reasons[1].contains("global tensor `b`: this participant's copy differs"),
        "{}",
        reasons[1]
    );
    assert!(
        reasons[2].contains("global tensor `a`: this participant's copy differs"),
        "{}",
        reasons[2]
    );
    let first: Vec<Pull> = pulls.pulls();
    assert_eq!(first.len(), 4);
    assert!(
        first.iter().all(|p| p.tensors == 0 && p.round == 1),
        "{first:?}"
    );

    // Round 2: `a` changed and travels alone; 0 trains on its patched copy. The
    // participants that failed are still there and fail again, for the same reasons
    // or (3) on the shape of what it received.
    let mut next = global.clone();
    next.insert("a".to_string(), f32s(&[0.25, 8.0]));
    let (a, reasons) = exchange(&mut transport, 2, &next, &["a"]);
    assert_eq!(a, vec![0.25, 8.0]);
    assert!(
        reasons[0].contains("`b` is not in this participant's copy"),
        "{}",
        reasons[0]
    );
    assert!(
        reasons[1].contains("`b`: this participant's copy differs"),
        "{}",
        reasons[1]
    );
    assert!(
        reasons[2].contains(
            "received tensor `a` as F32 [2]; this participant's copy holds it as F32 [3]"
        ),
        "{}",
        reasons[2]
    );
    let second: Vec<Pull> = pulls.pulls().into_iter().skip(4).collect();
    assert_eq!(second.len(), 4);
    assert!(
        second.iter().all(|p| p.tensors == 1 && p.round == 2),
        "{second:?}"
    );

    // A changed set naming a tensor the global lacks is the coordinator's error.
    let ins = TrainIns {
        round: Round(3),
        trainable: vec!["a".into()],
        params: BTreeMap::new(),
        changed: Some(BTreeSet::from(["c".to_string()])),
    };
    let err = transport
        .send_and_receive(vec![(ParticipantId(0), ins)], &next, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tensor `c`: named as changed but not in the global model"),
        "{err}"
    );
    drop(transport);
    for t in threads {
        // Every participant, the failing ones included, served until the run was done.
        assert_eq!(t.join().unwrap().unwrap(), 2);
    }
}
