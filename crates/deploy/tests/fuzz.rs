//! Property tests over every decoder of what arrives from the network (the tensor
//! payload's own are in `codec.rs`): the protobuf messages, the JSON each side parses
//! (instructions, reply headers, profile reports, device profiles), tokens files and
//! call metadata, and sequences of chunks. Inputs are arbitrary bytes and mutations of
//! valid messages (byte flips, insertions, deletions, truncation), so most cases get
//! past the first byte. A decoder may refuse; it must never panic, and a message it
//! accepts after a mutation must still pass the checks the receiver runs on it.

use std::collections::{BTreeMap, BTreeSet};

use fluxmoe_deploy::chunks::ChunkReceiver;
use fluxmoe_deploy::proto::{
    reply_part, Chunk, PullRequest, RegisterRequest, ReplyHeader, ReplyPart, Task, TaskKind,
    TensorDigest,
};
use fluxmoe_deploy::reply::ReplyMeta;
use fluxmoe_deploy::Tokens;
use fluxmoe_fed::{
    DeviceProfile, ParticipantId, ProfileIns, ProfileReply, Round, Scalar, TrainIns, WorkCost,
};
use proptest::prelude::*;
use prost::Message;

/// One edit of a byte string.
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
    ];
    proptest::collection::vec(edit, 1..6)
}

fn mutate(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = bytes.len();
        match *e {
            Edit::Flip(i, b) if n > 0 => bytes[i % n] ^= b.max(1),
            Edit::Insert(i, b) => bytes.insert(i % (n + 1), b),
            Edit::Delete(i) if n > 0 => {
                bytes.remove(i % n);
            }
            Edit::Truncate(i) => bytes.truncate(i % (n + 1)),
            _ => {}
        }
    }
    bytes
}

fn train_ins() -> TrainIns {
    TrainIns {
        round: Round(3),
        trainable: vec![
            "layers.0.experts.1.w1".into(),
            "layers.1.experts.0.w2".into(),
        ],
        params: BTreeMap::from([("lr".to_string(), Scalar::Float(1e-3))]),
        changed: Some(BTreeSet::from(["layers.0.experts.1.w1".to_string()])),
    }
}

fn reply_meta() -> ReplyMeta {
    ReplyMeta {
        participant: ParticipantId(2),
        weights: BTreeMap::from([("*".to_string(), 12.0)]),
        metrics: BTreeMap::from([("loss".to_string(), 2.5)]),
        cost: WorkCost {
            flops: 1e12,
            ..WorkCost::default()
        },
        report: serde_json::json!({"utilities": [0.5, 0.25]}),
    }
}

fn task() -> Task {
    Task {
        kind: TaskKind::Train as i32,
        task_id: 7,
        instruction_json: serde_json::to_string(&train_ins()).unwrap(),
        global: vec![TensorDigest {
            name: "a".into(),
            sha256: vec![1; 32],
        }],
        current: vec![],
    }
}

/// Decode `bytes` as each protobuf message; what decodes must re-encode.
fn decode_protos(bytes: &[u8]) {
    if let Ok(t) = Task::decode(bytes) {
        let _ = TaskKind::try_from(t.kind);
        let _ = Task::decode(t.encode_to_vec().as_slice()).unwrap();
    }
    if let Ok(p) = PullRequest::decode(bytes) {
        let _ = PullRequest::decode(p.encode_to_vec().as_slice()).unwrap();
    }
    if let Ok(r) = ReplyPart::decode(bytes) {
        let _ = ReplyPart::decode(r.encode_to_vec().as_slice()).unwrap();
    }
    let _ = RegisterRequest::decode(bytes);
    let _ = fluxmoe_deploy::proto::UploadOffsetRequest::decode(bytes);
    let _ = Chunk::decode(bytes);
}

/// Parse `text` as the coordinator and the participants parse JSON from the network.
fn parse_json(text: &str) {
    let _ = serde_json::from_str::<TrainIns>(text);
    let _ = serde_json::from_str::<ProfileIns>(text);
    let _ = serde_json::from_str::<ProfileReply>(text);
    if let Ok(meta) = serde_json::from_str::<ReplyMeta>(text) {
        let _ = meta.join(BTreeMap::new());
    }
    if let Ok(profile) = serde_json::from_str::<DeviceProfile>(text) {
        let _ = profile.validate();
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        decode_protos(&bytes);
        parse_json(&String::from_utf8_lossy(&bytes));
        let _ = Tokens::parse(&String::from_utf8_lossy(&bytes), "fuzz");
    }

    #[test]
    fn mutated_messages_never_panic_a_decoder(e in edits()) {
        let header = ReplyPart {
            part: Some(reply_part::Part::Header(ReplyHeader {
                task_id: 7,
                reply_json: serde_json::to_string(&reply_meta()).unwrap(),
                error: String::new(),
                measured_s: 1.5,
                sha256: vec![7; 32],
                first_chunk: 3,
            })),
        };
        for valid in [
            task().encode_to_vec(),
            header.encode_to_vec(),
            PullRequest { task_id: 7, which: 1, names: vec!["a".into(), "b".into()], first_chunk: 2 }
                .encode_to_vec(),
        ] {
            decode_protos(&mutate(valid, &e));
        }
        let profile = serde_json::to_vec(&DeviceProfile::cpu()).unwrap();
        for valid in [
            serde_json::to_vec(&train_ins()).unwrap(),
            serde_json::to_vec(&reply_meta()).unwrap(),
            profile,
        ] {
            parse_json(&String::from_utf8_lossy(&mutate(valid, &e)));
        }
        let tokens = b"# tokens\n0 secret-0\n1 secret-1\n".to_vec();
        let _ = Tokens::parse(&String::from_utf8_lossy(&mutate(tokens, &e)), "fuzz");
    }

    #[test]
    fn call_metadata_authenticates_exactly_the_right_token(
        id in prop_oneof![Just("1".to_string()), Just("01".to_string()), "[ -~]{0,12}"],
        auth in prop_oneof![Just("Bearer secret".to_string()), Just("Bearer secret ".to_string()), "[ -~]{0,24}"],
    ) {
        let tokens = Tokens::from_pairs([(ParticipantId(1), "secret".to_string())]);
        let mut md = tonic::metadata::MetadataMap::new();
        if let Ok(v) = id.parse() {
            md.insert("x-fluxmoe-participant", v);
        }
        if let Ok(v) = auth.parse() {
            md.insert("authorization", v);
        }
        let id_ok = md
            .get("x-fluxmoe-participant")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            == Some(1);
        let auth_ok = md.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer secret");
        prop_assert_eq!(tokens.authenticate(&md).is_ok(), id_ok && auth_ok);
    }

    #[test]
    fn arbitrary_chunk_sequences_are_refused_not_a_panic(
        chunks in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..64), proptest::collection::vec(any::<u8>(), 0..33)),
            0..6,
        )
    ) {
        let mut receiver = ChunkReceiver::new(1 << 12);
        for (data, sha256) in chunks {
            match receiver.accept(Chunk { data, sha256 }) {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => {}
            }
        }
    }
}
