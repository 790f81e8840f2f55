//! The channel's security and operation on loopback, with toy participants: mutual TLS
//! refuses participants without a certificate of its CA, a participant that does not
//! trust the coordinator fails at once, removing a token revokes its participant
//! mid-run (the round does not wait for it; a malformed tokens file changes nothing),
//! and `Status` reports participants, round and phase while a round runs.
//!
//! Certificates are made at test time (`certs`, rcgen).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use fluxmoe_deploy::status::{query, StatusQuery};
use fluxmoe_deploy::{
    serve, CaCertificates, ClientTls, GrpcTransport, GrpcTransportConfig, Identity, ServeConfig,
    ServerTls, Tokens, TokensFile,
};
use fluxmoe_fed::{
    DeviceProfile, FailureKind, Global, Participant, ParticipantId, Round, TrainIns, TrainReply,
    Transport, WorkCost,
};

mod certs;
use certs::{Ca, Pem};

fn token(id: u32) -> String {
    format!("secret-{id}")
}

fn tokens(ids: &[u32]) -> Tokens {
    Tokens::from_pairs(ids.iter().map(|&i| (ParticipantId(i), token(i))))
}

fn tokens_text(ids: &[u32]) -> String {
    ids.iter().map(|&i| format!("{i} {}\n", token(i))).collect()
}

fn bind(
    ids: &[u32],
    tls: Option<ServerTls>,
    tokens_file: Option<TokensFile>,
    reply_timeout: Duration,
) -> GrpcTransport {
    GrpcTransport::bind(GrpcTransportConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tokens: tokens(ids),
        tokens_file,
        tls,
        reply_timeout,
        max_payload_bytes: 1 << 20,
        max_delta_norm: None,
        poll_interval: Duration::from_millis(200),
        suspend: None,
    })
    .unwrap()
}

fn identity(pem: &Pem) -> Identity {
    Identity::from_pem(pem.cert.clone(), pem.key.clone(), "cert", "key").unwrap()
}

fn ca_of(ca: &Ca) -> CaCertificates {
    CaCertificates::from_pem(ca.pem.cert.clone(), "ca").unwrap()
}

fn server_tls(ca: &Ca, mutual: bool) -> ServerTls {
    ServerTls {
        identity: identity(&ca.server(&[])),
        client_ca: mutual.then(|| ca_of(ca)),
    }
}

fn client_tls(trusted: &Ca, cert: Option<&Pem>) -> ClientTls {
    ClientTls {
        ca: Some(ca_of(trusted)),
        domain: None,
        identity: cert.map(identity),
    }
}

fn serve_cfg(transport: &GrpcTransport, id: u32, tls: Option<ClientTls>) -> ServeConfig {
    let scheme = if tls.is_some() { "https" } else { "http" };
    ServeConfig {
        url: format!("{scheme}://{}", transport.local_addr()),
        tls,
        id: ParticipantId(id),
        token: token(id),
        profile: unit_profile(),
        max_payload_bytes: 1 << 20,
        connect_timeout: Duration::from_secs(20),
    }
}

fn unit_profile() -> DeviceProfile {
    DeviceProfile::uniform("unit", 1, 1.0)
}

/// Returns a delta of ones for `a` after sleeping `sleep`.
struct Toy {
    id: ParticipantId,
    sleep: Duration,
}

impl Participant for Toy {
    fn train(&mut self, _ins: &TrainIns, global: &Global) -> fluxmoe_fed::Result<TrainReply> {
        std::thread::sleep(self.sleep);
        Ok(TrainReply {
            participant: self.id,
            deltas: BTreeMap::from([("a".to_string(), global["a"].ones_like().unwrap())]),
            weights: BTreeMap::new(),
            metrics: BTreeMap::new(),
            cost: WorkCost::default(),
            report: serde_json::Value::Null,
        })
    }
}

fn global() -> Global {
    BTreeMap::from([(
        "a".to_string(),
        Tensor::new(&[1.5f32, -2.0], &Device::Cpu).unwrap(),
    )])
}

