//! The README's tokio example, compiled with the crate's examples so it stays true:
//! `cargo run -p mfio-rt --example readme -- 0000:00:04.0` reads 32 blocks from namespace 1
//! of a VFIO-bound NVMe controller from 32 tasks on one adaptive queue.

use mfio::ReadAt;
use mfio_nvme::{CompletionMode, Controller, ControllerOptions};
use mfio_pci::VfioPci;
use std::rc::Rc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).ok_or("usage: readme PCI-ADDRESS")?;
    let ctrl = Controller::new(VfioPci::open(addr.parse()?)?, ControllerOptions::default())?;
    let q = Rc::new(ctrl.io_queue_with(1, CompletionMode::ADAPTIVE)?);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    tokio::task::LocalSet::new().block_on(&rt, async {
        tokio::task::spawn_local(mfio_rt::tokio::drive(q.clone())); // sleeps on the MSI-X eventfd
        let readers: Vec<_> = (0..32u64)
            .map(|i| {
                let q = q.clone();
                tokio::task::spawn_local(async move { q.read_at(i * 4096, vec![0u8; 4096]).await })
            })
            .collect();
        for r in readers {
            let (res, _buf) = r.await?;
            res?;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    println!("32 reads from 32 tasks on one queue: ok");
    Ok(())
}
