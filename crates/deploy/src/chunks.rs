//! Tensor payloads on gRPC streams: [`to_chunks`] turns an encoded payload into
//! [`Chunk`] messages (the last one carrying the SHA-256), [`ChunkReceiver`] turns
//! received chunks back into tensors through a size-limited [`Decoder`].

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Tensor;

use crate::codec::{self, Decoder, CHUNK_BYTES};
use crate::error::{Error, Result};
use crate::proto::Chunk;

/// An encoded payload and its digest, shared by every stream that sends it.
#[derive(Debug)]
pub struct Payload {
    pub bytes: Vec<u8>,
    pub sha256: Vec<u8>,
}

impl Payload {
    pub fn encode(tensors: &BTreeMap<String, Tensor>) -> Result<Arc<Self>> {
        let bytes = codec::encode(tensors)?;
        let sha256 = codec::digest(&bytes);
        Ok(Arc::new(Payload { bytes, sha256 }))
    }
}

/// The chunk messages of `payload`, made one at a time as the stream is read, so a
/// stream holds at most one chunk beyond the shared payload.
pub fn to_chunks(payload: Arc<Payload>) -> impl Iterator<Item = Chunk> + Send + 'static {
    let n = payload.bytes.len().div_ceil(CHUNK_BYTES).max(1);
    (0..n).map(move |i| {
        let len = payload.bytes.len();
        let data =
            payload.bytes[(i * CHUNK_BYTES).min(len)..((i + 1) * CHUNK_BYTES).min(len)].to_vec();
        let sha256 = if i + 1 == n {
            payload.sha256.clone()
        } else {
            Vec::new()
        };
        Chunk { data, sha256 }
    })
}

/// Collects the chunks of one payload.
#[derive(Debug)]
pub struct ChunkReceiver {
    decoder: Option<Decoder>,
}

impl ChunkReceiver {
    /// A receiver that refuses payloads over `limit` bytes.
    pub fn new(limit: usize) -> Self {
        ChunkReceiver {
            decoder: Some(Decoder::new(limit)),
        }
    }

    /// Take one chunk; the tensors once the last chunk (the one with the checksum)
    /// has arrived and verified.
    pub fn accept(&mut self, chunk: Chunk) -> Result<Option<BTreeMap<String, Tensor>>> {
        let Some(mut decoder) = self.decoder.take() else {
            return Err(Error::Protocol(
                "a chunk arrived after the payload's last one".into(),
            ));
        };
        decoder.push(&chunk.data)?;
        if chunk.sha256.is_empty() {
            self.decoder = Some(decoder);
            return Ok(None);
        }
        Ok(Some(decoder.finish(&chunk.sha256)?))
    }

    /// The error for a stream that ended before its last chunk.
    pub fn ended_early() -> Error {
        Error::Protocol("the stream ended before the payload's checksum arrived".into())
    }
}
