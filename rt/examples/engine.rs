//! A multi-threaded engine on tokio, thread per core: each worker thread owns one I/O queue
//! and a current-thread runtime, and serves the reads sent to it over a channel with as many
//! tasks as it likes (`spawn_local`, the queue shared by `Rc`); clients anywhere (here, tasks
//! of a multi-threaded runtime) send requests and await the answers. No queue crosses a
//! thread, and no worker spins while it has nothing to do.
//!
//! `cargo run -p mfio-rt --example engine [PCI-ADDRESS]`: on the NVMe model by default, or
//! on a VFIO-bound controller (namespace 1).

use mfio::ReadAt;
use mfio_nvme::model::{CompletionMode as ModelCompletion, ModelConfig, NvmeModel};
use mfio_nvme::{CompletionMode, Controller, ControllerOptions};
use mfio_pci::PciDevice;
use std::rc::Rc;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// A read of one 4 KiB block, answered with its bytes (or the error's text).
pub struct Request {
    /// Which 4 KiB block.
    pub block: u64,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Vec<u8>, String>>,
}

/// Starts `workers` worker threads on `ctrl`'s namespace 1, each with its own interrupt-driven
/// queue; returns the senders to reach them.
pub fn start<D: PciDevice + Send + Sync + 'static>(
    ctrl: &Arc<Controller<D>>,
    workers: usize,
) -> Result<Vec<mpsc::Sender<Request>>, String> {
    let mut senders = Vec::new();
    for w in 0..workers {
        let (tx, mut rx) = mpsc::channel::<Request>(256);
        let ctrl = ctrl.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("engine-worker-{w}"))
            .spawn(move || {
                // The queue is made on the thread that owns it.
                let q = match ctrl.io_queue_with(1, CompletionMode::ADAPTIVE) {
                    Ok(q) => Rc::new(q),
                    Err(e) => return ready_tx.send(Err(e.to_string())).unwrap_or(()),
                };
                let _ = ready_tx.send(Ok(()));
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a worker runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    tokio::task::spawn_local(mfio_rt::tokio::drive(q.clone()));
                    while let Some(req) = rx.recv().await {
                        let q = q.clone();
                        tokio::task::spawn_local(async move {
                            let (r, buf) = q.read_at(req.block * 4096, vec![0u8; 4096]).await;
                            let _ = req.reply.send(r.map(|_| buf).map_err(|e| e.to_string()));
                        });
                    }
                });
            })
            .map_err(|e| e.to_string())?;
        ready_rx.recv().map_err(|e| e.to_string())??;
        senders.push(tx);
    }
    Ok(senders)
}

/// `clients` client tasks on a multi-threaded runtime each read `reads` blocks through the
/// workers (block `b` goes to worker `b % workers`); returns how many came back right.
pub fn run_clients(
    senders: &[mpsc::Sender<Request>],
    clients: u64,
    reads: u64,
    check: impl Fn(u64, &[u8]) -> bool + Send + Sync + 'static,
) -> u64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a client runtime");
    let check = Arc::new(check);
    rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..clients {
            let senders = senders.to_vec();
            let check = check.clone();
            tasks.push(tokio::spawn(async move {
                let mut good = 0;
                for i in 0..reads {
                    let block = (c * reads + i) % 1024;
                    let (reply, answer) = oneshot::channel();
                    let w = (block % senders.len() as u64) as usize;
                    if senders[w].send(Request { block, reply }).await.is_err() {
                        break;
                    }
                    if let Ok(Ok(data)) = answer.await {
                        good += u64::from(check(block, &data));
                    }
                }
                good
            }));
        }
        let mut good = 0;
        for t in tasks {
            good += t.await.unwrap_or(0);
        }
        good
    })
}

/// The model, each 4 KiB block filled with its number, answering 100 us after each doorbell.
pub fn model() -> NvmeModel {
    let model = NvmeModel::new(ModelConfig {
        completion: ModelCompletion::Timed { micros: 100 },
        ..ModelConfig::default()
    });
    for block in 0..1024u64 {
        model.write_blocks(1, block * 8, &[block as u8; 4096]);
    }
    model
}

#[allow(dead_code)] // The engine test includes this file for its functions.
fn main() -> Result<(), String> {
    let (clients, reads) = (32, 200);
    let good = match std::env::args().nth(1) {
        Some(addr) => {
            let dev = mfio_pci::VfioPci::open_str(&addr).map_err(|e| e.to_string())?;
            let ctrl =
                Controller::new(dev, ControllerOptions::default()).map_err(|e| e.to_string())?;
            let senders = start(&ctrl, 2)?;
            run_clients(&senders, clients, reads, |_, d| d.len() == 4096)
        }
        None => {
            let ctrl = Controller::new(model(), ControllerOptions::default())
                .map_err(|e| e.to_string())?;
            let senders = start(&ctrl, 2)?;
            run_clients(&senders, clients, reads, |b, d| d.iter().all(|&x| x == b as u8))
        }
    };
    println!("{good} of {} reads through 2 worker threads came back right", clients * reads);
    if good == clients * reads {
        Ok(())
    } else {
        Err("some reads failed".into())
    }
}
