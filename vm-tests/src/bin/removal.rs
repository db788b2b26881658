//! Hot removal on QEMU's NVMe and virtio-blk through VFIO, mid-I/O.
//!
//! Run by `scripts/vm-removal.sh` (not a `guest-*` program: it takes the devices away, and the
//! QMP half needs the host to drive QEMU's monitor). For each device: a 1 MiB pattern is
//! written, two threads keep 32 reads each in flight, and the device is removed:
//! - `removal sysfs`: by `echo 1 > /sys/bus/pci/devices/ADDR/remove` from this program (the
//!   write returns once vfio-pci has the device back, so it also times the release), then
//!   `echo 1 > /sys/bus/pci/rescan` brings it back;
//! - `removal qmp`: the devices sit behind `pcie-root-port`s; this program writes
//!   `$MFIO_VM_OUT/ready-LABEL` and the host answers with QMP `device_del` (the guest's pciehp
//!   unplugs the slot), then, once this program writes `gone-LABEL`, with `device_add`.
//!
//! Each time: every read resolves, the in-flight ones with `Gone` and none with another error;
//! a read and a write after the removal fail with `Gone` at once; the controller and the
//! `VfioPci` drop without a hang or a panic; the kernel relays its request to us (vfio-pci logs
//! "Relaying device request") and never reports a task "blocked until" the device is released;
//! the device that comes back is bound to vfio-pci again and a new controller reads the pattern.
#![forbid(unsafe_code)]

use mfio::{block_on, ReadAt, WriteAt};
use mfio_conformance::removal::{fails_gone_at_once, read_until_gone, Tally};
use mfio_conformance::Rng;
use mfio_nvme::{Controller, ControllerOptions};
use mfio_pci::{CompletionMode, PciAddress, Sysfs, VfioPci};
use mfio_virtio::{Options, VirtioBlk};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vm_tests::{ensure, R};

/// Where the pattern goes, and how long it is.
const PATTERN_AT: u64 = 4 << 20;
const PATTERN_LEN: usize = 1 << 20;
/// Reads each worker keeps in flight, and the workers.
const DEPTH: usize = 32;
const WORKERS: usize = 2;
/// Worker 0 polls, worker 1 sleeps on its MSI-X vector (woken by the removal's kick).
const MODES: [CompletionMode; WORKERS] = [CompletionMode::Poll, CompletionMode::Interrupt];
/// How long a worker may wait for the removal (pciehp waits 5 s after QMP's attention press).
const WORKER_LIMIT: Duration = Duration::from_secs(40);

fn main() -> ExitCode {
    vm_tests::run_main("removal", run)
}

/// How a device is taken away and brought back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Sysfs,
    Qmp,
}

fn run() -> R<()> {
    let via = match std::env::args().nth(1).as_deref() {
        Some("sysfs") => Via::Sysfs,
        Some("qmp") => Via::Qmp,
        other => return Err(format!("usage: removal sysfs|qmp (got {other:?})")),
    };
    let (nvme, virtio) = match via {
        Via::Sysfs => ("MFIO_NVME_PCI", "MFIO_VIRTIO_PCI"),
        Via::Qmp => ("MFIO_HOTPLUG_NVME_PCI", "MFIO_HOTPLUG_VIRTIO_PCI"),
    };
    let addr = |var: &str| -> R<PciAddress> {
        let v = std::env::var(var).map_err(|_| format!("{var} is not set"))?;
        v.parse().map_err(|e| format!("{var}={v}: {e}"))
    };
    let kmsg = KernelLog::open()?;
    let nvme = addr(nvme)?;
    let virtio = addr(virtio)?;
    if via == Via::Qmp {
        for a in [nvme, virtio] {
            Sysfs::system().bind_vfio(a).map_err(|e| format!("bind {a}: {e}"))?;
        }
    }
    remove_nvme(nvme, via)?;
    remove_virtio(virtio, via)?;
    let log = kmsg.read();
    let relayed = log.iter().filter(|l| l.contains("Relaying device request")).count();
    ensure!(relayed >= 2, "vfio-pci relayed {relayed} device requests, expected one per device");
    if let Some(l) = log.iter().find(|l| l.contains("blocked until")) {
        return Err(format!("the kernel waited for a release: {l}"));
    }
    println!("removal: vfio-pci relayed {relayed} device requests; no task blocked");
    Ok(())
}

