//! bench-engines: the write-ahead log and redb on a device, as a guest benchmark
//! (scripts/bench-engines-vm.sh runs it on QEMU's NVMe through VFIO and through the kernel).
//!
//!   bench-engines wal  TARGET --appenders N [--time S] [--record BYTES] [--fua 0|1]
//!   bench-engines redb TARGET --keys-per-txn K [--time S]
//!
//! TARGET is `vfio:PCI-ADDRESS` (this project's NVMe driver, polled queues), `kernel:PATH`
//! (the WAL on a block device through the file backend, O_DIRECT writes and fdatasync), or
//! `file:PATH` (redb's own file backend on a file, for redb on the kernel's device). Prints one
//! JSON line: operations per second, latency percentiles, CPU time per operation.

use futures::future::join_all;
use mfio_devices::{Device, File, Nvme};
use mfio_nvme::{Controller, ControllerOptions};
use mfio_pci::{CompletionMode, VfioPci};
use mfio_redb::DeviceBackend;
use mfio_wal::{Config, Lsn, Wal, WalError};
use redb::{Database, TableDefinition};
use std::cell::RefCell;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("kv");

struct Args {
    engine: String,
    target: String,
    appenders: usize,
    keys_per_txn: u64,
    time: Duration,
    record: usize,
    /// Batches by FUA write (else write and flush).
    fua: bool,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let engine = it.next().ok_or("usage: bench-engines wal|redb TARGET [options]")?;
    let target = it.next().ok_or("a TARGET: vfio:ADDR, kernel:PATH or file:PATH")?;
    let mut a = Args {
        engine,
        target,
        appenders: 1,
        keys_per_txn: 1,
        time: Duration::from_secs(3),
        record: 4096,
        fua: true,
    };
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let n: u64 = v.parse().map_err(|_| format!("{flag} {v}: not a number"))?;
        match flag.as_str() {
            "--appenders" if n > 0 => a.appenders = n as usize,
            "--keys-per-txn" if n > 0 => a.keys_per_txn = n,
            "--time" if n > 0 => a.time = Duration::from_secs(n),
            "--record" if n >= 64 => a.record = n as usize,
            "--fua" if n <= 1 => a.fua = n == 1,
            _ => return Err(format!("{flag} {v}: unknown option or out of range")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    match parse().and_then(run) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-engines: {e}");
            ExitCode::FAILURE
        }
    }
}

fn nvme(addr: &str) -> Result<Arc<Nvme<VfioPci>>, String> {
    let pci = VfioPci::open_str(addr).map_err(|e| format!("open {addr}: {e}"))?;
    let ctrl = Controller::new(pci, ControllerOptions { io_queues: 1, ..Default::default() })
        .map_err(|e| format!("NVMe bring-up: {e}"))?;
    Ok(Arc::new(Nvme::new(ctrl, 1, CompletionMode::Poll)))
}

fn kernel(path: &str) -> Arc<File> {
    let opts = mfio::backends::FileOptions { block_size: 512, ..Default::default() };
    Arc::new(File::new(path, opts).direct())
}

fn run(a: Args) -> Result<String, String> {
    let (kind, what) = a.target.split_once(':').ok_or("TARGET is KIND:WHAT")?;
    let r = match (a.engine.as_str(), kind) {
        ("wal", "vfio") => wal(nvme(what)?, &a)?,
        ("wal", "kernel") => wal(kernel(what), &a)?,
        ("redb", "vfio") => {
            let backend =
                DeviceBackend::format(&nvme(what)?, 0, None).map_err(|e| e.to_string())?;
            redb_run(
                Database::builder().create_with_backend(backend).map_err(|e| e.to_string())?,
                &a,
            )?
        }
        ("redb", "file") => {
            let _ = std::fs::remove_file(what);
            redb_run(Database::create(what).map_err(|e| e.to_string())?, &a)?
        }
        _ => return Err(format!("{} on {kind}: no such benchmark", a.engine)),
    };
    Ok(r)
}

/// CPU time (user + system) of this process so far.
fn cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let t =
        |tv: nix::sys::time::TimeVal| Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000);
    t(u.user_time()) + t(u.system_time())
}

fn report(
    a: &Args,
    ops: u64,
    wall: Duration,
    cpu: Duration,
    mut lat: Vec<u32>,
    extra: &str,
) -> String {
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    format!(
        "{{\"engine\":\"{}\",\"target\":\"{}\",\"appenders\":{},\"keys_per_txn\":{},\"ops\":{ops},\"ops_per_s\":{:.0},\"p50_us\":{:.1},\"p99_us\":{:.1},\"cpu_us_per_op\":{:.2}{extra}}}",
        a.engine,
        a.target.split(':').next().unwrap_or(""),
        a.appenders,
        a.keys_per_txn,
        ops as f64 / wall.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        cpu.as_secs_f64() * 1e6 / ops.max(1) as f64,
    )
}

/// `appenders` tasks on one thread append records of `record` bytes (header included) for
/// `time`; the log is checkpointed whenever it fills.
fn wal<D: Device>(dev: Arc<D>, a: &Args) -> Result<String, String> {
    let q = Rc::new(dev.open_queue(0)?);
    let wal = Wal::format_blocking(dev.clone(), q.clone(), &Config::default())
        .map_err(|e| e.to_string())?;
    let payload = vec![0x5au8; a.record - 32];
    let lat = RefCell::new(Vec::new());
    let (t0, c0) = (Instant::now(), cpu());
    let end = t0 + a.time;
    let tasks = (0..a.appenders).map(|_| {
        let (wal, lat, payload) = (&wal, &lat, &payload);
        async move {
            while Instant::now() < end {
                let t = Instant::now();
                match wal.append(payload).await {
                    Ok(_) => lat.borrow_mut().push(t.elapsed().as_nanos() as u32),
                    Err(WalError::Full { .. }) => {
                        let upto = Lsn(wal.recovery().next.0.max(1));
                        let durable = lat.borrow().len() as u64 + upto.0;
                        wal.checkpoint(Lsn(durable.saturating_sub(a.appenders as u64 * 2).max(1)))
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        }
    });
    let results = mfio::block_on(&*q, wal.run_with(join_all(tasks)));
    let (wall, used) = (t0.elapsed(), cpu() - c0);
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    let lat = lat.into_inner();
    Ok(report(
        a,
        lat.len() as u64,
        wall,
        used,
        lat,
        &format!(",\"record\":{},\"fua\":{}", a.record, a.fua),
    ))
}

/// Transactions of `keys_per_txn` 100-byte values for `time`; ops are keys.
fn redb_run(db: Database, a: &Args) -> Result<String, String> {
    let value = vec![0xa5u8; 100];
    let mut lat = Vec::new();
    let (t0, c0) = (Instant::now(), cpu());
    let mut k = 0u64;
    while t0.elapsed() < a.time {
        let t = Instant::now();
        let tx = db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut t = tx.open_table(TABLE).map_err(|e| e.to_string())?;
            for _ in 0..a.keys_per_txn {
                t.insert(k, value.as_slice()).map_err(|e| e.to_string())?;
                k += 1;
            }
        }
        tx.commit().map_err(|e| e.to_string())?;
        lat.push(t.elapsed().as_nanos() as u32);
    }
    let (wall, used) = (t0.elapsed(), cpu() - c0);
    let commits = lat.len();
    Ok(report(
        a,
        k,
        wall,
        used,
        lat,
        &format!(",\"commits_per_s\":{:.0}", commits as f64 / wall.as_secs_f64()),
    ))
}
