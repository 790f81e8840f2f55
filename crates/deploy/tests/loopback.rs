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
    bind_with(n, reply_timeout, None, None)
}

fn bind_bounded(n: u32, reply_timeout: Duration, max_delta_norm: Option<f64>) -> GrpcTransport {
    bind_with(n, reply_timeout, max_delta_norm, None)
}

fn bind_tls(n: u32, reply_timeout: Duration, tls: Option<ServerTls>) -> GrpcTransport {
    bind_with(n, reply_timeout, None, tls)
}

fn bind_with(
    n: u32,
    reply_timeout: Duration,
    max_delta_norm: Option<f64>,
    tls: Option<ServerTls>,
) -> GrpcTransport {
    GrpcTransport::bind(GrpcTransportConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tokens: Tokens::from_pairs((0..n).map(|i| (ParticipantId(i), token(ParticipantId(i))))),
        tokens_file: None,
        tls,
        reply_timeout,
        max_payload_bytes: 1 << 30,
        max_delta_norm,
        poll_interval: Duration::from_millis(500),
        suspend: None,
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
    run_over(
        &file,
        &model,
        false,
        &mut |_| {},
        &mut |_members| {
            let t = transport.take().expect("the transport is built once");
            t.wait_for_participants(3, Duration::from_secs(60))
                .map_err(fluxmoe_fed::Error::from)?;
            Ok(Box::new(t))
        },
        None,
    )
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
    // Every participant starts from the initial model: nothing travels in round 1
    // (there is nothing to pull), and something does in round 2.
    assert!(train_pulls(&pulls, 1).is_empty(), "{pulls:?}");
    assert!(!train_pulls(&pulls, 2).is_empty(), "{pulls:?}");
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
    assert!(train_pulls(&pulls, 1).is_empty(), "{pulls:?}");
    // Profiling, too, pulls only what the participant's copy lacks of the model it
    // profiles (and of this round's global when stale), never the whole model.
    let profiles: Vec<&Pull> = pulls
        .iter()
        .filter(|p| p.kind == TaskKind::Profile)
        .collect();
    assert!(!profiles.is_empty(), "{pulls:?}");
    assert!(
        profiles
            .iter()
            .all(|p| p.tensors > 0 && p.tensors < n_tensors),
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
        assert!(e.len() >= 2, "round {round}: {e:?}");
        // "everything" ships the whole model to every participant every round.
        assert!(e.iter().all(|p| p.tensors == n_tensors), "{e:?}");
        let c_bytes: usize = c.iter().map(|p| p.bytes).sum();
        let e_bytes: usize = e.iter().map(|p| p.bytes).sum();
        println!("round {round}: changed {c_bytes} B, everything {e_bytes} B");
    }
    // Round 1: nothing to pull; round 2: the tensors round 1 changed (the trained
    // experts), not the whole model.
    assert!(train_pulls(&changed, 1).is_empty(), "{changed:?}");
    let second = train_pulls(&changed, 2);
    assert!(second.len() >= 2, "{changed:?}");
    for p in second {
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
    DeviceProfile::uniform("unit", 1, 1.0)
}

#[test]
fn bad_tokens_unassigned_nan_or_oversized_updates_and_silent_participants_fail_cleanly() {
    let mut transport = bind_bounded(5, Duration::from_secs(2), Some(10.0));
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
    // 0 answers properly, 1 sends a delta it was not assigned, 2 is too slow, 3 sends
    // NaN, 4 a delta of norm 100·√2, beyond the bound of 10.
    let specs = [
        (0, vec!["a"], 0, 1.0),
        (1, vec!["a", "b"], 0, 1.0),
        (2, vec!["a"], 4, 1.0),
        (3, vec!["a"], 0, f64::NAN),
        (4, vec!["a"], 0, 100.0),
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
        .wait_for_participants(5, Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        transport.pool(),
        (0..5).map(ParticipantId).collect::<Vec<_>>()
    );
    let ins = TrainIns {
        round: Round(1),
        trainable: vec!["a".into()],
        params: BTreeMap::new(),
        changed: None,
    };
    let msgs = (0..5).map(|i| (ParticipantId(i), ins.clone())).collect();
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
            (3, FailureKind::Error),
            (4, FailureKind::Error)
        ]
    );
    assert!(
        ex.failures[3].reason.contains("delta `a`: L2 norm 141.42")
            && ex.failures[3].reason.contains("above the bound 10"),
        "{}",
        ex.failures[3].reason
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
fn a_copy_that_does_not_match_the_global_is_repaired_from_the_digests() {
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
    // `a` with another shape and a tensor the global does not have.
    let mut extra = without("a", Some(f32s(&[1.5, -2.0, 0.0])));
    extra.insert("z".to_string(), f32s(&[7.0]));
    let copies = [
        global.clone(),
        without("b", None),
        without("b", Some(f32s(&[4.0]))),
        extra,
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
            assert!(ex.failures.is_empty(), "{:?}", ex.failures);
            // Every participant trained on exactly the global's `a`.
            ex.replies
                .iter()
                .map(|r| (r.participant.0, r.deltas["a"].to_vec1::<f32>().unwrap()))
                .collect::<Vec<_>>()
        };
    let pulled = |from: usize| -> Vec<(u32, usize)> {
        let mut v: Vec<(u32, usize)> = pulls
            .pulls()
            .into_iter()
            .skip(from)
            .map(|p| (p.participant.0, p.tensors))
            .collect();
        v.sort();
        v
    };

    // Round 1: nothing changed, yet 1, 2 and 3 pull what their copies lack or hold
    // otherwise (by digest); 0 pulls nothing.
    let a = exchange(&mut transport, 1, &global, &[]);
    let want: Vec<(u32, Vec<f32>)> = (0..4).map(|i| (i, vec![1.5, -2.0])).collect();
    assert_eq!(a, want);
    assert_eq!(pulled(0), vec![(1, 1), (2, 1), (3, 1)]);
    assert!(pulls
        .pulls()
        .iter()
        .all(|p| p.round == 1 && p.first_chunk == 0));

    // Round 2: `a` changed and travels alone to each, now that every copy is the
    // global.
    let mut next = global.clone();
    next.insert("a".to_string(), f32s(&[0.25, 8.0]));
    let a = exchange(&mut transport, 2, &next, &["a"]);
    let want: Vec<(u32, Vec<f32>)> = (0..4).map(|i| (i, vec![0.25, 8.0])).collect();
    assert_eq!(a, want);
    assert_eq!(pulled(3), vec![(0, 1), (1, 1), (2, 1), (3, 1)]);

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
        assert_eq!(t.join().unwrap().unwrap(), 2);
    }
}

/// Which way of a connection [`faulty_proxy`] harms.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    /// Coordinator to participant (pulls).
    Down,
    /// Participant to coordinator (uploads).
    Up,
}

/// What [`faulty_proxy`] does to the first connection.
#[derive(Clone)]
enum Fault {
    /// Cut it once this many bytes have gone through.
    Cut(usize),
    /// Flip the low bit of the byte at each of these stream offsets (ascending).
    Flip(Vec<usize>),
}

/// A TCP proxy to `upstream` on a free loopback port that applies `fault` to the
/// bytes of its first connection going `way` (later connections, and the other way,
/// pass untouched). Returns the proxy's address.
fn faulty_proxy(upstream: std::net::SocketAddr, way: Way, fault: Fault) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(upstream) else {
                return;
            };
            let harmless = Fault::Flip(Vec::new());
            let (up, down) = match (n, way) {
                (0, Way::Up) => (fault.clone(), harmless),
                (0, Way::Down) => (harmless, fault.clone()),
                _ => (harmless.clone(), harmless),
            };
            let pump = |mut from: TcpStream, mut to: TcpStream, fault: Fault| {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 << 10];
                    let mut sent = 0usize;
                    while let Ok(k) = from.read(&mut buf) {
                        if k == 0 {
                            break;
                        }
                        if let Fault::Flip(offsets) = &fault {
                            for &at in offsets.iter().filter(|&&at| (sent..sent + k).contains(&at))
                            {
                                buf[at - sent] ^= 1;
                            }
                        }
                        if to.write_all(&buf[..k]).is_err() {
                            break;
                        }
                        sent += k;
                        if matches!(fault, Fault::Cut(limit) if sent >= limit) {
                            break;
                        }
                    }
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                })
            };
            pump(client.try_clone().unwrap(), server.try_clone().unwrap(), up);
            pump(server, client, down);
        }
    });
    addr
}