/// Serve a toy participant on a thread.
fn spawn(
    cfg: ServeConfig,
    sleep: Duration,
) -> std::thread::JoinHandle<fluxmoe_deploy::Result<usize>> {
    let mut toy = Toy { id: cfg.id, sleep };
    std::thread::spawn(move || serve(&cfg, &mut toy, global()))
}

/// Train round `round` on `ids`; returns who replied and who failed, and why.
fn round(
    transport: &mut GrpcTransport,
    round: u32,
    ids: &[u32],
) -> (Vec<u32>, Vec<(u32, FailureKind, String)>) {
    let ins = TrainIns {
        round: Round(round),
        trainable: vec!["a".into()],
        params: BTreeMap::new(),
        changed: Some(Default::default()),
    };
    let msgs = ids
        .iter()
        .map(|&i| (ParticipantId(i), ins.clone()))
        .collect();
    let ex = transport.send_and_receive(msgs, &global(), None).unwrap();
    (
        ex.replies.iter().map(|r| r.participant.0).collect(),
        ex.failures
            .iter()
            .map(|f| (f.participant.0, f.kind, f.reason.clone()))
            .collect(),
    )
}

/// The error `serve` ends with, and how long it took.
fn refused(cfg: ServeConfig) -> (String, Duration) {
    let start = Instant::now();
    let err = spawn(cfg, Duration::ZERO)
        .join()
        .unwrap()
        .expect_err("the participant should be refused");
    (err.to_string(), start.elapsed())
}

