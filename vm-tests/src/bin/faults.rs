//! Faults from QEMU's own block layer, on QEMU's NVMe and virtio-blk devices through VFIO.
//!
//! Run by `scripts/vm-faults.sh`, which boots the guest with `scripts/vm-run.sh --blkdebug
//! CONF --nvme2-latency NS`: QEMU's blkdebug sits under NVMe namespace 1 and the virtio-blk
//! device and fails, with EIO, every read covering byte [`READ_BAD`], every write covering
//! [`WRITE_BAD`], and the first read covering [`READ_ONCE`]; namespace 2 delays every request
//! past the driver's I/O timeout. (Not a `guest-*` program: on devices without those rules
//! its checks would fail, so `scripts/vm-tests.sh` does not run it.)
//!
//! Both drivers must fail exactly the segments that hit a bad sector, with the device's own
//! status (NVMe: Unrecovered Read Error, Write Fault; virtio-blk: IOERR), complete every other
//! segment of the same request and batch with the right data, and keep the queue working.
//! NVMe's delayed namespace drives the timeout, abort and reset path on QEMU's controller:
//! the read fails within a bounded time and I/O on namespace 1 works after.
#![forbid(unsafe_code)]

use futures::future::join_all;
use mfio::{block_on, ErrorKind, Origin, PartialError, ReadAt, WriteAt};
use mfio_conformance::{Rng, TestDevice};
use mfio_nvme::{Controller, ControllerOptions};
use mfio_pci::VfioPci;
use mfio_virtio::{Options, VirtioBlk};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vm_tests::{ensure, R};

/// Reads covering this byte always fail (scripts/vm-faults.sh writes the rules from these).
const READ_BAD: u64 = 1 << 20;
/// Writes covering this byte always fail.
const WRITE_BAD: u64 = 2 << 20;
/// The first read covering this byte fails; the next succeeds.
const READ_ONCE: u64 = 3 << 20;
/// The size of every segment: each device splits I/O into commands of this size.
const SEG: usize = 4096;
/// Segments around each bad byte: 16 before it, the bad one, 15 after.
const SEGS: usize = 32;

/// NVMe status (SCT << 8 | SC) of a failed read and write: Unrecovered Read Error, Write Fault.
const NVME_READ_ERR: u16 = 0x281;
const NVME_WRITE_ERR: u16 = 0x280;
/// virtio-blk's VIRTIO_BLK_S_IOERR.
const VIRTIO_IOERR: u16 = 1;

fn main() -> ExitCode {
    vm_tests::run_main("faults", run)
}

fn run() -> R<()> {
    let nvme = std::env::var("MFIO_NVME_PCI").map_err(|_| "MFIO_NVME_PCI is not set")?;
    let virtio = std::env::var("MFIO_VIRTIO_PCI").map_err(|_| "MFIO_VIRTIO_PCI is not set")?;

    let opts = ControllerOptions {
        max_transfer: SEG,
        io_timeout: Duration::from_millis(300),
        ..ControllerOptions::default()
    };
    let pci = VfioPci::open_str(&nvme).map_err(|e| format!("open {nvme}: {e}"))?;
    let ctrl = Controller::new(pci, opts).map_err(|e| format!("NVMe bring-up: {e}"))?;
    let q = ctrl.io_queue(1).map_err(|e| e.to_string())?;
    let expect = Expect { origin: Origin::Nvme, read: NVME_READ_ERR, write: NVME_WRITE_ERR };
    media_errors(&q, "nvme", expect)?;
    let s = q.stats();
    ensure!(s.timeouts == 0 && ctrl.resets() == 0, "media errors caused a timeout or reset: {s:?}");
    timeout(&ctrl, &q)?;
    drop(q);
    drop(ctrl);

    let pci = VfioPci::open_str(&virtio).map_err(|e| format!("open {virtio}: {e}"))?;
    let opts = Options { max_transfer: SEG, ..Options::default() };
    let dev = VirtioBlk::new(pci, &opts).map_err(|e| format!("virtio-blk bring-up: {e}"))?;
    let q = dev.queue(0).map_err(|e| e.to_string())?;
    let expect = Expect { origin: Origin::Virtio, read: VIRTIO_IOERR, write: VIRTIO_IOERR };
    media_errors(&q, "virtio", expect)?;
    Ok(())
}

/// What a failed segment must report.
#[derive(Clone, Copy)]
struct Expect {
    origin: Origin,
    read: u16,
    write: u16,
}

impl Expect {
    fn check(&self, e: &PartialError, status: u16, what: &str) -> R<()> {
        let err = e.error;
        ensure!(
            err.kind() == ErrorKind::Device
                && err.origin() == self.origin
                && err.status() == status,
            "{what}: expected a device error with status {status:#x} from {:?}, got {e}",
            self.origin
        );
        Ok(())
    }
}

