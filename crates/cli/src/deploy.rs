//! `fluxmoe coordinator` and `fluxmoe participant`: a run of the same config as
//! `fluxmoe run`, with the participants in other processes over gRPC
//! (`fluxmoe-deploy`).
//!
//! A participant derives its data shard and device profile from the run config and
//! its id exactly as the simulation does (`fluxmoe_sim::members`: the task is loaded
//! and partitioned with the run's seed, and participant `i` keeps shard `i` and the
//! `i`-th device of the fleet assignment), so with the same config and seed a
//! deployment trains what the simulation trains.
//!
//! TLS: the coordinator serves TLS given `--tls-cert`/`--tls-key` (and requires
//! participants' certificates given `--client-ca`); a participant trusts `--ca-cert`.
//! Every PEM file is read and checked before the run config is loaded, so a bad file
//! fails at once, by name. The coordinator re-reads its tokens file every second on
//! incoming calls: removing a line revokes that participant. `fluxmoe status` asks a
//! running coordinator how its run stands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fluxmoe_deploy::status::{query, StatusQuery};
use fluxmoe_deploy::{
    CaCertificates, ClientTls, GrpcTransport, GrpcTransportConfig, Identity, ServeConfig,
    ServerTls, Tokens, TokensFile,
};
use fluxmoe_fed::ParticipantId;
use fluxmoe_sim::RunFile;

use crate::run::resolve_model;

/// Largest payload either side accepts (the whole model travels in profiling tasks and,
/// under `download = "everything"`, in every training task).
const MAX_PAYLOAD_BYTES: usize = 64 << 30;

/// The coordinator's TLS files.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServerTlsArgs {
    /// Serve TLS with this certificate (PEM, the chain leaf first).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require every participant to present a certificate signed by this CA (PEM):
    /// mutual TLS.
    #[arg(long, requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    fn read(&self) -> Result<Option<ServerTls>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        Ok(Some(ServerTls::read(cert, key, self.client_ca.as_deref())?))
    }
}

/// A client's TLS files (participant, `fluxmoe status`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClientTlsArgs {
    /// Trust this CA certificate (PEM) for the coordinator's certificate. Without it an
    /// https:// coordinator is checked against the platform's roots.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Check the coordinator's certificate against this name instead of the URL's host.
    #[arg(long)]
    pub tls_domain: Option<String>,
    /// Present this certificate (PEM) to a coordinator that requires one (mutual TLS).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    fn read(&self) -> Result<Option<ClientTls>> {
        if self.ca_cert.is_none() && self.tls_domain.is_none() && self.tls_cert.is_none() {
            return Ok(None);
        }
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(Identity::read(cert, key)?),
            _ => None,
        };
        Ok(Some(ClientTls {
            ca: self
                .ca_cert
                .as_deref()
                .map(CaCertificates::read)
                .transpose()?,
            domain: self.tls_domain.clone(),
            identity,
        }))
    }
}

pub struct CoordinatorArgs {
    pub config: PathBuf,
    pub listen: SocketAddr,
    pub tokens: PathBuf,
    pub tls: ServerTlsArgs,
    /// Wall seconds a round waits for its answers.
    pub reply_timeout_s: u64,
    /// Wall seconds to wait for every participant to register before round 1.
    pub wait_s: u64,
    /// Participants to wait for before round 1 (default: all of the config's).
    pub min_participants: Option<usize>,
    /// Continue from the output folder's last checkpoint.
    pub resume: bool,
}

/// Set on the first SIGTERM or SIGINT (the run finishes its round, saves a checkpoint
/// and stops); a second one ends the process at once.
fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        // Registered first, so it sees the flag before the second handler sets it.
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&flag))
            .context("installing a signal handler")?;
        signal_hook::flag::register(signal, Arc::clone(&flag))
            .context("installing a signal handler")?;
    }
    Ok(flag)
}

