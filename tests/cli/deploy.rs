//! `fluxmoe coordinator` and three `fluxmoe participant` processes on loopback against
//! `fluxmoe run` of the same config: identical final weights; a wrong token is refused;
//! a coordinator stopped by SIGTERM, or killed, continues from its checkpoint with
//! `--resume` while its participants reconnect, and the result is still the
//! simulation's. The same over mutual TLS, with `fluxmoe status` asked while
//! participants register, and TLS files that are missing, malformed or used with an
//! http:// URL refused by name. The model, task and config are the simulation tests'
//! (`crates/sim/tests/common`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{fluxmoe, stderr, stdout};

#[path = "../../crates/sim/tests/common/mod.rs"]
mod common;

#[path = "../../crates/deploy/tests/certs/mod.rs"]
mod certs;

/// A simulated run (`sim`) and the config of the same run to deploy (`deployed`), with
/// a tokens file for participants 0..3 and a free loopback port.
struct Deployment {
    dir: PathBuf,
    deployed: String,
    listen: String,
    tokens: String,
}

impl Deployment {
    fn new(dir: &Path, rounds: u32) -> Self {
        let model = common::model_dir(dir).display().to_string();
        let write_run = |out: &str| {
            let path = dir.join(format!("{out}.toml"));
            std::fs::write(&path, common::config_text(dir, out, rounds, &model)).unwrap();
            path.display().to_string()
        };
        let sim = write_run("sim");
        let o = fluxmoe(&["run", &sim, "--quiet"]);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::write(dir.join("tokens.txt"), "0 t0\n1 t1\n2 t2\n").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Deployment {
            dir: dir.to_path_buf(),
            deployed: write_run("deployed"),
            listen: format!("127.0.0.1:{port}"),
            tokens: dir.join("tokens.txt").display().to_string(),
        }
    }

    fn coordinator(&self, extra: &[&str]) -> Child {
        self.coordinator_env(extra, &[])
    }