#[test]
fn mutual_tls_refuses_participants_without_a_certificate_of_its_ca() {
    let ca = Ca::new("fleet CA");
    let other = Ca::new("another CA");
    let mut transport = bind(
        &[0, 1, 2],
        Some(server_tls(&ca, true)),
        None,
        Duration::from_secs(30),
    );

    // No client certificate; a certificate of another CA (which the participant's own
    // trust store would accept: only the coordinator's check refuses it).
    let (err, took) = refused(serve_cfg(&transport, 1, Some(client_tls(&ca, None))));
    println!("without a certificate: {err}");
    assert!(
        err.contains("closed the connection at Register") && err.contains("mutual TLS"),
        "{err}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
    let foreign = other.client("participant 2");
    let (err, took) = refused(serve_cfg(
        &transport,
        2,
        Some(client_tls(&ca, Some(&foreign))),
    ));
    println!("with another CA's certificate: {err}");
    assert!(
        err.contains("closed the connection at Register") && err.contains("mutual TLS"),
        "{err}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");

    // A certificate of the coordinator's CA: it registers and trains.
    let own = ca.client("participant 0");
    let good = spawn(
        serve_cfg(&transport, 0, Some(client_tls(&ca, Some(&own)))),
        Duration::ZERO,
    );
    transport
        .wait_for_participants(1, Duration::from_secs(20))
        .unwrap();
    assert_eq!(transport.pool(), vec![ParticipantId(0)]);
    let (replied, failed) = round(&mut transport, 1, &[0]);
    assert_eq!((replied, failed.len()), (vec![0], 0));
    drop(transport);
    assert_eq!(good.join().unwrap().unwrap(), 1);
}

#[test]
fn a_participant_that_does_not_trust_the_coordinator_fails_at_once() {
    let ca = Ca::new("fleet CA");
    let other = Ca::new("another CA");
    let transport = bind(
        &[0],
        Some(server_tls(&ca, false)),
        None,
        Duration::from_secs(30),
    );

    let (err, took) = refused(serve_cfg(&transport, 0, Some(client_tls(&other, None))));
    println!("untrusted: {err}");
    assert!(
        err.contains("TLS handshake failed") && err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");

    // The right CA, but checked against a name the certificate does not hold.
    let mut tls = client_tls(&ca, None);
    tls.domain = Some("coordinator.example".into());
    let (err, _) = refused(serve_cfg(&transport, 0, Some(tls)));
    println!("misnamed: {err}");
    assert!(
        err.contains("TLS handshake failed") && err.contains("not valid for name"),
        "{err}"
    );

    // Plain HTTP to a TLS coordinator, and TLS to a plain one.
    let mut plain = serve_cfg(&transport, 0, None);
    plain.connect_timeout = Duration::from_secs(2);
    let (err, _) = refused(plain);
    println!("http to TLS: {err}");
    assert!(err.contains("must start with https://"), "{err}");
    let plain_transport = bind(&[0], None, None, Duration::from_secs(30));
    let mut tls_to_plain = serve_cfg(&plain_transport, 0, Some(client_tls(&ca, None)));
    tls_to_plain.url = format!("https://{}", plain_transport.local_addr());
    let (err, took) = refused(tls_to_plain);
    println!("https to plain: {err}");
    assert!(err.contains("TLS handshake failed"), "{err}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    drop(plain_transport);

    // The right CA and name (the override names one the certificate holds): it works.
    let mut tls = client_tls(&ca, None);
    tls.domain = Some("localhost".into());
    let good = spawn(serve_cfg(&transport, 0, Some(tls)), Duration::ZERO);
    transport
        .wait_for_participants(1, Duration::from_secs(20))
        .unwrap();
    drop(transport);
    assert_eq!(good.join().unwrap().unwrap(), 0);
}

#[test]
fn removing_a_token_revokes_its_participant_mid_run() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tokens.txt");
    std::fs::write(&path, tokens_text(&[0, 1, 2])).unwrap();
    let file = TokensFile {
        path: path.clone(),
        check_every: Duration::from_millis(50),
    };
    // A reply timeout the test would notice: revoked participants are not waited for.
    let reply_timeout = Duration::from_secs(60);
    let mut transport = bind(&[0, 1, 2], None, Some(file), reply_timeout);
    let [t0, t1, t2] = [0, 1, 2].map(|i| {
        let mut toy = Toy {
            id: ParticipantId(i),
            sleep: Duration::ZERO,
        };
        // Participant 1 is slow in round 3, the round it is revoked in.
        let slow = i == 1;
        let cfg = serve_cfg(&transport, i, None);
        std::thread::spawn(move || {
            let mut p = SlowIn {
                toy: &mut toy,
                round: 3,
                sleep: if slow {
                    Duration::from_secs(4)
                } else {
                    Duration::ZERO
                },
            };
            serve(&cfg, &mut p, global())
        })
    });
    transport
        .wait_for_participants(3, Duration::from_secs(20))
        .unwrap();
    let (replied, failed) = round(&mut transport, 1, &[0, 1, 2]);
    assert_eq!((replied, failed.len()), (vec![0, 1, 2], 0));

    // Between rounds: participant 2's line goes. Once the change has settled (two
    // checks reading it), 2 is out of the pool, a task for it fails at once, and its
    // process is refused from its next call on.
    std::fs::write(&path, tokens_text(&[0, 1])).unwrap();
    wait_for_pool(&transport, &[0, 1]);
    let (replied, failed) = round(&mut transport, 2, &[0, 1, 2]);
    assert_eq!(replied, vec![0, 1]);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!((failed[0].0, failed[0].1), (2, FailureKind::Error));
    assert!(failed[0].2.contains("token was revoked"), "{}", failed[0].2);
    let err = t2.join().unwrap().unwrap_err().to_string();
    assert!(err.contains("Unauthenticated"), "{err}");

    // Mid-round: participant 1 trains for 4 s; its line goes meanwhile. The round
    // ends with 1 failed well before 1 would have answered.
    let start = Instant::now();
    let exchange = std::thread::spawn(move || {
        let out = round(&mut transport, 3, &[0, 1]);
        (transport, out)
    });
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&path, tokens_text(&[0])).unwrap();
    let (mut transport, (replied, failed)) = exchange.join().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(replied, vec![0]);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].0 == 1 && failed[0].2.contains("token was revoked"),
        "{failed:?}"
    );
    assert_eq!(transport.pool(), vec![ParticipantId(0)]);

    // A malformed or empty tokens file changes nothing: 0 goes on.
    for bad in ["0 secret-0\nnot a line of tokens\n", ""] {
        std::fs::write(&path, bad).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(transport.pool(), vec![ParticipantId(0)]);
    }
    let (replied, failed) = round(&mut transport, 4, &[0]);
    assert_eq!((replied, failed.len()), (vec![0], 0));
    // 1's upload, when it comes after its revocation, is refused.
    let err = t1.join().unwrap().unwrap_err().to_string();
    assert!(err.contains("Unauthenticated"), "{err}");
    drop(transport);
    assert_eq!(t0.join().unwrap().unwrap(), 4);
}

