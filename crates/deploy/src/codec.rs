//! The tensor payload: named tensors as one byte string, cut into chunks, with a
//! SHA-256 of the whole payload sent after the last chunk.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! magic  b"FLXT1"
//! count  u32                                  number of records
//! record name_len u16, name (UTF-8), dtype u8 (0 f32, 1 f16, 2 bf16),
//!        ndim u8, dims u64 × ndim, byte_len u64, bytes (row-major, little-endian)
//! ```
//!
//! [`encode`] writes the payload for a set of tensors (ascending by name, as a
//! `BTreeMap` iterates); [`chunks`] cuts it into pieces of at most [`CHUNK_BYTES`].
//! [`Decoder`] receives the chunks, refuses a payload as soon as it outgrows its limit
//! (so a stream never buffers more than that), and [`Decoder::finish`] checks the
//! checksum, then every record's header (name length and UTF-8, dtype, rank,
//! `shape × element size == byte_len`, duplicates) before the record's tensor is built.
//! Bad input is an [`Error`], never a panic.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

/// Largest chunk sent on a stream (1 MiB): far below gRPC's message limits.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Longest tensor name accepted.
pub const MAX_NAME_BYTES: usize = 1024;
/// Highest tensor rank accepted.
pub const MAX_RANK: usize = 8;

const MAGIC: &[u8] = b"FLXT1";

/// Why a payload was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The payload ended inside `what`.
    #[error("payload truncated: it ends inside {what} at byte {offset}")]
    Truncated { what: &'static str, offset: usize },
    /// The payload does not start with the format's magic bytes.
    #[error(
        "payload does not start with {MAGIC:?}: not a fluxmoe tensor payload or another version"
    )]
    BadMagic,
    /// More bytes arrived than the receiver's limit allows.
    #[error("payload exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// The SHA-256 sent with the payload is not the digest of the bytes received.
    #[error("payload checksum mismatch: the sender's SHA-256 is {sent}, the bytes received hash to {received}")]
    Checksum { sent: String, received: String },
    /// A record's header is invalid (`record` counts from 0).
    #[error("record {record}: {msg}")]
    Record { record: usize, msg: String },
    /// Bytes follow the last record.
    #[error("{0} unexpected bytes after the last record")]
    Trailing(usize),
    /// A tensor could not be encoded (unsupported dtype, device read failure).
    #[error("tensor `{name}`: {msg}")]
    Tensor { name: String, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The dtypes a payload can carry.
fn dtype_code(dtype: DType) -> Option<u8> {
    match dtype {
        DType::F32 => Some(0),
        DType::F16 => Some(1),
        DType::BF16 => Some(2),
        _ => None,
    }
}

fn code_dtype(code: u8) -> Option<DType> {
    match code {
        0 => Some(DType::F32),
        1 => Some(DType::F16),
        2 => Some(DType::BF16),
        _ => None,
    }
}

/// The payload of `tensors`.
pub fn encode(tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(
        MAGIC.len()
            + 4
            + tensors
                .values()
                .map(|t| t.elem_count() * 4 + 64)
                .sum::<usize>(),
    );
    out.extend_from_slice(&header(tensors.len())?);
    for (name, t) in tensors {
        out.extend_from_slice(&record(name, t)?);
    }
    Ok(out)
}

/// The start of a payload of `count` records: the magic bytes and the count. A payload
/// is this header followed by its records ([`record`]) in ascending name order.
pub fn header(count: usize) -> Result<Vec<u8>> {
    let count = u32::try_from(count).map_err(|_| Error::Tensor {
        name: String::new(),
        msg: format!("{count} tensors do not fit one payload"),
    })?;
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&count.to_le_bytes());
    Ok(out)
}

