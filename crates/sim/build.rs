//! Records the git commit of the source tree (with `-dirty` for uncommitted changes) as
//! `FLUXMOE_GIT_COMMIT`, so every run's `run.json` names the code that produced it.
//! Outside a git checkout the variable is empty.

use std::process::Command;

fn main() {
    // The folder cargo runs this script for, read when it runs: `env!` would keep the
    // folder the script was compiled in, and a target folder reused for a copy of the
    // tree elsewhere then recorded no commit (runs of 2026-11-30 said `null`).
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
    let root = std::path::Path::new(&manifest).join("../..");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_default();
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let value = if commit.is_empty() {
        String::new()
    } else if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    };
    println!("cargo:rustc-env=FLUXMOE_GIT_COMMIT={value}");
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/index");
        println!("cargo:rerun-if-changed={dir}/refs/heads");
    }
}
