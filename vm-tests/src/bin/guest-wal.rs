//! guest-wal: the write-ahead log and redb on QEMU's NVMe namespace and virtio-blk device
//! through VFIO, killed mid-run and recovered.
//!
//! With no arguments, for each device: a child process (this program, `write DEV`) formats a
//! log and a redb database side by side and appends from 16 tasks while a second thread commits
//! one redb key per transaction, printing each acknowledged record and committed key; after a
//! while it is killed with SIGKILL, and this process opens the device afresh (a new controller)
//! and checks that recovery finds every acknowledged record, in order, with no gap, that redb's
//! integrity check passes and every committed key is there.
//!
//! `write DEV FILE` and `verify DEV FILE` do the same across boots (scripts/vm-crash.sh: the
//! first boot's QEMU is killed mid-run, the second verifies on the same image), with the
//! acknowledgements in FILE.

use futures::future::join_all;
use mfio_devices::{Device, Nvme, Virtio};
use mfio_nvme::{Controller, ControllerOptions};
use mfio_pci::{CompletionMode, VfioPci};
use mfio_redb::DeviceBackend;
use mfio_wal::{Config, Lsn, Wal};
use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::{Command, ExitCode, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_tests::{ensure, R};

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("kv");
/// The log's region; the database takes the next 48 MiB.
const WAL_REGION: std::ops::Range<u64> = 0..(32 << 20);
const DB_REGION: std::ops::Range<u64> = (32 << 20)..(80 << 20);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => vm_tests::run_main("guest-wal", || {
            for dev in ["nvme", "virtio"] {
                sigkill(dev)?;
            }
            Ok(())
        }),
        ["write", dev] => vm_tests::run_main("guest-wal write", || write(dev, None)),
        ["write", dev, file] => vm_tests::run_main("guest-wal write", || write(dev, Some(file))),
        ["verify", dev, file] => vm_tests::run_main("guest-wal verify", || {
            verify(dev, &std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?)
        }),
        _ => vm_tests::run_main("guest-wal", || Err(format!("unknown arguments {args:?}"))),
    }
}

fn wal_config() -> Config {
    Config { region: Some(WAL_REGION), max_batch: 256 << 10, ..Config::default() }
}

fn payload(writer: u32, n: u64, len: usize) -> Vec<u8> {
    let mut p = format!("{writer} {n} ").into_bytes();
    p.extend((p.len()..len).map(|i| (i as u64 ^ n ^ (u64::from(writer) * 7)) as u8));
    p
}

/// The child: format both, then append and commit until killed, one line per
/// acknowledgement (to stdout, or appended to `file`).
fn write(dev: &str, file: Option<&str>) -> R<()> {
    match dev {
        "nvme" => write_on(nvme()?, file),
        "virtio" => write_on(virtio()?, file),
        _ => Err(format!("unknown device {dev}")),
    }
}

fn verify(dev: &str, acks: &str) -> R<()> {
    match dev {
        "nvme" => verify_on(nvme()?, acks),
        "virtio" => verify_on(virtio()?, acks),
        _ => Err(format!("unknown device {dev}")),
    }
}

fn nvme() -> R<Arc<Nvme<VfioPci>>> {
    let addr = std::env::var("MFIO_NVME_PCI").map_err(|_| "MFIO_NVME_PCI is not set")?;
    let pci = VfioPci::open_str(&addr).map_err(|e| format!("open {addr}: {e}"))?;
    let ctrl = Controller::new(pci, ControllerOptions { io_queues: 2, ..Default::default() })
        .map_err(|e| format!("NVMe bring-up: {e}"))?;
    Ok(Arc::new(Nvme::new(ctrl, 1, CompletionMode::ADAPTIVE)))
}

fn virtio() -> R<Arc<Virtio<VfioPci>>> {
    let addr = std::env::var("MFIO_VIRTIO_PCI").unwrap_or_else(|_| "0000:00:05.0".into());
    let pci = VfioPci::open_str(&addr).map_err(|e| format!("open {addr}: {e}"))?;
    let opts = mfio_virtio::Options {
        queues: 2,
        completion: CompletionMode::ADAPTIVE,
        ..Default::default()
    };
    let dev = mfio_virtio::VirtioBlk::new(pci, &opts).map_err(|e| format!("virtio-blk: {e}"))?;
    Ok(Arc::new(Virtio::new(Arc::new(dev), CompletionMode::ADAPTIVE)))
}

