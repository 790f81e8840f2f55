//! Tensor payloads on gRPC streams: [`to_chunks`] turns an encoded payload into
//! [`Chunk`] messages (the last one carrying the SHA-256), [`ChunkReceiver`] turns
//! received chunks back into tensors through a size-limited [`Decoder`].

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Tensor;
use sha2::{Digest, Sha256};

use crate::codec::{self, Decoder, CHUNK_BYTES};
use crate::error::{Error, Result};
use crate::proto::Chunk;

/// An encoded payload and its digest, shared by every stream that sends it. The bytes
/// are the payload header followed by one part per record, so payloads made of the
/// same tensors share their records instead of copying them.
#[derive(Debug)]
pub struct Payload {
    parts: Vec<Arc<Vec<u8>>>,
    len: usize,
    tensors: usize,
    pub sha256: Vec<u8>,
}

impl Payload {
    pub fn encode(tensors: &BTreeMap<String, Tensor>) -> Result<Arc<Self>> {
        let records = tensors
            .iter()
            .map(|(name, t)| codec::record(name, t).map(Arc::new))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Payload::from_records(records)
    }

    /// The payload of `records` ([`codec::record`]), which must be in ascending
    /// name order without duplicates (the receiver refuses duplicates).
    pub fn from_records(records: Vec<Arc<Vec<u8>>>) -> Result<Arc<Self>> {
        let tensors = records.len();
        let mut parts = Vec::with_capacity(records.len() + 1);
        parts.push(Arc::new(codec::header(records.len())?));
        parts.extend(records);
        let mut hasher = Sha256::new();
        for part in &parts {
            hasher.update(part.as_slice());
        }
        Ok(Arc::new(Payload {
            len: parts.iter().map(|p| p.len()).sum(),
            parts,
            tensors,
            sha256: hasher.finalize().to_vec(),
        }))
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload has no bytes (never: it always has its header).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of tensors it carries.
    pub fn tensors(&self) -> usize {
        self.tensors
    }

    /// The payload as one byte string.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for part in &self.parts {
            out.extend_from_slice(part);
        }
        out
    }
}

/// The chunk messages of `payload` (at most [`CHUNK_BYTES`] each), made one at a time
/// as the stream is read, so a stream holds at most one chunk beyond the shared payload.
pub fn to_chunks(payload: Arc<Payload>) -> impl Iterator<Item = Chunk> + Send + 'static {
    to_chunks_from(payload, 0)
}

/// The number of chunks [`to_chunks`] makes of `payload`.
pub fn chunk_count(payload: &Payload) -> usize {
    payload.len.div_ceil(CHUNK_BYTES).max(1)
}

/// The chunks of `payload` from chunk `first` on (none when `first` is past the last):
/// what a stream resumed after `first` chunks still has to send.
pub fn to_chunks_from(
    payload: Arc<Payload>,
    first: usize,
) -> impl Iterator<Item = Chunk> + Send + 'static {
    let n = chunk_count(&payload);
    // The part, and the offset in it, where chunk `first` starts.
    let (mut part, mut offset) = (0usize, first.saturating_mul(CHUNK_BYTES));
    while part < payload.parts.len() && offset >= payload.parts[part].len() {
        offset -= payload.parts[part].len();
        part += 1;
    }
    (first.min(n)..n).map(move |i| {
        let mut data = Vec::with_capacity(CHUNK_BYTES.min(payload.len - i * CHUNK_BYTES));
        while data.len() < CHUNK_BYTES && part < payload.parts.len() {
            let bytes = &payload.parts[part];
            let take = (CHUNK_BYTES - data.len()).min(bytes.len() - offset);
            data.extend_from_slice(&bytes[offset..offset + take]);
            offset += take;
            if offset == bytes.len() {
                part += 1;
                offset = 0;
            }
        }
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
    received: usize,
}

impl ChunkReceiver {
    /// A receiver that refuses payloads over `limit` bytes.
    pub fn new(limit: usize) -> Self {
        ChunkReceiver {
            decoder: Some(Decoder::new(limit)),
            received: 0,
        }
    }

    /// Chunks accepted so far: where a broken stream of the same payload resumes.
    pub fn received(&self) -> usize {
        self.received
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
        self.received += 1;
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn payloads_of_shared_records_are_the_codec_payload_in_bounded_chunks() {
        // Records of 0.75 MiB, 4 B and 1.25 MiB: chunks straddle record boundaries.
        let t = |n: usize| Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap();
        let tensors = BTreeMap::from([
            ("a".to_string(), t(3 << 18)),
            ("b".to_string(), t(1)),
            ("c".to_string(), t(5 << 18)),
        ]);
        let bytes = codec::encode(&tensors).unwrap();
        let payload = Payload::encode(&tensors).unwrap();
        assert_eq!(payload.to_bytes(), bytes);
        assert_eq!((payload.len(), payload.tensors()), (bytes.len(), 3));
        assert_eq!(payload.sha256, codec::digest(&bytes));
        let chunks: Vec<Chunk> = to_chunks(Arc::clone(&payload)).collect();
        assert_eq!(chunks.len(), bytes.len().div_ceil(CHUNK_BYTES));
        assert!(chunks.iter().all(|c| c.data.len() <= CHUNK_BYTES));
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
        assert_eq!(joined, bytes);
        let mut receiver = ChunkReceiver::new(usize::MAX);
        let mut got = None;
        for c in chunks {
            got = receiver.accept(c).unwrap();
        }
        let got = got.unwrap();
        for (name, t) in &tensors {
            assert_eq!(
                got[name].to_vec1::<f32>().unwrap(),
                t.to_vec1::<f32>().unwrap()
            );
        }
        // A stream resumed at any chunk continues where the first one stopped.
        let n = chunk_count(&payload);
        for cut in 0..=n {
            let mut receiver = ChunkReceiver::new(usize::MAX);
            for c in to_chunks(Arc::clone(&payload)).take(cut) {
                assert!(receiver.accept(c).unwrap().is_none() || cut == n);
            }
            assert_eq!(receiver.received(), cut);
            let rest: Vec<Chunk> =
                to_chunks_from(Arc::clone(&payload), receiver.received()).collect();
            assert_eq!(rest.len(), n - cut);
            let mut got = None;
            for c in rest {
                got = receiver.accept(c).unwrap();
            }
            if cut < n {
                let got = got.unwrap();
                assert_eq!(
                    got["c"].to_vec1::<f32>().unwrap(),
                    tensors["c"].to_vec1::<f32>().unwrap()
                );
            }
        }
        // No tensor: one chunk holding the header and the checksum.
        let empty = Payload::from_records(Vec::new()).unwrap();
        let chunks: Vec<Chunk> = to_chunks(empty).collect();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].data, codec::encode(&BTreeMap::new()).unwrap());
        assert!(!chunks[0].sha256.is_empty());
    }
}
