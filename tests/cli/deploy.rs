//! `fluxmoe coordinator` and three `fluxmoe participant` processes on loopback against
//! `fluxmoe run` of the same config: identical final weights; a wrong token is refused;
//! a coordinator stopped by SIGTERM, or killed, continues from its checkpoint with
//! `--resume` while its participants reconnect, and the result is still the
//! simulation's. The model, task and config are the simulation tests' (`crates/sim/tests/common`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{fluxmoe, stderr};

#[path = "../../crates/sim/tests/common/mod.rs"]
mod common;

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
    // Every round ran, and the late participant was sampled in one of rounds 2-4.
    assert_eq!(common::records(&d.dir, "deployed").len(), 4);
    let accepted_2 = seen
        .iter()
        .any(|l| l.starts_with("round ") && l.contains("accepted [") && l.contains("2]"));
    assert!(accepted_2, "{seen:#?}");
}
