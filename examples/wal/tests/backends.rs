//! The same log on the other backends: the virtio-blk model and an image file; and a replay
//! callback that panics.

mod common;

use mfio_devices::{Device, File, Virtio};
use mfio_virtio::model::{ModelOptions, VirtioBlkModel};
use mfio_virtio::{Options, VirtioBlk};
use mfio_wal::{Config, Lsn, Wal};
use std::rc::Rc;
use std::sync::Arc;

/// Formats a log on `dev`, appends from 8 tasks, reopens it and checks every record.
fn round_trip<D: Device>(dev: Arc<D>) {
    let cfg = Config { max_batch: 32 << 10, ..Config::default() };
    let wal = Wal::format_blocking(dev.clone(), Rc::new(dev.open_queue(0).unwrap()), &cfg).unwrap();
    let mut want = Vec::new();
    let results = {
        let appends: Vec<_> = (0..8u32)
            .flat_map(|w| (0..10u32).map(move |n| common::payload(w, n, 100 + 37 * n as usize)))
            .collect();
        let futs = appends.iter().map(|p| wal.append(p));
        let r = mfio::block_on(&**wal.queue(), wal.run_with(futures::future::join_all(futs)));
        want.extend(appends);
        r
    };
    let mut acked: Vec<_> = results.into_iter().map(Result::unwrap).zip(want).collect();
    acked.sort();
    drop(wal);
    let mut got = Vec::new();
    let q = Rc::new(dev.open_queue(0).unwrap());
    Wal::open_blocking(dev, q, &cfg, |l, p| got.push((l, p.to_vec()))).unwrap();
    assert_eq!(got, acked);
}

#[test]
fn the_log_works_on_the_virtio_blk_model() {
    let model =
        VirtioBlkModel::new(ModelOptions { capacity_sectors: 4096, ..ModelOptions::default() });
    let dev = VirtioBlk::new(model, &Options::default()).expect("bring-up");
    round_trip(Arc::new(Virtio::new(Arc::new(dev), mfio_pci::CompletionMode::Poll)));
}

#[test]
fn the_log_works_on_an_image_file_with_and_without_o_direct() {
    for direct in [false, true] {
        let path =
            std::env::temp_dir().join(format!("mfio-wal-{}-{direct}.img", std::process::id()));
        std::fs::File::create(&path).unwrap().set_len(2 << 20).unwrap();
        let opts = mfio::backends::FileOptions { block_size: 4096, ..Default::default() };
        let file = File::new(&path, opts);
        // tmpfs has no O_DIRECT: skip only that half there, and say so.
        let dev = if direct { file.direct() } else { file };
        if direct && dev.open_queue(0).is_err() {
            eprintln!("O_DIRECT unsupported on {}: the direct half is skipped", path.display());
        } else {
            round_trip(Arc::new(dev));
        }
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn a_replay_callback_that_panics_leaves_the_log_as_it_was() {
    let model = mfio_nvme::model::NvmeModel::new(common::model_config(4096, 512));
    let dev = common::device(&model);
    let cfg = Config { max_batch: 16 << 10, ..Config::default() };
    let wal = common::format(&dev, &cfg);
    for n in 0..5 {
        wal.append_blocking(&common::payload(0, n, 200)).unwrap();
    }
    drop(wal);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let q = Rc::new(dev.open_queue(0).unwrap());
        Wal::open_blocking(dev.clone(), q, &cfg, |lsn, _| assert!(lsn < Lsn(3), "the engine fails"))
    }));
    assert!(r.is_err(), "the panic reached the caller");
    let (wal, got) = common::reopen(&dev, &cfg);
    assert_eq!(got.len(), 5, "nothing was truncated");
    assert_eq!(wal.append_blocking(b"next").unwrap(), Lsn(6));
}

/// The engine's shape on tokio: a current-thread runtime, the queue's driver and the
/// committer spawned beside the appending tasks (mfio-rt's thread-per-core model).
#[test]
fn appends_from_tokio_tasks_with_the_driver_and_committer_spawned() {
    let model = mfio_nvme::model::NvmeModel::new(common::model_config(8192, 512));
    let dev = common::device(&model);
    let cfg = Config { max_batch: 64 << 10, ..Config::default() };
    let wal = Rc::new(common::format(&dev, &cfg));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    let lsns = local.block_on(&rt, async {
        tokio::task::spawn_local(mfio_rt::tokio::drive(wal.queue().clone()));
        let committer = wal.clone();
        tokio::task::spawn_local(async move { committer.committer().await });
        let tasks: Vec<_> = (0..32u32)
            .map(|w| {
                let wal = wal.clone();
                tokio::task::spawn_local(async move {
                    let mut mine = Vec::new();
                    for n in 0..5 {
                        mine.push(wal.append(&common::payload(w, n, 300)).await.unwrap());
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let mut lsns = lsns;
    lsns.sort();
    assert_eq!(lsns, (1..=160).map(Lsn).collect::<Vec<_>>());
}