/// One participant serving [`Echo`] through a [`faulty_proxy`] that harms `way` with
/// `fault`, holding `copy`; the transport, once the participant has registered, and
/// the participant's thread.
fn through_proxy(
    way: Way,
    fault: Fault,
    copy: Global,
) -> (
    GrpcTransport,
    std::thread::JoinHandle<fluxmoe_deploy::Result<usize>>,
) {
    let transport = bind(1, Duration::from_secs(60));
    let proxy = faulty_proxy(transport.local_addr(), way, fault);
    let mut cfg = serve_cfg(&transport, ParticipantId(0), unit_profile());
    cfg.url = format!("http://{proxy}");
    let participant = std::thread::spawn(move || serve(&cfg, &mut Echo(ParticipantId(0)), copy));
    transport
        .wait_for_participants(1, Duration::from_secs(30))
        .unwrap();
    (transport, participant)
}

fn filled(n: usize, value: f32) -> Tensor {
    Tensor::full(value, n, &Device::Cpu).unwrap()
}

/// One round of participant 0 training on `global`, which names `changed` as changed;
/// the exchange must have no failures and echo `a` as `n` values equal to `echo`.
fn round_echoes(
    transport: &mut GrpcTransport,
    round: u32,
    changed: &[&str],
    global: &Global,
    n: usize,
    echo: f32,
) {
    let ex = transport
        .send_and_receive(
            vec![(ParticipantId(0), train_ins(round, changed))],
            global,
            None,
        )
        .unwrap();
    assert!(ex.failures.is_empty(), "{:?}", ex.failures);
    let got = ex.replies[0].deltas["a"].to_vec1::<f32>().unwrap();
    assert!(got.len() == n && got.iter().all(|&x| x == echo));
}