/// NVMe: queues on two threads, removed under them, then a new controller on the device
/// that comes back.
fn remove_nvme(addr: PciAddress, via: Via) -> R<()> {
    let label = "nvme";
    let opts = || ControllerOptions { io_queues: WORKERS as u16, ..ControllerOptions::default() };
    let pci = VfioPci::open(addr).map_err(|e| format!("open {addr}: {e}"))?;
    let ctrl = Controller::new(pci, opts()).map_err(|e| format!("NVMe bring-up: {e}"))?;
    let data = pattern(1);
    {
        let q = ctrl.io_queue(1).map_err(|e| format!("{label}: queue: {e}"))?;
        write_pattern(&q, &data, label)?;
    }
    let (ready, started) = std::sync::mpsc::channel();
    let workers = (0..WORKERS)
        .map(|w| {
            let (ctrl, ready) = (ctrl.clone(), ready.clone());
            std::thread::spawn(move || -> R<Tally> {
                let q = ctrl.io_queue_with(1, MODES[w]);
                let _ = ready.send(());
                let q = q.map_err(|e| format!("{label}: worker {w}'s queue: {e}"))?;
                let t = read_until_gone(&q, DEPTH, 4096, 64 << 20, WORKER_LIMIT, w as u64);
                fails_gone_at_once(&q, Duration::from_millis(100))?;
                Ok(t)
            })
        })
        .collect();
    // Every worker has its queue before the device goes.
    for _ in 0..WORKERS {
        let _ = started.recv();
    }
    take_away(addr, via, label, workers)?;
    let t = Instant::now();
    drop(ctrl);
    println!("removal: {label}: the controller and VfioPci dropped in {:?}", t.elapsed());
    bring_back(addr, via, label)?;
    let pci = VfioPci::open(addr).map_err(|e| format!("reopen {addr}: {e}"))?;
    let ctrl = Controller::new(pci, opts()).map_err(|e| format!("NVMe bring-up again: {e}"))?;
    let q = ctrl.io_queue(1).map_err(|e| format!("{label}: queue after re-adding: {e}"))?;
    check_pattern(&q, &data, label)
}

/// virtio-blk: the same, one virtqueue per thread.
fn remove_virtio(addr: PciAddress, via: Via) -> R<()> {
    let label = "virtio-blk";
    // Brought up interrupt-driven, so every queue has its vector; worker 0 polls all the same.
    let opts = Options {
        queues: WORKERS as u16,
        completion: CompletionMode::Interrupt,
        ..Options::default()
    };
    let pci = VfioPci::open(addr).map_err(|e| format!("open {addr}: {e}"))?;
    let dev = std::sync::Arc::new(
        VirtioBlk::new(pci, &opts).map_err(|e| format!("virtio-blk bring-up: {e}"))?,
    );
    let data = pattern(2);
    {
        let q = dev.queue(0).map_err(|e| format!("{label}: queue: {e}"))?;
        write_pattern(&q, &data, label)?;
    }
    let (ready, started) = std::sync::mpsc::channel();
    let workers = (0..WORKERS)
        .map(|w| {
            let (dev, ready) = (dev.clone(), ready.clone());
            std::thread::spawn(move || -> R<Tally> {
                let q = dev.queue_with(w as u16, MODES[w]);
                let _ = ready.send(());
                let q = q.map_err(|e| format!("{label}: worker {w}'s queue: {e}"))?;
                let t = read_until_gone(&q, DEPTH, 4096, 64 << 20, WORKER_LIMIT, w as u64);
                fails_gone_at_once(&q, Duration::from_millis(100))?;
                Ok(t)
            })
        })
        .collect();
    // Every worker has its queue before the device goes.
    for _ in 0..WORKERS {
        let _ = started.recv();
    }
    take_away(addr, via, label, workers)?;
    let t = Instant::now();
    drop(dev);
    println!("removal: {label}: the device and VfioPci dropped in {:?}", t.elapsed());
    bring_back(addr, via, label)?;
    let pci = VfioPci::open(addr).map_err(|e| format!("reopen {addr}: {e}"))?;
    let dev = VirtioBlk::new(pci, &opts).map_err(|e| format!("virtio-blk bring-up again: {e}"))?;
    let q = dev.queue(0).map_err(|e| format!("{label}: queue after re-adding: {e}"))?;
    check_pattern(&q, &data, label)
}

fn pattern(seed: u64) -> Vec<u8> {
    Rng::new(seed).bytes(PATTERN_LEN)
}

fn write_pattern<Q: ReadAt + WriteAt + mfio::IoBackend>(q: &Q, data: &[u8], label: &str) -> R<()> {
    let (r, _) = block_on(q, q.write_all(PATTERN_AT, data.to_vec()));
    r.map_err(|e| format!("{label}: writing the pattern: {e}"))?;
    check_pattern(q, data, label)
}