/// Poll the pool (which re-reads the tokens file when due) until it is `ids`.
fn wait_for_pool(transport: &GrpcTransport, ids: &[u32]) {
    let want: Vec<ParticipantId> = ids.iter().map(|&i| ParticipantId(i)).collect();
    let start = Instant::now();
    while transport.pool() != want {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            transport.pool()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `toy`, sleeping `sleep` before training in round `round`.
struct SlowIn<'a> {
    toy: &'a mut Toy,
    round: u32,
    sleep: Duration,
}

impl Participant for SlowIn<'_> {
    fn train(&mut self, ins: &TrainIns, global: &Global) -> fluxmoe_fed::Result<TrainReply> {
        if ins.round.0 == self.round {
            std::thread::sleep(self.sleep);
        }
        self.toy.train(ins, global)
    }
}

#[test]
fn status_reports_participants_round_and_phase_mid_round() {
    let ca = Ca::new("fleet CA");
    let own = ca.client("participant");
    // Id 9 has a token but never registers: the operator's.
    let mut transport = bind(
        &[0, 1, 9],
        Some(server_tls(&ca, true)),
        None,
        Duration::from_secs(60),
    );
    let tls = client_tls(&ca, Some(&own));
    let url = format!("https://{}", transport.local_addr());
    let before = status(&url, &tls, 9, &token(9)).unwrap();
    assert_eq!((before.round, before.phase.as_str()), (0, "idle"));
    assert!(before.tls && before.mutual_tls && !before.done);
    assert!(before.participants.is_empty());

    let err = status(&url, &tls, 9, "guess").unwrap_err().to_string();
    assert!(
        err.contains("Unauthenticated") && err.contains("wrong token"),
        "{err}"
    );

    let fast = spawn(serve_cfg(&transport, 0, Some(tls.clone())), Duration::ZERO);
    let slow = spawn(
        serve_cfg(&transport, 1, Some(tls.clone())),
        Duration::from_secs(3),
    );
    transport
        .wait_for_participants(2, Duration::from_secs(20))
        .unwrap();
    let exchange = std::thread::spawn(move || {
        let out = round(&mut transport, 1, &[0, 1]);
        (transport, out)
    });
    // While participant 1 trains: round 1 is training, 0 answered, 1 working.
    let start = Instant::now();
    let mid = loop {
        let report = status(&url, &tls, 0, &token(0)).unwrap();
        if report
            .participants
            .first()
            .is_some_and(|p| p.state == "answered")
        {
            break report;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{report:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("{mid}");
    assert_eq!((mid.round, mid.phase.as_str()), (1, "training"));
    let states: Vec<(u32, &str, &str)> = mid
        .participants
        .iter()
        .map(|p| (p.id, p.device.as_str(), p.state.as_str()))
        .collect();
    assert_eq!(
        states,
        vec![(0, "unit", "answered"), (1, "unit", "working")]
    );
    assert!(mid.participants.iter().all(|p| p.last_seen_s_ago.is_some()));

    let (transport, (replied, _)) = exchange.join().unwrap();
    assert_eq!(replied, vec![0, 1]);
    let after = status(&url, &tls, 9, &token(9)).unwrap();
    assert_eq!((after.round, after.phase.as_str()), (1, "idle"));
    assert!(after.participants.iter().all(|p| p.state == "waiting"));
    drop(transport);
    assert_eq!(fast.join().unwrap().unwrap(), 1);
    assert_eq!(slow.join().unwrap().unwrap(), 1);
}

/// Ask the coordinator at `url` for its status as `id` with `token`.
fn status(
    url: &str,
    tls: &ClientTls,
    id: u32,
    token: &str,
) -> fluxmoe_deploy::Result<fluxmoe_deploy::Report> {
    query(&StatusQuery {
        url: url.to_string(),
        tls: Some(tls.clone()),
        id: ParticipantId(id),
        token: token.to_string(),
        timeout: Duration::from_secs(10),
    })
}