pub fn coordinator(args: &CoordinatorArgs) -> Result<()> {
    let tls = args.tls.read()?;
    let tokens = Tokens::read(&args.tokens)?;
    let file = RunFile::load(&args.config)?;
    let model_path = resolve_model(&file.model.path)?;
    let all = file.partition.participants;
    let n = args.min_participants.unwrap_or(all);
    if n == 0 || n > all {
        bail!("--min-participants {n}: the config has {all} participants");
    }
    let stop = stop_on_signals()?;
    if tls.is_none() && !args.listen.ip().is_loopback() {
        eprintln!(
            "coordinator: warning: serving without TLS on {}: tokens and tensors travel in \
             clear (see --tls-cert, --tls-key)",
            args.listen
        );
    }
    let transport = GrpcTransport::bind(GrpcTransportConfig {
        listen: args.listen,
        tokens,
        tokens_file: Some(TokensFile {
            path: args.tokens.clone(),
            check_every: Duration::from_secs(1),
        }),
        tls,
        reply_timeout: Duration::from_secs(args.reply_timeout_s),
        max_payload_bytes: MAX_PAYLOAD_BYTES,
        max_delta_norm: file.train.max_delta_norm,
        poll_interval: Duration::from_secs(20),
        suspend: Some(Arc::clone(&stop)),
    })?;
    eprintln!(
        "coordinator: listening on {}, waiting for {n} of {all} participants",
        transport.local_addr(),
    );
    let wait = Duration::from_secs(args.wait_s);
    let mut transport = Some(transport);
    let run = fluxmoe_sim::run_over(
        &file,
        &model_path,
        args.resume,
        &mut |rec| {
            eprintln!(
                "round {}: accepted {:?}, failed {}, virtual {:.1}s",
                rec.round,
                rec.accepted.iter().map(|p| p.0).collect::<Vec<_>>(),
                rec.dropped.len(),
                rec.virtual_time_end
            );
            // The same, structured (`RUST_LOG=fluxmoe::round=info --log-format json`).
            tracing::info!(
                target: "fluxmoe::round",
                round = rec.round.0,
                sampled = ?rec.participants.iter().map(|p| p.0).collect::<Vec<_>>(),
                accepted = ?rec.accepted.iter().map(|p| p.0).collect::<Vec<_>>(),
                failed = ?rec.dropped.iter().map(|f| (f.participant.0, f.reason.as_str())).collect::<Vec<_>>(),
                eval = rec.eval,
                virtual_s = rec.virtual_time_end,
                wall_s = rec.wall_seconds,
                bytes_up = rec.bytes_up,
                bytes_down = rec.bytes_down,
                "round finished"
            );
        },
        &mut |_members| {
            let Some(t) = transport.take() else {
                return Err(fluxmoe_fed::Error::State("the transport is built once".into()).into());
            };
            t.wait_for_participants(n, wait)
                .map_err(fluxmoe_fed::Error::from)?;
            Ok(Box::new(t))
        },
        Some(&stop),
    );
    let summary = match run {
        Err(fluxmoe_sim::Error::Interrupted { round, dir }) => {
            eprintln!(
                "coordinator: stopped after round {round}; checkpoint in {}; participants keep \
                 retrying: start the coordinator again with --resume to continue",
                dir.display()
            );
            return Ok(());
        }
        other => other.context("deployed run")?,
    };
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

pub struct ParticipantArgs {
    pub coordinator: String,
    pub config: PathBuf,
    pub id: u32,
    pub token_file: PathBuf,
    /// Give up when the coordinator has been unreachable this long.
    pub connect_timeout_s: u64,
    pub tls: ClientTlsArgs,
    /// Train on this task (all of it) instead of shard `id` of the config's task.
    pub data: Option<String>,
}

pub fn participant(args: &ParticipantArgs) -> Result<()> {
    let tls = args.tls.read()?;
    // Refuse TLS files with an http:// URL before the (long) model load.
    fluxmoe_deploy::tls::endpoint(&args.coordinator, tls.as_ref())?;
    let file = RunFile::load(&args.config)?;
    let model_path = resolve_model(&file.model.path)?;
    let token = read_token(&args.token_file)?;
    let id = ParticipantId(args.id);
    // The participant's copy of the global starts as the model the run starts from;
    // afterwards only the tensors that changed since travel.
    let (member, initial) = match &args.data {
        Some(data) => fluxmoe_sim::member_with_own_data(&file, &model_path, id, data)
            .with_context(|| format!("participant {id}'s data `{data}`"))?,
        None => {
            let (members, initial) = fluxmoe_sim::members_and_initial(&file, &model_path)?;
            let Some(member) = members.into_iter().find(|m| m.id == id) else {
                bail!(
                    "participant {id}: the config has {} participants (ids 0..{})",
                    file.partition.participants,
                    file.partition.participants
                );
            };
            (member, initial)
        }
    };
    let cfg = ServeConfig {
        url: args.coordinator.clone(),
        tls,
        id,
        token,
        profile: member.profile,
        max_payload_bytes: MAX_PAYLOAD_BYTES,
        connect_timeout: Duration::from_secs(args.connect_timeout_s),
    };
    let mut participant = member.participant;
    let answered = fluxmoe_deploy::serve(&cfg, &mut participant, initial)?;
    eprintln!("participant {id}: run finished after {answered} tasks");
    Ok(())
}

pub struct StatusArgs {
    pub url: String,
    pub id: u32,
    pub token_file: PathBuf,
    pub tls: ClientTlsArgs,
    pub json: bool,
    pub timeout_s: u64,
}

/// `fluxmoe status`: print how the coordinator's run stands.
pub fn status(args: &StatusArgs) -> Result<()> {
    let report = query(&StatusQuery {
        url: args.url.clone(),
        tls: args.tls.read()?,
        id: ParticipantId(args.id),
        token: read_token(&args.token_file)?,
        timeout: Duration::from_secs(args.timeout_s),
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("{}: the token file is empty", path.display());
    }
    Ok(token.to_string())
}
