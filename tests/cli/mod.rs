mod bad_input;
mod eval_loss;
mod generate;
mod inspect;
mod logits;
mod plan;
mod upcycle;

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn fluxmoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fluxmoe"))
        .args(args)
        .output()
        .expect("running fluxmoe")
}

pub fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures")
        .join(arch)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
