//! `fluxmoe coordinator` and three `fluxmoe participant` processes on loopback against
//! `fluxmoe run` of the same config: identical final weights; a wrong token is refused.
//! The model, task and config are the simulation tests' (`crates/sim/tests/common`).

use std::process::{Command, Stdio};

use super::{fluxmoe, stderr};

#[path = "../../crates/sim/tests/common/mod.rs"]
mod common;

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