fn check_pattern<Q: ReadAt + mfio::IoBackend>(q: &Q, data: &[u8], label: &str) -> R<()> {
    let (r, back) = block_on(q, q.read_all(PATTERN_AT, vec![0u8; data.len()]));
    r.map_err(|e| format!("{label}: reading the pattern: {e}"))?;
    ensure!(back == data, "{label}: the pattern read back differs");
    Ok(())
}

/// Removes the device while the workers read, and checks what they saw.
fn take_away(addr: PciAddress, via: Via, label: &str, workers: Vec<JoinHandle<R<Tally>>>) -> R<()> {
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    match via {
        Via::Sysfs => {
            let remove = Sysfs::system().device_dir(addr).join("remove");
            std::fs::write(&remove, "1").map_err(|e| format!("{}: {e}", remove.display()))?;
            println!("removal: {label}: sysfs remove returned after {:?}", t0.elapsed());
        }
        Via::Qmp => signal(&format!("ready-{label}"))?,
    }
    let mut total = Tally::default();
    for (i, w) in workers.into_iter().enumerate() {
        let t = w.join().map_err(|_| format!("{label}: worker {i} panicked"))??;
        ensure!(t.unfinished == 0, "{label}: worker {i} never saw the removal: {t:?}");
        ensure!(t.gone == DEPTH as u64, "{label}: worker {i}: not every read ended Gone: {t:?}");
        ensure!(t.other.is_empty(), "{label}: worker {i}: errors other than Gone: {t:?}");
        ensure!(t.ok > 0, "{label}: worker {i}: no read completed before the removal: {t:?}");
        total.ok += t.ok;
        total.gone += t.gone;
        total.drain = total.drain.max(t.drain);
    }
    println!(
        "removal: {label}: {} reads done, {} ended Gone, last one {:?} after the first, {:?} \
         after the removal began",
        total.ok,
        total.gone,
        total.drain,
        t0.elapsed()
    );
    Ok(())
}

/// Brings the device back and binds it to vfio-pci.
fn bring_back(addr: PciAddress, via: Via, label: &str) -> R<()> {
    let sysfs = Sysfs::system();
    let dir = sysfs.device_dir(addr);
    let t0 = Instant::now();
    match via {
        Via::Sysfs => std::fs::write("/sys/bus/pci/rescan", "1")
            .map_err(|e| format!("/sys/bus/pci/rescan: {e}"))?,
        Via::Qmp => signal(&format!("gone-{label}"))?,
    }
    while !dir.join("config").exists() {
        ensure!(t0.elapsed() < Duration::from_secs(30), "{label}: {addr} did not come back");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The kernel's own driver may take it first: bind_vfio unbinds it.
    let mut last = String::new();
    while t0.elapsed() < Duration::from_secs(30) {
        match sysfs.bind_vfio(addr) {
            Ok(_) => {
                println!("removal: {label}: back at {addr} after {:?}", t0.elapsed());
                return Ok(());
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{label}: cannot bind {addr} to vfio-pci again: {last}"))
}

/// Tells the host (which watches `$MFIO_VM_OUT`) that `what` happened.
fn signal(what: &str) -> R<()> {
    let out = std::env::var("MFIO_VM_OUT").map_err(|_| "MFIO_VM_OUT is not set")?;
    let path: PathBuf = Path::new(&out).join(what);
    std::fs::write(&path, b"1").map_err(|e| format!("{}: {e}", path.display()))?;
    println!("removal: signalled {what}");
    Ok(())
}

/// The kernel log from the moment this was opened (`/dev/kmsg`, read without blocking).
struct KernelLog {
    file: std::fs::File,
}

impl KernelLog {
    fn open() -> R<KernelLog> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open("/dev/kmsg")
            .map_err(|e| format!("/dev/kmsg: {e}"))?;
        // Only what is logged from now on.
        file.seek(SeekFrom::End(0)).map_err(|e| format!("/dev/kmsg: {e}"))?;
        Ok(KernelLog { file })
    }

    /// Each record's message.
    fn read(mut self) -> Vec<String> {
        use std::io::Read;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    let msg = rec.split_once(';').map_or(&*rec, |(_, m)| m);
                    out.push(msg.trim_end().to_string());
                }
                // EPIPE: records were overwritten meanwhile; the next read goes on.
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EPIPE as i32) => continue,
                Err(_) => break,
            }
        }
        out
    }
}
