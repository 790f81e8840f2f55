//! The deployment over loopback: coordinator and three participants talking gRPC
//! (participants on threads of this process) against the simulation of the same
//! config and seed, plus the failure modes of the transport.
//!
//! The model, task and config helpers are the simulation tests' (`common`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use candle_core::{Device, Tensor};
use fluxmoe_deploy::{serve, GrpcTransport, GrpcTransportConfig, ServeConfig, Tokens};
use fluxmoe_fed::{
    DeviceProfile, FailureKind, Global, Participant, ParticipantId, Round, TrainIns, TrainReply,
    Transport, WorkCost,
};
use fluxmoe_sim::{run, run_over, RunFile};

#[path = "../../sim/tests/common/mod.rs"]
mod common;
use common::{config, final_bytes, method_config, model_dir, records};

fn token(id: ParticipantId) -> String {
    format!("secret-{}", id.0)
}

fn bind(n: u32, reply_timeout: Duration) -> GrpcTransport {
    GrpcTransport::bind(GrpcTransportConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tokens: Tokens::from_pairs((0..n).map(|i| (ParticipantId(i), token(ParticipantId(i))))),
        reply_timeout,
        max_payload_bytes: 1 << 30,
        poll_interval: Duration::from_millis(500),
    })
    .unwrap()
}

fn serve_cfg(transport: &GrpcTransport, id: ParticipantId, profile: DeviceProfile) -> ServeConfig {
    ServeConfig {
        url: format!("http://{}", transport.local_addr()),
        id,
        token: token(id),
        profile,
        max_payload_bytes: 1 << 30,
        connect_timeout: Duration::from_secs(10),
    }
}

/// Run `file` simulated (output `sim`) and deployed over loopback (output `deployed`,
/// three participants on threads) and check the two agree bit for bit: final weights
/// and round records (measurements aside).
fn assert_deployment_matches_simulation(make: impl Fn(&Path, &str) -> RunFile) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_dir(root);
    run(&make(root, "sim"), &model, false, &mut |_| {}).unwrap();

    let file = make(root, "deployed");
    let transport = bind(3, Duration::from_secs(300));
    let participants: Vec<_> = fluxmoe_sim::members(&file, &model)
        .unwrap()
        .into_iter()
        .map(|m| {
            let cfg = serve_cfg(&transport, m.id, m.profile);
            let mut participant = m.participant;
            std::thread::spawn(move || serve(&cfg, &mut participant))
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
}

#[test]
fn fedavg_full_over_loopback_matches_the_simulation_bit_for_bit() {
    assert_deployment_matches_simulation(|root, out| config(root, out, 2));
}

#[test]
fn flux_over_loopback_matches_the_simulation_bit_for_bit() {
    // Profiling tasks travel too (stale ones pull the previous global as well).
    assert_deployment_matches_simulation(|root, out| method_config(root, out, "flux", 2));
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
    let err = serve(&intruder, &mut toy).unwrap_err().to_string();
    assert!(
        err.contains("Register") && err.contains("wrong token"),
        "{err}"
    );

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
            std::thread::spawn(move || serve(&cfg, &mut toy))
        })
        .collect();
    transport
        .wait_for_participants(4, Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        transport.pool(),
        (0..4).map(ParticipantId).collect::<Vec<_>>()
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
