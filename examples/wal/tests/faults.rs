//! Injected faults on the NVMe model: a lost completion, a media error in the log area, a
//! fatal controller mid-batch. The appends fail with typed errors; after reopening, every
//! acknowledged record is there and no failed one is.

mod common;

use common::*;
use futures::future::join_all;
use mfio::ErrorKind;
use mfio_nvme::model::{Injection, NvmeModel, Target};
use mfio_nvme::spec::io::WRITE;
use mfio_wal::{Config, Lsn, WalError};
use std::cell::RefCell;

fn cfg() -> Config {
    Config { max_batch: 16 << 10, ..Config::default() }
}

/// Appends `n` one-block records; returns them as recovery should give them back.
fn prefix(wal: &mfio_wal::Wal<Dev>, n: u32) -> Vec<(Lsn, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let p = payload(0, i, 300);
            (wal.append_blocking(&p).expect("append"), p)
        })
        .collect()
}

#[test]
fn a_lost_completion_fails_the_batch_and_recovery_leaves_it_out() {
    let model = NvmeModel::new(model_config(4096, 512));
    let dev = device(&model);
    let wal = format(&dev, &cfg());
    let acked = prefix(&wal, 5);
    model.inject(Injection::LoseCompletion(Target::io_opcode(WRITE)));
    let e = wal.append_blocking(&payload(1, 0, 300)).unwrap_err();
    // The driver times the write out, and resets the controller when its abort is lost too.
    let timed_out = [ErrorKind::Timeout, ErrorKind::Aborted, ErrorKind::Fatal];
    assert!(matches!(e, WalError::Device(e) if timed_out.contains(&e.kind())), "{e:?}");
    let later = wal.append_blocking(&payload(1, 1, 300)).unwrap_err();
    assert!(matches!(later, WalError::Poisoned(_)), "{later:?}");
    drop(wal);
    // The write did reach the device (only its completion was lost): the superblock voids it.
    let (wal, got) = reopen(&device(&model), &cfg());
    assert_eq!(got, acked);
    assert!(wal.recovery().voided);
    assert_eq!(wal.append_blocking(b"again").unwrap(), Lsn(6));
    drop(wal);
    let (_, got) = reopen(&device(&model), &cfg());
    assert_eq!(got.len(), 6, "the void is cleared once recovery has zeroed the batch");
}

#[test]
fn a_media_error_in_the_log_area_fails_the_append_and_recovery_reports_unreadable_blocks() {
    let model = NvmeModel::new(model_config(4096, 512));
    let dev = device(&model);
    let wal = format(&dev, &cfg());
    let acked = prefix(&wal, 3);
    // Blocks 0 and 1 are the superblocks, 2..5 the three records: the next goes to block 5.
    model.inject(Injection::MediaError { nsid: 1, lba: 5 });
    let e = wal.append_blocking(&payload(1, 0, 300)).unwrap_err();
    assert!(matches!(e, WalError::Device(e) if e.kind() == ErrorKind::Device), "{e:?}");
    drop(wal);
    // Recovery reads the block too: a typed error, and nothing on the device changes.
    let q = std::rc::Rc::new(mfio_devices::Device::open_queue(&*dev, 0).unwrap());
    let r = mfio_wal::Wal::open_blocking(dev.clone(), q, &cfg(), |_, _| {});
    assert!(matches!(r, Err(WalError::Recovery { pos, .. }) if pos <= 5 * 512), "{:?}", r.err());
    // The block is remapped (the injection ends): the log opens without the failed record.
    model.clear_injections();
    let (wal, got) = reopen(&dev, &cfg());
    assert_eq!(got, acked);
    assert!(wal.recovery().voided);
}

#[test]
fn a_fatal_controller_mid_batch_fails_every_waiting_append_and_loses_no_acknowledged_one() {
    let model = NvmeModel::new(model_config(4096, 512));
    let dev = device(&model);
    let wal = format(&dev, &cfg());
    let acked = prefix(&wal, 10);
    model.inject(Injection::FatalOn(Target::io_opcode(WRITE)));
    let results = RefCell::new(Vec::new());
    let appenders = (1..9u32).map(|w| {
        let (wal, results) = (&wal, &results);
        async move {
            for n in 0..4 {
                let r = wal.append(&payload(w, n, 200 + 300 * w as usize)).await;
                results.borrow_mut().push(r);
            }
        }
    });
    mfio::block_on(&**wal.queue(), wal.run_with(join_all(appenders)));
    let results = results.into_inner();
    assert_eq!(results.len(), 32);
    assert!(results.iter().all(|r| r.is_err()), "{results:?}");
    let in_batch = results.iter().filter(|r| matches!(r, Err(WalError::Device(_)))).count();
    assert!(in_batch >= 1, "the batch's own appends see the device's error: {results:?}");
    drop(wal);
    drop(dev);
    // A new controller (a reset) on the same device: the batch never executed.
    let (wal, got) = reopen(&device(&model), &cfg());
    assert_eq!(got, acked);
    assert_eq!(wal.recovery().next, Lsn(11));
}

#[test]
fn a_dropped_append_leaves_its_record_in_the_log_and_the_others_unharmed() {
    use core::future::Future;
    let model = NvmeModel::new(model_config(4096, 512));
    let dev = device(&model);
    let wal = format(&dev, &cfg());
    {
        let mut dropped = Box::pin(wal.append(b"dropped"));
        let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
        assert!(dropped.as_mut().poll(&mut cx).is_pending(), "staged, not yet durable");
    }
    assert_eq!(wal.append_blocking(b"kept").unwrap(), Lsn(2));
    drop(wal);
    let (_, got) = reopen(&dev, &cfg());
    assert_eq!(got, [(Lsn(1), b"dropped".to_vec()), (Lsn(2), b"kept".to_vec())]);
}
