//! `fluxmoe coordinator` and three `fluxmoe participant` processes on loopback against
//! `fluxmoe run` of the same config: identical final weights; a wrong token is refused.
//! The same over mutual TLS, with `fluxmoe status` asked while participants register,
//! and TLS files that are missing, malformed or used with an http:// URL refused by name.
//! The model, task and config are the simulation tests' (`crates/sim/tests/common`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{fluxmoe, stderr, stdout};

#[path = "../../crates/sim/tests/common/mod.rs"]
mod common;

#[path = "../../crates/deploy/tests/certs/mod.rs"]
mod certs;

#[test]
fn coordinator_and_participant_processes_match_the_simulation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = common::model_dir(dir).display().to_string();
    let write_run = |out: &str| {
        let path = dir.join(format!("{out}.toml"));
        std::fs::write(&path, common::config_text(dir, out, 2, &model)).unwrap();
        path.display().to_string()
    };
    let sim = write_run("sim");
    let deployed = write_run("deployed");
    let o = fluxmoe(&["run", &sim, "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));

    std::fs::write(dir.join("tokens.txt"), "0 t0\n1 t1\n2 t2\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let bin = env!("CARGO_BIN_EXE_fluxmoe");
    let tokens = dir.join("tokens.txt").display().to_string();
    let coordinator = Command::new(bin)
        .args(["coordinator", "--config", &deployed, "--listen", &listen])
        .args(["--tokens", &tokens, "--wait-s", "120"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let participant = |id: u32, token: &str| {
        let file = dir.join(format!("p{id}-{token}.token"));
        std::fs::write(&file, token).unwrap();
        let id = id.to_string();
        let file = file.display().to_string();
        Command::new(bin)
            .args(["participant", "--coordinator", &url, "--config", &deployed])
            .args(["--id", &id, "--token-file", &file])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let participants: Vec<_> = (0..3).map(|i| participant(i, &format!("t{i}"))).collect();
    let intruder = participant(1, "guess").wait_with_output().unwrap();
    assert_eq!(intruder.status.code(), Some(2));
    assert!(
        stderr(&intruder).contains("wrong token"),
        "{}",
        stderr(&intruder)
    );
    let c = coordinator.wait_with_output().unwrap();
    assert!(c.status.success(), "{}", stderr(&c));
    for p in participants {
        let o = p.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(
        common::final_bytes(dir, "sim"),
        common::final_bytes(dir, "deployed")
    );
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
