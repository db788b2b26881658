//! A hostile controller (the model's `set_hostile`: forged, duplicated and stale completion
//! entries, random statuses and SQ heads, now and then a lost entry or a wrong phase tag)
//! under random batches of reads and writes: the driver never panics or hangs, every I/O
//! resolves once, to success or a typed error, and once the controller is honest again the
//! queue reads back what it writes. 10^5 cases (`MFIO_HOSTILE_CASES` to change).

use futures::future::join_all;
use mfio::{block_on, ErrorKind, Origin, ReadAt, WriteAt};
use mfio_nvme::model::{Hostile, ModelConfig, NamespaceConfig, NvmeModel};
use mfio_nvme::{Controller, ControllerOptions, IoQueue};
use proptest::prelude::*;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

const BS: u64 = 512;
const BLOCKS: u64 = 4096;

struct Rig {
    model: NvmeModel,
    _ctrl: Arc<Controller<NvmeModel>>,
    q: IoQueue<NvmeModel>,
    cases: u64,
    lossy: u64,
}

thread_local! {
    static RIG: RefCell<Option<Rig>> = const { RefCell::new(None) };
}

fn rig() -> Rig {
    let model = NvmeModel::new(ModelConfig {
        namespaces: vec![NamespaceConfig::new(BLOCKS, BS as u32)],
        panic_on_violation: false,
        ..ModelConfig::default()
    });
    let opts = ControllerOptions {
        io_timeout: Duration::from_millis(1),
        queue_depth: 64,
        ..ControllerOptions::default()
    };
    let ctrl = Controller::new(model.clone(), opts).expect("bring-up");
    let q = ctrl.io_queue(1).expect("queue");
    Rig { model, _ctrl: ctrl, q, cases: 0, lossy: 0 }
}

#[derive(Debug, Clone)]
enum Op {
    Read(u64, u64),
    Write(u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    (any::<bool>(), 0..BLOCKS - 8, 1..=8u64).prop_map(|(w, lba, n)| {
        if w {
            Op::Write(lba, n)
        } else {
            Op::Read(lba, n)
        }
    })
}

fn cases() -> u32 {
    std::env::var("MFIO_HOSTILE_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_hostile_controller_gets_typed_errors_or_resets_never_a_panic_or_a_hang(
        seed in any::<u64>(),
        per_mille in 50..=1000u32,
        lossy in (0..1000u32).prop_map(|x| x == 0),
        ops in prop::collection::vec(op(), 1..16),
    ) {
        RIG.with(|r| {
            let mut r = r.borrow_mut();
            let rig = r.get_or_insert_with(rig);
            rig.cases += 1;
            rig.lossy += u64::from(lossy);
            if std::env::var_os("MFIO_HOSTILE_TRACE").is_some() {
                eprintln!("case {} lossy {lossy} per_mille {per_mille} ops {}", rig.cases, ops.len());
            }
            rig.model.set_hostile(Some(Hostile { seed, per_mille, lossy }));
            let q = &rig.q;
            let futs = ops.iter().map(|o| {
                async move {
                    match *o {
                        Op::Read(lba, n) => q.read_all(lba * BS, vec![0u8; (n * BS) as usize]).await.0,
                        Op::Write(lba, n) => q.write_all(lba * BS, vec![0x5au8; (n * BS) as usize]).await.0,
                    }
                }
            });
            let results = block_on(q, join_all(futs));
            prop_assert_eq!(results.len(), ops.len());
            for r in &results {
                if let Err(e) = r {
                    // A random status maps to whatever kind its code means: typed, from the driver.
                    prop_assert!(e.error.origin() == Origin::Nvme, "an error not from the driver: {}", e);
                    prop_assert!(e.done % BS as usize == 0, "a partial block reported done: {}", e);
                }
            }
            // Honest again: the queue works and keeps what it is given.
            rig.model.set_hostile(None);
            let lba = seed % (BLOCKS - 8);
            let data: Vec<u8> = (0..8 * BS).map(|i| (i ^ seed) as u8).collect();
            let mut back = vec![0u8; data.len()];
            // A lie may have left a command in flight that the next poll resets: one retry.
            let rt = |q: &IoQueue<NvmeModel>, back: &mut Vec<u8>| {
                q.write_all_blocking(lba * BS, &data).and_then(|()| q.read_all_blocking(lba * BS, back))
            };
            if let Err(e) = rt(q, &mut back) {
                prop_assert!(e.error.kind() == ErrorKind::Fatal || e.error.kind() == ErrorKind::Timeout, "{}", e);
                rt(q, &mut back).map_err(|e| TestCaseError::fail(format!("after the retry: {e}")))?;
            }
            prop_assert!(back == data, "the honest round trip read other data");
            Ok(())
        })?;
    }
}

#[test]
fn hostility_is_seen_and_counted() {
    let r = rig();
    r.model.set_hostile(Some(Hostile { seed: 7, per_mille: 1000, lossy: false }));
    for i in 0..200u64 {
        let _ = r.q.read_all_blocking((i % 64) * BS, &mut [0u8; 512]);
    }
    let c = r.model.hostile_counts();
    assert!(
        c.forged > 0 && c.duplicated > 0 && c.stale > 0 && c.sq_heads > 0 && c.statuses > 0,
        "{c:?}"
    );
    assert!(r.q.stats().stray_completions > 0, "forged and duplicated entries are strays");
}