fn write_on<D: Device>(dev: Arc<D>, file: Option<&str>) -> R<()>
where
    D::Queue: Send,
    D::Buf: Send,
{
    let out: Arc<std::sync::Mutex<Box<dyn Write + Send>>> =
        Arc::new(std::sync::Mutex::new(match file {
            Some(f) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(f)
                    .map_err(|e| format!("{f}: {e}"))?,
            ),
            None => Box::new(std::io::stdout()),
        }));
    let say = {
        let out = out.clone();
        move |line: String| {
            let mut o = out.lock().unwrap();
            // One write per line, unbuffered: what was said is in the pipe or the file.
            let _ = o.write_all(line.as_bytes());
            let _ = o.flush();
        }
    };
    let backend =
        DeviceBackend::format(&dev, 1, Some(DB_REGION)).map_err(|e| format!("redb: {e}"))?;
    let db = Database::builder().create_with_backend(backend).map_err(|e| format!("redb: {e}"))?;
    let q = Rc::new(dev.open_queue(0)?);
    let wal =
        Wal::format_blocking(dev.clone(), q.clone(), &wal_config()).map_err(|e| format!("{e}"))?;
    say("ready\n".into());
    let committer = {
        let say = say.clone();
        std::thread::spawn(move || -> R<()> {
            for k in 0u64.. {
                let tx = db.begin_write().map_err(|e| e.to_string())?;
                {
                    let mut t = tx.open_table(TABLE).map_err(|e| e.to_string())?;
                    t.insert(k, payload(99, k, 100).as_slice()).map_err(|e| e.to_string())?;
                }
                tx.commit().map_err(|e| e.to_string())?;
                say(format!("redb {k}\n"));
            }
            Ok(())
        })
    };
    let tasks = (0..16u32).map(|w| {
        let (wal, say) = (&wal, say.clone());
        async move {
            for n in 0u64.. {
                let len = 64 + ((n as usize * 977 + w as usize * 131) % 8000);
                match wal.append(&payload(w, n, len)).await {
                    Ok(lsn) => say(format!("wal {} {w} {n} {len}\n", lsn.0)),
                    Err(mfio_wal::WalError::Full { .. }) => {
                        return Err("the log filled".to_string())
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        }
    });
    let results = mfio::block_on(&*q, wal.run_with(join_all(tasks)));
    results.into_iter().collect::<R<Vec<()>>>()?;
    committer.join().map_err(|_| "the committer panicked")?
}

fn verify_on<D: Device>(dev: Arc<D>, acks: &str) -> R<()>
where
    D::Queue: Send,
    D::Buf: Send,
{
    let mut acked = BTreeMap::new();
    let mut committed = Vec::new();
    for line in acks.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f[..] {
            ["wal", lsn, w, n, len] => {
                let p = |s: &str| s.parse::<u64>().map_err(|e| format!("{line}: {e}"));
                acked.insert(p(lsn)?, payload(p(w)? as u32, p(n)?, p(len)? as usize));
            }
            ["redb", k] => committed.push(k.parse::<u64>().map_err(|e| e.to_string())?),
            _ => {}
        }
    }
    ensure!(
        !acked.is_empty() && !committed.is_empty(),
        "the writer acknowledged nothing: {} records, {} keys",
        acked.len(),
        committed.len()
    );
    let q = Rc::new(dev.open_queue(0)?);
    let mut got = Vec::new();
    let t0 = Instant::now();
    let wal = Wal::open_blocking(dev.clone(), q, &wal_config(), |lsn: Lsn, p: &[u8]| {
        got.push((lsn.0, p.to_vec()))
    })
    .map_err(|e| format!("recovery: {e}"))?;
    let took = t0.elapsed();
    ensure!(
        got.first().map(|r| r.0) == Some(1),
        "recovery starts at {:?}",
        got.first().map(|r| r.0)
    );
    ensure!(got.windows(2).all(|w| w[1].0 == w[0].0 + 1), "a gap in the recovered sequence");
    let recovered: BTreeMap<u64, Vec<u8>> = got.into_iter().collect();
    for (lsn, p) in &acked {
        ensure!(
            recovered.get(lsn) == Some(p),
            "acknowledged lsn {lsn} is missing or differs after recovery"
        );
    }
    let last = *acked.keys().last().unwrap();
    println!(
        "wal: {} acknowledged (last lsn {last}), {} recovered (next {}), {} zeroed, recovery {took:?}",
        acked.len(),
        recovered.len(),
        wal.recovery().next.0,
        wal.recovery().zeroed
    );
    drop(wal);
    let backend =
        DeviceBackend::open(&dev, 1, Some(DB_REGION)).map_err(|e| format!("redb: {e}"))?;
    let mut db =
        Database::builder().create_with_backend(backend).map_err(|e| format!("redb open: {e}"))?;
    ensure!(db.check_integrity().map_err(|e| e.to_string())?, "redb's integrity check failed");
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let t = tx.open_table(TABLE).map_err(|e| e.to_string())?;
    for &k in &committed {
        let v = t.get(k).map_err(|e| e.to_string())?;
        ensure!(
            v.is_some_and(|v| v.value() == payload(99, k, 100)),
            "committed key {k} is missing"
        );
    }
    let n = t.len().map_err(|e| e.to_string())?;
    ensure!(
        n == committed.len() as u64 || n == committed.len() as u64 + 1,
        "{n} keys, {} committed",
        committed.len()
    );
    println!("redb: {} committed, {n} present, integrity ok", committed.len());
    Ok(())
}

/// Runs the writer as a child on `dev`, kills it with SIGKILL a while after it is ready, then
/// verifies what it acknowledged.
fn sigkill(dev: &str) -> R<()> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(me)
        .args(["write", dev])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn the writer: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut lines = String::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            lines.push_str(&line);
            lines.push('\n');
        }
        lines
    });
    // Let it run: the kill lands mid-batch and mid-commit.
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    let _ = Command::new("kill").args(["-9", &child.id().to_string()]).status();
    let status = child.wait().map_err(|e| e.to_string())?;
    let acks = reader.join().map_err(|_| "the reader panicked")?;
    ensure!(acks.starts_with("ready"), "the writer did not start: {status}: {acks}");
    ensure!(!status.success(), "the writer ended by itself: {acks}");
    println!("{dev}: writer killed after {:?}", t0.elapsed());
    match dev {
        "nvme" => verify_on(nvme()?, &acks),
        _ => verify_on(virtio()?, &acks),
    }
}
