//! redb on the NVMe model: unaligned I/O against a reference, transactions that survive a
//! reopen, power cuts and device faults.

use mfio_devices::Nvme;
use mfio_nvme::model::{Injection, ModelConfig, NamespaceConfig, NvmeModel, Target};
use mfio_nvme::{CompletionMode, Controller, ControllerOptions};
use mfio_redb::DeviceBackend;
use proptest::prelude::*;
use redb::{Database, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition};
use std::sync::Arc;
use std::time::Duration;

type Dev = Nvme<NvmeModel>;
const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("kv");

fn model_config(blocks: u64, bs: u32) -> ModelConfig {
    ModelConfig { namespaces: vec![NamespaceConfig::new(blocks, bs)], ..ModelConfig::default() }
}

fn device(model: &NvmeModel) -> Arc<Dev> {
    let opts = ControllerOptions { io_timeout: Duration::from_millis(300), ..Default::default() };
    let ctrl = Controller::new(model.clone(), opts).expect("bring-up on the model");
    Arc::new(Nvme::new(ctrl, 1, CompletionMode::Poll))
}

fn value(k: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (k as usize * 131 + i) as u8).collect()
}

fn open_db(dev: &Arc<Dev>) -> Database {
    let backend = DeviceBackend::open(dev, 0, None).expect("backend");
    Database::builder().create_with_backend(backend).expect("database")
}

/// Inserts keys `keys` in one transaction.
fn insert(db: &Database, keys: std::ops::Range<u64>) -> Result<(), redb::Error> {
    let tx = db.begin_write()?;
    {
        let mut t = tx.open_table(TABLE)?;
        for k in keys {
            t.insert(k, value(k, 50 + (k as usize % 700)).as_slice())?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Every key in the table, checked against its value.
fn keys(db: &Database) -> Vec<u64> {
    let tx = db.begin_read().unwrap();
    let Ok(t) = tx.open_table(TABLE) else { return Vec::new() };
    t.iter()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            assert_eq!(
                v.value(),
                value(k.value(), 50 + (k.value() as usize % 700)),
                "key {}",
                k.value()
            );
            k.value()
        })
        .collect()
}

#[test]
fn transactions_survive_a_reopen_and_the_integrity_check_passes() {
    let model = NvmeModel::new(model_config(16384, 512));
    let dev = device(&model);
    let backend = DeviceBackend::format(&dev, 0, None).unwrap();
    let db = Database::builder().create_with_backend(backend).unwrap();
    insert(&db, 0..1000).unwrap();
    for k in 1000..1050 {
        insert(&db, k..k + 1).unwrap();
    }
    drop(db);
    let mut db = open_db(&dev);
    assert!(db.check_integrity().unwrap());
    assert_eq!(keys(&db), (0..1050).collect::<Vec<_>>());
    assert!(model.violations().is_empty(), "{:?}", model.violations());
}

#[test]
fn bad_regions_and_unformatted_devices_are_errors() {
    let model = NvmeModel::new(model_config(256, 512));
    let dev = device(&model);
    let e = DeviceBackend::open(&dev, 0, None).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    for region in [0..100, 512..512, 0..(1 << 30)] {
        let e = DeviceBackend::format(&dev, 0, Some(region.clone())).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{region:?}: {e}");
    }
    let b = DeviceBackend::format(&dev, 0, Some(4096..65536)).unwrap();
    assert_eq!(b.set_len(1 << 20).unwrap_err().kind(), std::io::ErrorKind::StorageFull);
    b.set_len(1000).unwrap();
    let mut out = [0u8; 10];
    assert_eq!(b.read(995, &mut out).unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
    assert_eq!(b.write(u64::MAX, &out).unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
}

#[test]
fn a_failed_commit_is_an_error_and_leaves_the_committed_transactions() {
    let model = NvmeModel::new(model_config(16384, 512));
    let dev = device(&model);
    let backend = DeviceBackend::format(&dev, 0, None).unwrap();
    let db = Database::builder().create_with_backend(backend).unwrap();
    insert(&db, 0..100).unwrap();
    model.inject(Injection::FatalOn(Target::io()));
    assert!(insert(&db, 100..200).is_err(), "the commit fails");
    drop(db);
    let mut db = open_db(&device(&model));
    assert!(db.check_integrity().unwrap());
    assert_eq!(keys(&db), (0..100).collect::<Vec<_>>());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 60, failure_persistence: None, ..ProptestConfig::default() })]

    /// Unaligned reads, writes and length changes agree with a byte vector.
    #[test]
    fn unaligned_io_matches_a_byte_vector(
        ops in prop::collection::vec((0u8..3, 0u64..40_000, 0usize..9000, any::<u8>()), 1..40),
        bs in prop::sample::select(vec![512u32, 4096]),
    ) {
        let model = NvmeModel::new(model_config(64 << 10 >> (bs.trailing_zeros() - 9), bs));
        let dev = device(&model);
        let b = DeviceBackend::format(&dev, 0, None).unwrap();
        let mut reference: Vec<u8> = Vec::new();
        for (op, at, n, fill) in ops {
            match op {
                0 => {
                    b.set_len(at).unwrap();
                    reference.resize(at as usize, 0);
                }
                1 if at as usize + n <= reference.len() => {
                    let data: Vec<u8> = (0..n).map(|i| fill.wrapping_add(i as u8)).collect();
                    b.write(at, &data).unwrap();
                    reference[at as usize..at as usize + n].copy_from_slice(&data);
                }
                _ if at as usize + n <= reference.len() => {
                    let mut out = vec![0u8; n];
                    b.read(at, &mut out).unwrap();
                    prop_assert_eq!(&out[..], &reference[at as usize..at as usize + n]);
                }
                _ => {}
            }
        }
        prop_assert_eq!(b.len().unwrap(), reference.len() as u64);
        drop(b);
        let b = DeviceBackend::open(&dev, 0, None).unwrap();
        let mut all = vec![0u8; reference.len()];
        b.read(0, &mut all).unwrap();
        prop_assert!(all == reference, "reopened");
    }

    /// A power cut from another thread, at a random moment of a run of commits: every commit
    /// that had returned is there after the restart, nothing else is, and the integrity check
    /// passes.
    #[test]
    fn committed_transactions_survive_a_power_cut(
        delay_us in 0u64..40_000,
        seed in any::<u64>(),
        keep in any::<u8>(),
    ) {
        let config = model_config(16384, 512);
        let model = NvmeModel::new(config.clone());
        let dev = device(&model);
        let db = Database::builder()
            .create_with_backend(DeviceBackend::format(&dev, 0, None).unwrap())
            .unwrap();
        let cutter = {
            let model = model.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_micros(delay_us));
                model.power_cut(|_, lba| {
                    ((lba ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8 <= keep
                })
            })
        };
        let mut committed = 0;
        while committed < 400 && insert(&db, committed * 10..committed * 10 + 10).is_ok() {
            committed += 1;
        }
        let media = cutter.join().unwrap();
        drop(db);
        let model = NvmeModel::with_media(config, media);
        let mut db = open_db(&device(&model));
        prop_assert!(db.check_integrity().unwrap());
        let got = keys(&db);
        // The commit the cut interrupted may have landed whole (its flush had completed), or not.
        let n = got.len() as u64;
        prop_assert!(n == committed * 10 || n == committed * 10 + 10, "{} keys, {} commits", n, committed);
        prop_assert_eq!(got, (0..n).collect::<Vec<_>>());
    }
}
