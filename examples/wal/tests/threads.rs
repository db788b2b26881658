//! The service thread: appenders on many threads, blocking and async, share one log and its
//! batches.

mod common;

use common::*;
use mfio_nvme::model::NvmeModel;
use mfio_wal::service::{Open, WalService};
use mfio_wal::{Config, Lsn, WalError};
use std::sync::{Arc, Mutex};

#[test]
fn threads_append_through_the_service_and_every_acknowledged_record_is_recovered() {
    let model = NvmeModel::new(model_config(8192, 512));
    let dev = device(&model);
    let cfg = Config { max_batch: 64 << 10, ..Config::default() };
    let (service, rec) =
        WalService::start(dev.clone(), 0, Open::Format(cfg.clone()), |_, _| {}).expect("start");
    assert_eq!(rec.next, Lsn(1));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let before = writes(&model);
    std::thread::scope(|s| {
        for w in 0..8u32 {
            let (h, acked) = (service.handle(), acked.clone());
            s.spawn(move || {
                for n in 0..25u32 {
                    let p = payload(w, n, 64 + (n as usize * 211) % 1500);
                    let lsn = if n % 2 == 0 {
                        h.append_blocking(&p)
                    } else {
                        futures::executor::block_on(h.append(p.clone()))
                    };
                    acked.lock().unwrap().push((lsn.expect("append"), p));
                }
            });
        }
    });
    let batches = writes(&model) - before;
    let h = service.handle();
    service.shutdown();
    assert_eq!(h.append_blocking(b"late"), Err(WalError::Closed));
    let mut acked = Arc::try_unwrap(acked).unwrap().into_inner().unwrap();
    acked.sort();
    assert_eq!(acked.len(), 200);
    assert!(batches < 200, "200 appends from 8 threads took {batches} writes");
    let (service, _) =
        WalService::start(dev.clone(), 0, Open::Recover(cfg.clone()), |_, _| {}).expect("restart");
    drop(service);
    let (_, got) = reopen(&dev, &cfg);
    assert_eq!(got, acked);
}

#[test]
fn a_service_that_cannot_open_its_log_says_why() {
    let model = NvmeModel::new(model_config(256, 512));
    let r = WalService::start(device(&model), 0, Open::Recover(Config::default()), |_, _| {});
    assert_eq!(r.err().map(|e| e.to_string()), Some(WalError::NotFormatted.to_string()));
}