    fn coordinator_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_fluxmoe"))
            .envs(env.iter().copied())
            .args([
                "coordinator",
                "--config",
                &self.deployed,
                "--listen",
                &self.listen,
            ])
            .args(["--tokens", &self.tokens, "--wait-s", "120"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn participant(&self, id: u32, token: &str) -> Child {
        self.participant_with(id, token, &[])
    }

    fn participant_with(&self, id: u32, token: &str, extra: &[&str]) -> Child {
        let file = self.dir.join(format!("p{id}-{token}.token"));
        std::fs::write(&file, token).unwrap();
        let id = id.to_string();
        let file = file.display().to_string();
        let url = format!("http://{}", self.listen);
        Command::new(env!("CARGO_BIN_EXE_fluxmoe"))
            .args([
                "participant",
                "--coordinator",
                &url,
                "--config",
                &self.deployed,
            ])
            .args([
                "--id",
                &id,
                "--token-file",
                &file,
                "--connect-timeout-s",
                "120",
            ])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The three participants, each with its token.
    fn participants(&self) -> Vec<Child> {
        (0..3)
            .map(|i| self.participant(i, &format!("t{i}")))
            .collect()
    }

    /// Wait for every participant to finish successfully, then compare the deployed
    /// run's final weights and round records with the simulation's.
    fn assert_matches_simulation(&self, participants: Vec<Child>) {
        for p in participants {
            let o = p.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
        }
        assert_eq!(
            common::final_bytes(&self.dir, "sim"),
            common::final_bytes(&self.dir, "deployed")
        );
        assert_eq!(
            common::records(&self.dir, "sim"),
            common::records(&self.dir, "deployed")
        );
    }
}

/// The lines `child` writes to stderr, as they come.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Read `lines` until one contains `pattern`; every line read so far.
fn wait_for(lines: &mpsc::Receiver<String>, pattern: &str) -> Vec<String> {
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < Duration::from_secs(120) {
        match lines.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                let hit = line.contains(pattern);
                seen.push(line);
                if hit {
                    return seen;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    panic!("no line with `{pattern}` in {seen:#?}");
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

#[test]
fn coordinator_and_participant_processes_match_the_simulation() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Deployment::new(tmp.path(), 2);
    let coordinator = d.coordinator_env(
        &["--log-format", "json"],
        &[("RUST_LOG", "fluxmoe::round=info")],
    );
    let participants = d.participants();
    let intruder = d.participant(1, "guess").wait_with_output().unwrap();
    assert_eq!(intruder.status.code(), Some(2));
    assert!(
        stderr(&intruder).contains("wrong token"),
        "{}",
        stderr(&intruder)
    );
    let c = coordinator.wait_with_output().unwrap();
    assert!(c.status.success(), "{}", stderr(&c));
    // One structured event per round, as JSON lines.
    let rounds: Vec<serde_json::Value> = stderr(&c)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "round finished")
        .collect();
    assert_eq!(rounds.len(), 2, "{}", stderr(&c));
    for (i, r) in rounds.iter().enumerate() {
        assert_eq!(r["fields"]["round"], i as u64 + 1, "{r}");
        assert!(r["fields"]["virtual_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["fields"]["accepted"].is_string(), "{r}");
    }
    d.assert_matches_simulation(participants);
}

#[test]
fn a_stopped_or_killed_coordinator_resumes_from_its_checkpoint_and_participants_reconnect() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Deployment::new(tmp.path(), 4);
    // SIGTERM while it waits for its participants: it runs round 1, saves a checkpoint
    // and stops without dismissing them.
    let mut first = d.coordinator(&[]);
    let lines = stderr_lines(&mut first);
    wait_for(&lines, "listening on");
    signal(&first, "-TERM");
    let participants = d.participants();
    let seen = wait_for(&lines, "stopped after round 1");
    assert!(first.wait().unwrap().success(), "{seen:#?}");
    assert_eq!(common::records(&d.dir, "deployed").len(), 1);

    // Resumed, then killed outright once round 2 is done (it may be in round 3, or
    // writing a checkpoint), then resumed again: the participants wait it out.
    let mut second = d.coordinator(&["--resume"]);
    let lines = stderr_lines(&mut second);
    wait_for(&lines, "round 2:");
    second.kill().unwrap();
    let killed = second.wait().unwrap();
    if killed.success() {
        // It finished all four rounds before the kill landed: nothing to resume.
        eprintln!("the coordinator finished before SIGKILL");
    } else {
        let third = d.coordinator(&["--resume"]);
        let o = third.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    d.assert_matches_simulation(participants);
}

#[test]
fn a_killed_participant_does_not_stall_the_run_and_late_or_restarted_ones_take_part() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Deployment::new(tmp.path(), 4);
    // Start with two of three; answers are awaited 5 s (wall clock) at most.
    let mut coordinator = d.coordinator(&["--min-participants", "2", "--reply-timeout-s", "5"]);
    let lines = stderr_lines(&mut coordinator);
    let p0 = d.participant(0, "t0");
    let mut p1 = d.participant(1, "t1");
    wait_for(&lines, "round 1:");
    // 1 dies (its task, if it has one, fails on the deadline); 2 joins late; 1 comes
    // back as a fresh process from the initial model, and its copy is repaired.
    p1.kill().unwrap();
    p1.wait().unwrap();
    let p2 = d.participant(2, "t2");
    wait_for(&lines, "round 2:");
    let p1 = d.participant(1, "t1");
    let mut seen = wait_for(&lines, "round 4:");
    seen.extend(lines.iter());
    assert!(coordinator.wait().unwrap().success(), "{seen:#?}");
    for p in [p0, p1, p2] {
        let o = p.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    // Every round ran, and the late participant's update went into one of rounds 2-4.
    let records = common::records(&d.dir, "deployed");
    assert_eq!(records.len(), 4);
    assert!(
        records.iter().any(|r| accepted(r).contains(&2)),
        "{records:#?}"
    );
}

/// The participants whose update a round record accepted.
fn accepted(record: &serde_json::Value) -> Vec<u64> {
    record["accepted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn bad_tls_files_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = certs::Ca::new("fleet CA");
    let (cert, key) = ca.server(&[]).write(dir, "server");
    let bad = dir.join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    std::fs::write(dir.join("tokens.txt"), "0 t0\n").unwrap();
    std::fs::write(dir.join("p0.token"), "t0").unwrap();
    let tokens = path(&dir.join("tokens.txt"));
    let config = path(&dir.join("missing.toml"));
    let coordinator = |extra: &[&str]| {
        let mut args = vec![
            "coordinator",
            "--config",
            &config,
            "--listen",
            "127.0.0.1:1",
        ];
        args.extend_from_slice(&["--tokens", &tokens]);
        args.extend_from_slice(extra);
        fluxmoe(&args)
    };
    let (bad, cert, key) = (path(&bad), path(&cert), path(&key));
    for (extra, why) in [
        (
            vec!["--tls-cert", bad.as_str(), "--tls-key", key.as_str()],
            format!("{bad}: no PEM certificate"),
        ),
        (
            vec!["--tls-cert", cert.as_str(), "--tls-key", bad.as_str()],
            format!("{bad}: no PEM private key"),
        ),
        (
            vec![
                "--tls-cert",
                cert.as_str(),
                "--tls-key",
                key.as_str(),
                "--client-ca",
                "/nonexistent/ca.pem",
            ],
            "/nonexistent/ca.pem".to_string(),
        ),
        (
            vec!["--tls-cert", key.as_str(), "--tls-key", cert.as_str()],
            format!("{key}: no PEM certificate"),
        ),
    ] {
        let o = coordinator(&extra);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(&why), "{why}: {}", stderr(&o));
    }
    let o = coordinator(&["--tls-key", key.as_str()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--tls-cert"), "{}", stderr(&o));

    let token = path(&dir.join("p0.token"));
    let participant = |url: &str, extra: &[&str]| {
        let mut args = vec!["participant", "--coordinator", url, "--config", &config];
        args.extend_from_slice(&["--id", "0", "--token-file", &token]);
        args.extend_from_slice(extra);
        fluxmoe(&args)
    };
    let o = participant("https://127.0.0.1:1", &["--ca-cert", bad.as_str()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&format!("{bad}: no PEM certificate")),
        "{}",
        stderr(&o)
    );
    let ca_file = path(&ca.pem.write(dir, "ca").0);
    let o = participant("http://127.0.0.1:1", &["--ca-cert", ca_file.as_str()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("must start with https://"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn coordinator_and_participants_over_mutual_tls_with_status() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = common::model_dir(dir).display().to_string();
    let deployed = dir.join("deployed.toml");
    std::fs::write(&deployed, common::config_text(dir, "deployed", 2, &model)).unwrap();
    let deployed = path(&deployed);

    let ca = certs::Ca::new("fleet CA");
    let ca_file = path(&ca.pem.write(dir, "ca").0);
    let (server_cert, server_key) = ca.server(&[]).write(dir, "server");
    let (client_cert, client_key) = ca.client("participant").write(dir, "client");
    let (client_cert, client_key) = (path(&client_cert), path(&client_key));
    // 9 is the operator's token: no participant has that id.
    std::fs::write(dir.join("tokens.txt"), "0 t0\n1 t1\n2 t2\n9 admin\n").unwrap();
    std::fs::write(dir.join("admin.token"), "admin").unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("https://{listen}");
    let bin = env!("CARGO_BIN_EXE_fluxmoe");
    let coordinator = Command::new(bin)
        .args(["coordinator", "--config", &deployed, "--listen", &listen])
        .args([
            "--tokens",
            &path(&dir.join("tokens.txt")),
            "--wait-s",
            "120",
        ])
        .args([
            "--tls-cert",
            &path(&server_cert),
            "--tls-key",
            &path(&server_key),
        ])
        .args(["--client-ca", &ca_file])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client_tls = [
        "--ca-cert",
        &ca_file,
        "--tls-cert",
        &client_cert,
        "--tls-key",
        &client_key,
    ];
    let participant = |id: u32| {
        let file = dir.join(format!("p{id}.token"));
        std::fs::write(&file, format!("t{id}")).unwrap();
        Command::new(bin)
            .args(["participant", "--coordinator", &url, "--config", &deployed])
            .args(["--id", &id.to_string(), "--token-file", &path(&file)])
            .args(client_tls)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let status = |json: bool| {
        let admin = path(&dir.join("admin.token"));
        let mut args = vec![
            "status",
            url.as_str(),
            "--id",
            "9",
            "--token-file",
            admin.as_str(),
        ];
        args.extend_from_slice(&client_tls);
        if json {
            args.push("--json");
        }
        fluxmoe(&args)
    };
    let mut participants: Vec<_> = (0..2).map(participant).collect();
    // The coordinator waits for three: while two have registered, it is idle in round 0.
    let start = Instant::now();
    let report = loop {
        let o = status(true);
        if o.status.success() {
            let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
            if report["participants"]
                .as_array()
                .is_some_and(|p| p.len() == 2)
            {
                break report;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(120), "{}", stderr(&o));
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(report["round"], 0, "{report}");
    assert_eq!(report["phase"], "idle", "{report}");
    assert_eq!(report["mutual_tls"], true, "{report}");
    assert_eq!(report["participants"][1]["id"], 1, "{report}");
    let o = status(false);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    println!("{text}");
    assert!(text.starts_with("round 0, idle; up "), "{text}");
    assert!(text.contains("2 participants registered"), "{text}");

    // Without a client certificate the coordinator refuses the status call too.
    let admin = path(&dir.join("admin.token"));
    let o = fluxmoe(&[
        "status",
        &url,
        "--id",
        "9",
        "--token-file",
        &admin,
        "--ca-cert",
        &ca_file,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("TLS"), "{}", stderr(&o));

    participants.push(participant(2));
    let c = coordinator.wait_with_output().unwrap();
    assert!(c.status.success(), "{}", stderr(&c));
    for p in participants {
        let o = p.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert!(dir.join("deployed").exists());
}

#[test]
fn a_participant_trains_on_its_own_data_when_given_one() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Deployment::new(tmp.path(), 2);
    // A file the run's task does not contain: products instead of sums.
    let own = d.dir.join("own.jsonl");
    let lines: Vec<String> = (0..12)
        .map(|i| {
            serde_json::json!({"prompt": format!("{i}*3="), "response": format!("{}", i * 3)})
                .to_string()
        })
        .collect();
    std::fs::write(&own, lines.join("\n")).unwrap();
    let data = format!("jsonl-em:{}", own.display());
    // A missing file is refused by name before anything connects.
    let missing = format!("jsonl-em:{}", d.dir.join("nope.jsonl").display());
    let o = d
        .participant_with(2, "t2", &["--data", &missing])
        .wait_with_output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nope.jsonl"), "{}", stderr(&o));

    let mut coordinator = d.coordinator(&[]);
    let lines = stderr_lines(&mut coordinator);
    let others = [d.participant(0, "t0"), d.participant(1, "t1")];
    let own_data = d.participant_with(2, "t2", &["--data", &data]);
    let mut seen = wait_for(&lines, "round 2:");
    seen.extend(lines.iter());
    assert!(coordinator.wait().unwrap().success(), "{seen:#?}");
    for p in others.into_iter().chain([own_data]) {
        let o = p.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    // Participant 2 was sampled (this seed samples it in round 1) and trained on its
    // products, so the result is not the simulation's.
    let records = common::records(&d.dir, "deployed");
    assert!(accepted(&records[0]).contains(&2), "{records:#?}");
    assert_ne!(
        common::final_bytes(&d.dir, "sim"),
        common::final_bytes(&d.dir, "deployed")
    );
}