/// One record: tensor `t` named `name`. Its SHA-256 ([`digest`]) identifies the
/// tensor's name, dtype, shape and every bit of its values.
pub fn record(name: &str, t: &Tensor) -> Result<Vec<u8>> {
    let fail = |msg: String| Error::Tensor {
        name: name.to_string(),
        msg,
    };
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(fail(format!(
            "name length {} is not in 1..={MAX_NAME_BYTES}",
            name.len()
        )));
    }
    if t.rank() > MAX_RANK {
        return Err(fail(format!("rank {} exceeds {MAX_RANK}", t.rank())));
    }
    let code = dtype_code(t.dtype())
        .ok_or_else(|| fail(format!("dtype {:?} is not f32, f16 or bf16", t.dtype())))?;
    let bytes = le_bytes(t).map_err(|e| fail(e.to_string()))?;
    let mut out = Vec::with_capacity(name.len() + 12 + 8 * t.rank() + bytes.len());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(code);
    out.push(t.rank() as u8);
    for &d in t.dims() {
        out.extend_from_slice(&(d as u64).to_le_bytes());
    }
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(&bytes);
    Ok(out)
}

/// A tensor's elements, row-major, little-endian.
fn le_bytes(t: &Tensor) -> candle_core::Result<Vec<u8>> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => flat
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::F16 => flat
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::BF16 => flat
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        other => candle_core::bail!("dtype {other:?} is not f32, f16 or bf16"),
    })
}

/// SHA-256 of `payload`.
pub fn digest(payload: &[u8]) -> Vec<u8> {
    Sha256::digest(payload).to_vec()
}

/// `payload` in pieces of at most [`CHUNK_BYTES`] (one empty piece for an empty payload).
pub fn chunks(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let n = payload.len().div_ceil(CHUNK_BYTES).max(1);
    (0..n).map(move |i| {
        &payload[(i * CHUNK_BYTES).min(payload.len())..((i + 1) * CHUNK_BYTES).min(payload.len())]
    })
}

/// Receives a payload chunk by chunk; never holds more than its limit.
#[derive(Debug)]
pub struct Decoder {
    limit: usize,
    buf: Vec<u8>,
    hasher: Sha256,
}

