//! A participant's own heap peak, counted by `measure::CountingAlloc` installed as this
//! test binary's global allocator (one test, so no other test allocates meanwhile).

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use fluxmoe_fed::measure::CountingAlloc;
use fluxmoe_fed::{
    DeviceProfile, Global, LocalTransport, LocalTransportConfig, Participant, ParticipantId,
    ProfileIns, ProfileReply, Result, Round, TrainIns, TrainReply, Transport, WorkCost,
};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const MIB: usize = 1 << 20;

/// Holds `hold` MiB, and inside that `inner` MiB more, for a moment, then frees both.
struct Hog {
    id: ParticipantId,
    hold: usize,
    inner: usize,
}

impl Participant for Hog {
    fn profile(&mut self, _: &ProfileIns, _: &Global, _: &Global) -> Result<ProfileReply> {
        unreachable!("not profiled")
    }

    fn train(&mut self, _: &TrainIns, global: &Global) -> Result<TrainReply> {
        let outer = vec![1u8; self.hold * MIB];
        {
            let inner = vec![2u8; self.inner * MIB];
            std::hint::black_box(&inner);
        }
        std::hint::black_box(&outer);
        drop(outer);
        Ok(TrainReply {
            participant: self.id,
            deltas: BTreeMap::from([("w".to_string(), global["w"].zeros_like()?)]),
            weights: BTreeMap::from([("*".to_string(), 1.0)]),
            metrics: BTreeMap::new(),
            cost: WorkCost::default(),
            report: serde_json::Value::Null,
        })
    }
}

#[test]
fn each_participant_is_charged_its_own_heap_peak_even_after_a_bigger_one() {
    let global = Global::from([(
        "w".to_string(),
        Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap(),
    )]);
    let mut t = LocalTransport::new(LocalTransportConfig {
        dropout: 0.0,
        seed: 0,
        workers: 1,
    })
    .unwrap();
    // Participant 0 peaks at 96 MiB and frees it all; participant 1, trained after it,
    // peaks at 40 MiB. Resident memory would charge 1 almost nothing (the allocator
    // may keep 0's pages); the heap count charges each its own peak.
    for (i, (hold, inner)) in [(64, 32), (24, 16)].into_iter().enumerate() {
        let id = ParticipantId(i as u32);
        t.add(
            id,
            Box::new(Hog { id, hold, inner }),
            DeviceProfile::uniform("unit", 1 << 30, 1.0),
        )
        .unwrap();
    }
    let ins = TrainIns {
        round: Round(1),
        trainable: vec!["w".into()],
        params: BTreeMap::new(),
        changed: None,
    };
    let msgs = (0..2).map(|i| (ParticipantId(i), ins.clone())).collect();
    let ex = t.send_and_receive(msgs, &global, None).unwrap();
    assert!(ex.failures.is_empty(), "{:?}", ex.failures);
    let peaks: Vec<u64> = ex
        .times
        .iter()
        .map(|t| t.heap_peak_bytes.unwrap())
        .collect();
    for (peak, want) in peaks.iter().zip([96, 40]) {
        // Its own bytes, plus a little bookkeeping (the reply, the timer), never less.
        let want = (want * MIB) as u64;
        assert!(*peak >= want && *peak < want + MIB as u64, "{peaks:?}");
    }
}