fn media_errors<Q: TestDevice>(q: &Q, label: &str, expect: Expect) -> R<()> {
    let mut rng = Rng::new(0x5eed ^ label.len() as u64);
    let span = SEG * SEGS;
    let before = |at: u64| at - (SEGS / 2 * SEG) as u64;

    // One read of 32 segments, the 17th on the bad sector: the 16 before it are the done
    // prefix, the 15 after it still land (partial success is per segment).
    let start = before(READ_BAD);
    let data = rng.bytes(span);
    q.write_all_blocking(start, &data)
        .map_err(|e| format!("{label}: write around the bad read: {e}"))?;
    let mut got = vec![0xa5u8; span];
    match q.read_all_blocking(start, &mut got) {
        Err(e) if e.done == SEGS / 2 * SEG => expect.check(&e, expect.read, label)?,
        r => return Err(format!("{label}: a read across the bad sector gave {r:?}")),
    }
    let bad = SEGS / 2 * SEG..(SEGS / 2 + 1) * SEG;
    ensure!(got[..bad.start] == data[..bad.start], "{label}: the prefix before the bad sector");
    ensure!(got[bad.end..] == data[bad.end..], "{label}: the segments after the bad sector");
    println!("{label}: one {span}-byte read: the bad segment failed, 31 of 32 correct");

    // The same as 32 reads in one batch: exactly the one on the bad sector fails.
    let futs = (0..SEGS).map(|i| q.read_all(start + (i * SEG) as u64, vec![0u8; SEG]));
    for (i, (r, buf)) in block_on(q, join_all(futs)).into_iter().enumerate() {
        match (i == SEGS / 2, r) {
            (true, Err(e)) => expect.check(&e, expect.read, label)?,
            (false, Ok(())) => {
                ensure!(buf[..] == data[i * SEG..(i + 1) * SEG], "{label}: read {i}")
            }
            (_, r) => return Err(format!("{label}: read {i} of the batch gave {r:?}")),
        }
    }
    println!("{label}: {SEGS} reads in one batch: only the bad one failed");

    // Writes: 32 in one batch, the one on the bad sector fails with the device's write status
    // and the others are on the media.
    let start = before(WRITE_BAD);
    let data = rng.bytes(span);
    let futs =
        (0..SEGS).map(|i| q.write_all(start + (i * SEG) as u64, data[i * SEG..][..SEG].to_vec()));
    for (i, (r, _)) in block_on(q, join_all(futs)).into_iter().enumerate() {
        match (i == SEGS / 2, r) {
            (true, Err(e)) => expect.check(&e, expect.write, label)?,
            (false, Ok(())) => {}
            (_, r) => return Err(format!("{label}: write {i} of the batch gave {r:?}")),
        }
    }
    let mut got = vec![0u8; bad.start];
    q.read_all_blocking(start, &mut got).map_err(|e| format!("{label}: read back: {e}"))?;
    ensure!(got[..] == data[..bad.start], "{label}: the writes before the bad sector");
    let mut got = vec![0u8; span - bad.end];
    q.read_all_blocking(start + bad.end as u64, &mut got)
        .map_err(|e| format!("{label}: read back: {e}"))?;
    ensure!(got[..] == data[bad.end..], "{label}: the writes after the bad sector");
    println!(
        "{label}: {SEGS} writes in one batch: only the bad one failed, the rest are on the media"
    );

    // A transient error: the first read fails, the retry reads what was written.
    let data = rng.bytes(SEG);
    q.write_all_blocking(READ_ONCE, &data).map_err(|e| format!("{label}: write: {e}"))?;
    let mut got = vec![0u8; SEG];
    match q.read_all_blocking(READ_ONCE, &mut got) {
        Err(e) => expect.check(&e, expect.read, label)?,
        Ok(()) => return Err(format!("{label}: the read the rule fails once succeeded")),
    }
    q.read_all_blocking(READ_ONCE, &mut got).map_err(|e| format!("{label}: the retry: {e}"))?;
    ensure!(got == data, "{label}: the retry read other data");

    // The queue is healthy: a round trip elsewhere.
    let at = 8 << 20;
    let data = rng.bytes(64 << 10);
    q.write_all_blocking(at, &data).map_err(|e| format!("{label}: write after the faults: {e}"))?;
    let mut got = vec![0u8; data.len()];
    q.read_all_blocking(at, &mut got)
        .map_err(|e| format!("{label}: read after the faults: {e}"))?;
    ensure!(got == data, "{label}: data after the faults");
    println!("{label}: a transient read error, then the retry and the queue work");
    Ok(())
}

/// Namespace 2 delays every request past the I/O timeout: the read fails as timed out in
/// bounded time (aborted, or ended by the reset that follows an abort the controller did not
/// carry out: QEMU's does not), and namespace 1's queue works afterwards.
fn timeout(ctrl: &std::sync::Arc<Controller<VfioPci>>, q1: &mfio_nvme::IoQueue<VfioPci>) -> R<()> {
    let q2 = ctrl.io_queue(2).map_err(|e| format!("namespace 2 (the delayed one): {e}"))?;
    let t0 = Instant::now();
    let mut buf = vec![0u8; SEG];
    let r = q2.read_all_blocking(0, &mut buf);
    let took = t0.elapsed();
    let e = match r {
        Err(e) => e,
        Ok(()) => return Err(format!("a read on the delayed namespace succeeded after {took:?}")),
    };
    ensure!(e.error.kind() == ErrorKind::Timeout, "the delayed read: expected a timeout, got {e}");
    ensure!(took < Duration::from_secs(10), "the delayed read took {took:?} to fail");
    let s = q2.stats();
    ensure!(s.timeouts >= 1, "no timeout counted: {s:?}");
    println!(
        "nvme: a delayed read failed after {took:?} ({}): {} timeout(s), {} reset(s)",
        e.error,
        s.timeouts,
        ctrl.resets()
    );
    drop(q2);
    // Namespace 1's queue slept through any reset: its first command must work.
    let data = Rng::new(9).bytes(SEG);
    let mut got = vec![0u8; SEG];
    q1.write_all_blocking(16 << 20, &data)
        .and_then(|()| q1.read_all_blocking(16 << 20, &mut got))
        .map_err(|e| format!("namespace 1 after the timeout: {e}"))?;
    ensure!(got == data, "namespace 1's data after the timeout");
    println!("nvme: namespace 1 works after the timeout");
    Ok(())
}