impl Decoder {
    /// A decoder that refuses payloads over `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Decoder {
            limit,
            buf: Vec::new(),
            hasher: Sha256::new(),
        }
    }

    /// Append one chunk.
    pub fn push(&mut self, chunk: &[u8]) -> Result<()> {
        if self.buf.len().saturating_add(chunk.len()) > self.limit {
            return Err(Error::TooLarge { limit: self.limit });
        }
        self.hasher.update(chunk);
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// Check the sender's checksum `sha256`, then parse the payload.
    pub fn finish(self, sha256: &[u8]) -> Result<BTreeMap<String, Tensor>> {
        let received = self.hasher.finalize();
        if received.as_slice() != sha256 {
            return Err(Error::Checksum {
                sent: hex(sha256),
                received: hex(&received),
            });
        }
        decode(&self.buf)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parse a whole payload (no checksum: see [`Decoder`]).
pub fn decode(payload: &[u8]) -> Result<BTreeMap<String, Tensor>> {
    let mut r = Reader {
        bytes: payload,
        pos: 0,
    };
    if r.take(MAGIC.len(), "the magic bytes")? != MAGIC {
        return Err(Error::BadMagic);
    }
    let count = u32::from_le_bytes(r.array("the record count")?) as usize;
    let mut out = BTreeMap::new();
    for record in 0..count {
        let bad = |msg: String| Error::Record { record, msg };
        let name_len = u16::from_le_bytes(r.array("a name length")?) as usize;
        if name_len == 0 || name_len > MAX_NAME_BYTES {
            return Err(bad(format!(
                "name length {name_len} is not in 1..={MAX_NAME_BYTES}"
            )));
        }
        let name = std::str::from_utf8(r.take(name_len, "a name")?)
            .map_err(|e| bad(format!("name is not UTF-8: {e}")))?
            .to_string();
        let bad = |msg: String| Error::Record {
            record,
            msg: format!("`{name}`: {msg}"),
        };
        let [code] = r.array::<1>("a dtype")?;
        let dtype = code_dtype(code).ok_or_else(|| {
            bad(format!(
                "dtype code {code} is not 0 (f32), 1 (f16) or 2 (bf16)"
            ))
        })?;
        let [rank] = r.array::<1>("a rank")?;
        if rank as usize > MAX_RANK {
            return Err(bad(format!("rank {rank} exceeds {MAX_RANK}")));
        }
        let mut dims = Vec::with_capacity(rank as usize);
        for _ in 0..rank {
            let d = u64::from_le_bytes(r.array("a dimension")?);
            dims.push(usize::try_from(d).map_err(|_| bad(format!("dimension {d} too large")))?);
        }
        let byte_len = u64::from_le_bytes(r.array("a byte length")?);
        let expected = dims
            .iter()
            .try_fold(dtype.size_in_bytes(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("shape {dims:?} overflows")))?;
        if byte_len != expected as u64 {
            return Err(bad(format!(
                "{byte_len} bytes for shape {dims:?} of {dtype:?}, expected {expected}"
            )));
        }
        let bytes = r.take(expected, "tensor bytes")?;
        if out.contains_key(&name) {
            return Err(bad("appears twice".into()));
        }
        let t = Tensor::from_raw_buffer(bytes, dtype, &dims, &Device::Cpu)
            .map_err(|e| bad(e.to_string()))?;
        out.insert(name, t);
    }
    if r.pos != payload.len() {
        return Err(Error::Trailing(payload.len() - r.pos));
    }
    Ok(out)
}

/// A cursor that fails with [`Error::Truncated`] instead of reading past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(Error::Truncated {
                what,
                offset: self.pos,
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BTreeMap<String, Tensor> {
        let a = Tensor::new(
            &[[1.5f32, -0.0, f32::MIN_POSITIVE], [3.0, 1e-40, -7.25]],
            &Device::Cpu,
        )
        .unwrap();
        let b = Tensor::new(&[0.5f32, 2.0], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let c = Tensor::new(&[[[1.0f32]]], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let s = Tensor::new(4.0f32, &Device::Cpu).unwrap();
        BTreeMap::from([
            ("layers.0.w".to_string(), a),
            ("h".to_string(), b),
            ("bf".to_string(), c),
            ("scalar".to_string(), s),
        ])
    }

    fn bits(t: &Tensor) -> (DType, Vec<usize>, Vec<u8>) {
        (t.dtype(), t.dims().to_vec(), le_bytes(t).unwrap())
    }

    /// Send `payload` through a decoder in chunks.
    fn receive(payload: &[u8], sha: &[u8], limit: usize) -> Result<BTreeMap<String, Tensor>> {
        let mut d = Decoder::new(limit);
        for c in chunks(payload) {
            d.push(c)?;
        }
        d.finish(sha)
    }

    #[test]
    fn round_trip_is_bit_exact() {
        let tensors = sample();
        let payload = encode(&tensors).unwrap();
        let back = receive(&payload, &digest(&payload), usize::MAX).unwrap();
        assert_eq!(
            back.keys().collect::<Vec<_>>(),
            tensors.keys().collect::<Vec<_>>()
        );
        for (name, t) in &tensors {
            assert_eq!(bits(&back[name]), bits(t), "{name}");
        }
        let empty = encode(&BTreeMap::new()).unwrap();
        assert!(receive(&empty, &digest(&empty), usize::MAX)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn large_payloads_are_cut_into_bounded_chunks() {
        let n = (CHUNK_BYTES / 4) * 2 + 3;
        let t = Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap();
        let tensors = BTreeMap::from([("big".to_string(), t.clone())]);
        let payload = encode(&tensors).unwrap();
        let sizes: Vec<usize> = chunks(&payload).map(<[u8]>::len).collect();
        assert_eq!(sizes.len(), 3);
        assert!(sizes.iter().all(|&s| s <= CHUNK_BYTES));
        assert_eq!(sizes.iter().sum::<usize>(), payload.len());
        let back = receive(&payload, &digest(&payload), usize::MAX).unwrap();
        assert_eq!(bits(&back["big"]), bits(&t));
    }

    #[test]
    fn truncated_corrupted_oversized_and_mislabelled_payloads_are_errors() {
        let payload = encode(&sample()).unwrap();
        let sha = digest(&payload);
        // Wrong checksum: one flipped byte in transit.
        let mut flipped = payload.clone();
        flipped[payload.len() / 2] ^= 1;
        let err = receive(&flipped, &sha, usize::MAX).unwrap_err();
        assert!(matches!(err, Error::Checksum { .. }), "{err}");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        // Truncated at every position: an error naming where, never a panic.
        for cut in 0..payload.len() {
            let part = &payload[..cut];
            let err = receive(part, &digest(part), usize::MAX).unwrap_err();
            assert!(
                matches!(err, Error::Truncated { .. } | Error::BadMagic),
                "cut {cut}: {err}"
            );
        }
        // Over the limit: refused while receiving.
        let err = receive(&payload, &sha, payload.len() - 1).unwrap_err();
        assert_eq!(
            err,
            Error::TooLarge {
                limit: payload.len() - 1
            }
        );
        // Not a payload.
        let junk = b"hello world".to_vec();
        assert_eq!(
            receive(&junk, &digest(&junk), 100).unwrap_err(),
            Error::BadMagic
        );
        // Trailing bytes.
        let mut long = payload.clone();
        long.push(0);
        assert_eq!(decode(&long).unwrap_err(), Error::Trailing(1));
    }

    /// A one-record payload with the given header fields and `data` bytes.
    fn record(name: &[u8], dtype: u8, dims: &[u64], byte_len: u64, data: &[u8]) -> Vec<u8> {
        let mut p = MAGIC.to_vec();
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&(name.len() as u16).to_le_bytes());
        p.extend_from_slice(name);
        p.push(dtype);
        p.push(dims.len() as u8);
        for d in dims {
            p.extend_from_slice(&d.to_le_bytes());
        }
        p.extend_from_slice(&byte_len.to_le_bytes());
        p.extend_from_slice(data);
        p
    }

    #[test]
    fn bad_record_headers_are_refused_before_allocation() {
        let msg = |p: Vec<u8>| decode(&p).unwrap_err().to_string();
        assert_eq!(
            decode(&record(b"w", 0, &[2], 8, &[0; 8])).unwrap()["w"].dims(),
            &[2]
        );
        assert!(msg(record(b"w", 7, &[2], 8, &[0; 8])).contains("dtype code 7"));
        assert!(msg(record(b"w", 0, &[3], 8, &[0; 8])).contains("8 bytes for shape [3]"));
        assert!(msg(record(b"", 0, &[2], 8, &[0; 8])).contains("name length 0"));
        assert!(msg(record(&[0xff], 0, &[2], 8, &[0; 8])).contains("not UTF-8"));
        assert!(msg(record(b"w", 0, &[0; 9], 4, &[0; 4])).contains("rank 9"));
        // A huge claimed shape fails on arithmetic or on the missing bytes, not on an
        // allocation of the claimed size.
        assert!(msg(record(b"w", 0, &[u64::MAX, 4], 0, &[])).contains("overflows"));
        let err = decode(&record(b"w", 0, &[1 << 40], 1 << 42, &[])).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Truncated {
                    what: "tensor bytes",
                    ..
                }
            ),
            "{err}"
        );
        // Duplicate names.
        let mut twice = record(b"w", 0, &[1], 4, &[0; 4]);
        twice[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&2u32.to_le_bytes());
        twice.extend_from_slice(&record(b"w", 0, &[1], 4, &[0; 4])[MAGIC.len() + 4..]);
        assert!(msg(twice).contains("appears twice"));
        // Unsupported dtypes are refused when encoding too.
        let ids = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
        let err = encode(&BTreeMap::from([("ids".to_string(), ids)])).unwrap_err();
        assert!(err.to_string().contains("not f32, f16 or bf16"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(&bytes);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = decode(&with_magic);
            let _ = receive(&with_magic, &digest(&with_magic), 256);
        }
    }
}
