//! kv: a small key-value store on redb on a block device, through mfio-redb.
//!
//!   cargo run -p mfio-redb --example kv -- TARGET format
//!   cargo run -p mfio-redb --example kv -- TARGET put KEY VALUE
//!   cargo run -p mfio-redb --example kv -- TARGET get KEY
//!   cargo run -p mfio-redb --example kv -- TARGET list
//!
//! TARGET is `file:PATH` (an image file or a block device, through the kernel) or `nvme:PCI`
//! (namespace 1 of an NVMe controller bound to vfio-pci, through this project's driver).
//! Every `put` is one durable transaction.

use mfio_devices::{Device, File, Nvme};
use mfio_nvme::{Controller, ControllerOptions};
use mfio_pci::{CompletionMode, VfioPci};
use mfio_redb::DeviceBackend;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::process::ExitCode;
use std::sync::Arc;

const TABLE: TableDefinition<&str, &str> = TableDefinition::new("kv");

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().and_then(|t| t.split_once(':')) {
        Some(("file", path)) => {
            let opts = mfio::backends::FileOptions { block_size: 512, ..Default::default() };
            run(Arc::new(File::new(path, opts)), &args[1..])
        }
        Some(("nvme", addr)) => open_nvme(addr).and_then(|d| run(d, &args[1..])),
        _ => Err("usage: kv file:PATH|nvme:PCI format|put KEY VALUE|get KEY|list".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv: {e}");
            ExitCode::FAILURE
        }
    }
}

fn open_nvme(addr: &str) -> Result<Arc<Nvme<VfioPci>>, String> {
    let pci = VfioPci::open_str(addr).map_err(|e| format!("{addr}: {e}"))?;
    let ctrl = Controller::new(pci, ControllerOptions::default()).map_err(|e| e.to_string())?;
    Ok(Arc::new(Nvme::new(ctrl, 1, CompletionMode::ADAPTIVE)))
}

fn run<D: Device>(dev: Arc<D>, cmd: &[String]) -> Result<(), String>
where
    D::Queue: Send,
    D::Buf: Send,
{
    let e = |e: &dyn std::fmt::Display| e.to_string();
    if cmd.first().map(String::as_str) == Some("format") {
        let b = DeviceBackend::format(&dev, 0, None).map_err(|x| e(&x))?;
        Database::builder().create_with_backend(b).map_err(|x| e(&x))?;
        return Ok(());
    }
    let b = DeviceBackend::open(&dev, 0, None).map_err(|x| e(&x))?;
    let db = Database::builder().create_with_backend(b).map_err(|x| e(&x))?;
    match cmd.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["put", k, v] => {
            let tx = db.begin_write().map_err(|x| e(&x))?;
            tx.open_table(TABLE).map_err(|x| e(&x))?.insert(k, v).map_err(|x| e(&x))?;
            tx.commit().map_err(|x| e(&x))
        }
        ["get", k] => {
            let tx = db.begin_read().map_err(|x| e(&x))?;
            let t = tx.open_table(TABLE).map_err(|x| e(&x))?;
            match t.get(k).map_err(|x| e(&x))? {
                Some(v) => {
                    println!("{}", v.value());
                    Ok(())
                }
                None => Err(format!("{k}: no such key")),
            }
        }
        ["list"] => {
            let tx = db.begin_read().map_err(|x| e(&x))?;
            let t = tx.open_table(TABLE).map_err(|x| e(&x))?;
            for entry in t.iter().map_err(|x| e(&x))? {
                let (k, v) = entry.map_err(|x| e(&x))?;
                println!("{}\t{}", k.value(), v.value());
            }
            Ok(())
        }
        _ => Err(format!("unknown command {cmd:?}")),
    }
}
