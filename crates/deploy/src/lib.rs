//! fluxmoe-deploy: the coordinator and its participants as separate processes over gRPC.
//!
//! How the pieces compose: [`transport::GrpcTransport`] implements `fluxmoe-fed`'s
//! `Transport` on the coordinator side, so the same `Coordinator`, strategies and
//! metrics that drive a simulation drive a deployment; [`participant::serve`] runs any
//! `fluxmoe_fed::Participant` against it from another process (or thread).
//! Tensors travel as [`codec`] payloads in chunks with an end-to-end SHA-256; a
//! participant keeps its copy of the global model between rounds and receives only the
//! tensors that changed since (`fluxmoe_fed::Download::Changed`).
//! The protocol is `proto/fluxmoe.proto` ([`proto`]). The channel may be TLS, mutual
//! or not ([`tls`]); participants authenticate with bearer tokens that the coordinator
//! re-reads from their file, so removing a line revokes a participant ([`tokens`]);
//! [`status`] asks a running coordinator how its run stands.
//!
//! Crates: tonic 0.14 + prost 0.14 (the maintained Rust gRPC stack; tonic-prost is its
//! prost codec), compiled at build time by protox 0.10 (a pure-Rust protobuf compiler,
//! so neither a fresh machine nor CI needs `protoc`) feeding tonic-prost-build's
//! `compile_fds`. protox 0.10, tonic-prost(-build) 0.14 and tonic 0.14 all build on
//! prost 0.14, so one prost is linked.

pub mod chunks;
pub mod codec;
pub mod error;
pub mod participant;
pub mod reply;
pub mod status;
pub mod tls;
pub mod tokens;
pub mod transport;

pub use error::{Error, Result};
pub use participant::{serve, ServeConfig};
pub use status::{Report, StatusQuery};
pub use tls::{CaCertificates, ClientTls, Identity, ServerTls};
pub use tokens::{Tokens, TokensFile};
pub use transport::{GrpcTransport, GrpcTransportConfig, Pull, PullLog, Upload, UploadLog};

/// The code generated from `proto/fluxmoe.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("fluxmoe.v1");
}