fn train_ins(round: u32, changed: &[&str]) -> TrainIns {
    TrainIns {
        round: Round(round),
        trainable: vec!["a".into()],
        params: BTreeMap::new(),
        changed: Some(changed.iter().map(|s| s.to_string()).collect()),
    }
}

#[test]
fn a_pull_cut_mid_stream_resumes_at_its_next_chunk() {
    // 4 MB to pull (the participant holds zeros, the global ones); the first
    // connection is cut after 1.5 MB from the coordinator.
    let n = 1 << 20;
    let copy: Global = BTreeMap::from([("a".to_string(), filled(n, 0.0))]);
    let (mut transport, participant) = through_proxy(Way::Down, Fault::Cut(3 << 19), copy);
    let pulls = transport.pulls();
    let global: Global = BTreeMap::from([("a".to_string(), filled(n, 1.0))]);
    // It trains on the whole tensor it pulled: its echo is all ones.
    round_echoes(&mut transport, 1, &["a"], &global, n, 1.0);
    // Two pulls of the same payload: the first from chunk 0, the second from where the
    // cut left it (chunks are 1 MiB: one or two had arrived).
    let log = pulls.pulls();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].first_chunk, 0, "{log:?}");
    assert!((1..4).contains(&log[1].first_chunk), "{log:?}");
    assert_eq!(log[0].bytes, log[1].bytes);
    drop(transport);
    assert_eq!(participant.join().unwrap().unwrap(), 1);
}

#[test]
fn an_upload_cut_mid_stream_resumes_at_the_first_chunk_the_coordinator_lacks() {
    // The participant holds the global (nothing to pull) and uploads it back as its
    // delta: 4 MB, cut after 1.5 MB towards the coordinator.
    let n = 1 << 20;
    let global: Global = BTreeMap::from([("a".to_string(), filled(n, 1.0))]);
    let (mut transport, participant) = through_proxy(Way::Up, Fault::Cut(3 << 19), global.clone());
    let uploads = transport.uploads();
    round_echoes(&mut transport, 1, &[], &global, n, 1.0);
    // Received whole once, by a stream that started where the broken one stopped.
    let log = uploads.uploads();
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(
        log[0].first_chunk >= 1 && log[0].first_chunk < log[0].chunks,
        "{log:?}"
    );
    drop(transport);
    assert_eq!(participant.join().unwrap().unwrap(), 1);
}

#[test]
fn a_corrupted_pull_is_pulled_again_from_the_start() {
    // One bit flipped 2 MiB into the first connection's stream, inside the 4 MB of
    // ones the participant pulls: the payload's SHA-256 does not match, so the
    // participant pulls it again, whole, and trains on the right tensor.
    let n = 1 << 20;
    let copy: Global = BTreeMap::from([("a".to_string(), filled(n, 0.0))]);
    let (mut transport, participant) = through_proxy(Way::Down, Fault::Flip(vec![2 << 20]), copy);
    let pulls = transport.pulls();
    let global: Global = BTreeMap::from([("a".to_string(), filled(n, 1.0))]);
    round_echoes(&mut transport, 1, &["a"], &global, n, 1.0);
    let log = pulls.pulls();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log.iter().all(|p| p.first_chunk == 0), "{log:?}");
    drop(transport);
    assert_eq!(participant.join().unwrap().unwrap(), 1);
}

#[test]
fn a_payload_corrupted_twice_fails_its_task_and_the_participant_goes_on() {
    // Bits flipped every MiB of the first connection from 2 MiB to 11 MiB: both pulls
    // of the 4 MB payload arrive corrupted. The task fails with the reason; the
    // participant stays and answers the next round, which needs no pull.
    let n = 1 << 20;
    let zeros: Global = BTreeMap::from([("a".to_string(), filled(n, 0.0))]);
    let flips = (2..12).map(|m| m << 20).collect();
    let (mut transport, participant) = through_proxy(Way::Down, Fault::Flip(flips), zeros.clone());
    let ones: Global = BTreeMap::from([("a".to_string(), filled(n, 1.0))]);
    let ex = transport
        .send_and_receive(vec![(ParticipantId(0), train_ins(1, &["a"]))], &ones, None)
        .unwrap();
    assert!(ex.replies.is_empty());
    assert_eq!(ex.failures.len(), 1, "{:?}", ex.failures);
    let reason = &ex.failures[0].reason;
    assert!(reason.contains("did not check out twice"), "{reason}");
    // Round 2's global is the participant's copy: nothing to pull.
    round_echoes(&mut transport, 2, &[], &zeros, n, 0.0);
    drop(transport);
    // Both tasks answered: the first with its failure.
    assert_eq!(participant.join().unwrap().unwrap(), 2);
}
