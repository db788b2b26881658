//! Appends, group commit, recovery, laps and checkpoints on the NVMe model.

mod common;

use common::*;
use futures::future::join_all;
use mfio_nvme::model::NvmeModel;
use mfio_wal::{Config, Lsn, WalError};
use std::cell::RefCell;

#[test]
fn concurrent_appends_are_committed_in_batches_and_recovered_in_order() {
    let model = NvmeModel::new(model_config(8192, 512));
    let dev = device(&model);
    let cfg = Config { max_batch: 64 << 10, ..Config::default() };
    let wal = format(&dev, &cfg);
    let acked = RefCell::new(Vec::new());
    let appenders = (0..16u32).map(|w| {
        let (wal, acked) = (&wal, &acked);
        async move {
            for n in 0..20u32 {
                let p = payload(w, n, 100 + (w as usize * 37 + n as usize * 101) % 3000);
                let lsn = wal.append(&p).await.expect("append");
                acked.borrow_mut().push((lsn, p));
            }
        }
    });
    let before = writes(&model);
    mfio::block_on(&**wal.queue(), wal.run_with(join_all(appenders)));
    let batches = writes(&model) - before;
    let mut acked = acked.into_inner();
    acked.sort();
    assert_eq!(acked.len(), 320);
    assert!(acked.iter().enumerate().all(|(i, (lsn, _))| lsn.0 == i as u64 + 1), "lsns 1..=320");
    assert!(batches <= 60, "320 appends from 16 tasks took {batches} writes: no group commit");
    drop(wal);
    let (wal, got) = reopen(&dev, &cfg);
    assert_eq!(got, acked);
    assert_eq!(wal.recovery().next, Lsn(321));
    assert_eq!(wal.append_blocking(b"after").unwrap(), Lsn(321));
    assert!(model.violations().is_empty(), "{:?}", model.violations());
}

#[test]
fn the_log_wraps_in_laps_frees_space_at_checkpoints_and_says_when_it_is_full() {
    let model = NvmeModel::new(model_config(256, 512)); // 128 KiB: a 127 KiB area
    let dev = device(&model);
    let cfg = Config { max_batch: 8 << 10, ..Config::default() };
    let mut wal = format(&dev, &cfg);
    let mut appended: Vec<(Lsn, Vec<u8>)> = Vec::new();
    let (mut full, mut checkpoint) = (0, Lsn(1));
    for n in 0..1000u32 {
        let p = payload(0, n, 200 + (n as usize * 613) % 2500);
        match wal.append_blocking(&p) {
            Ok(lsn) => appended.push((lsn, p)),
            Err(WalError::Full { needed, free }) => {
                assert!(needed > free, "{needed} > {free}");
                full += 1;
                // The engine has applied all but the last 10 records.
                checkpoint = appended[appended.len() - 10].0;
                wal.checkpoint_blocking(checkpoint).unwrap();
            }
            Err(e) => panic!("{e}"),
        }
        if n % 97 == 0 {
            drop(wal);
            let (w, got) = reopen(&dev, &cfg);
            let expect: Vec<_> =
                appended.iter().filter(|(l, _)| *l >= checkpoint).cloned().collect();
            assert_eq!(got, expect, "after {n} appends");
            assert_eq!(w.recovery().next.0, appended.len() as u64 + 1);
            wal = w;
        }
    }
    assert!(full > 5, "the 127 KiB area filled only {full} times over 1000 records");
    assert!(matches!(wal.checkpoint_blocking(Lsn(5000)), Err(WalError::CheckpointAhead { .. })));
    assert!(matches!(
        wal.append_blocking(&vec![0; 8 << 10]),
        Err(WalError::RecordTooLarge { len: 8192, max: 8160 })
    ));
    assert!(model.violations().is_empty(), "{:?}", model.violations());
}

#[test]
fn bad_configurations_and_devices_without_a_log_are_typed_errors() {
    let model = NvmeModel::new(model_config(256, 512));
    let dev = device(&model);
    let q = || std::rc::Rc::new(mfio_devices::Device::open_queue(&*dev, 0).unwrap());
    let open = |cfg: &Config| mfio_wal::Wal::open_blocking(dev.clone(), q(), cfg, |_, _| {});
    assert_eq!(open(&Config::default()).err(), Some(WalError::NotFormatted));
    let bad = [
        Config { max_batch: 1000, ..Config::default() },
        Config { max_batch: 0, ..Config::default() },
        Config { max_batch: 64 << 10, ..Config::default() },
        Config { region: Some(0..1000), max_batch: 512, fua: true },
        Config { region: Some(512..512), max_batch: 512, fua: true },
        Config { region: Some(0..(1 << 30)), max_batch: 512, fua: true },
    ];
    for cfg in bad {
        let r = mfio_wal::Wal::format_blocking(dev.clone(), q(), &cfg);
        assert!(matches!(r, Err(WalError::Config(_))), "{cfg:?}: {:?}", r.err());
    }
    let cfg = Config { region: Some(4096..65536), max_batch: 4096, fua: true };
    let wal = format(&dev, &cfg);
    wal.append_blocking(b"x").unwrap();
    drop(wal);
    let other = Config { region: Some(4096..32768), ..cfg.clone() };
    assert!(matches!(open(&other), Err(WalError::Mismatch(_))));
    let (_, got) = reopen(&dev, &cfg);
    assert_eq!(got, [(Lsn(1), b"x".to_vec())]);
}
