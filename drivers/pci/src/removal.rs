//! Hot removal: vfio-pci's request to give a device back, and giving it back.
//!
//! When a device bound to vfio-pci is removed (hot unplug, `echo 1 > .../remove`, an unbind),
//! the kernel signals the device-request eventfd (`VFIO_PCI_REQ_IRQ_INDEX`) and then waits,
//! re-sending the request every 10 s, until every reference to the device file is gone: its
//! fds and its BAR mappings. A watcher thread per [`VfioPci`](crate::VfioPci) waits on that
//! eventfd. On the request it marks the device removed and kicks every MSI-X eventfd, so a
//! queue asleep on its interrupt wakes; the driver sees
//! [`PciDevice::is_removed`](crate::PciDevice::is_removed), fails what it holds with
//! `ErrorKind::Gone`, quiesces the device while its registers still work, and calls
//! [`PciDevice::release`](crate::PciDevice::release). A driver that does not (its thread is
//! busy elsewhere) is released for by the watcher after [`GRACE`].
//!
//! Releasing must not pull memory from under another thread that is in the middle of an MMIO
//! access or a `pread` on the device fd, so nothing is unmapped or closed:
//! 1. bus mastering is turned off and read back (the device issues no more DMA, so the memory
//!    it was given may be freed);
//! 2. each BAR mapping is replaced in place (`MAP_FIXED`, atomic) by private pages of all ones,
//!    so a register read from then on says "gone" and a write lands nowhere;
//! 3. each device fd is replaced in place (`dup3`, atomic) by `/dev/null`, so a `pread` reads
//!    nothing (all ones again) and the fd number stays valid until its owner closes it.
//!
//! After that this process holds no reference to the device and the kernel's unplug completes.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::address::PciAddress;
use crate::device::{COMMAND_BUS_MASTER, CONFIG_COMMAND};

/// How long the watcher waits for the driver to release a device the kernel asked for back,
/// before it releases it itself.
pub const GRACE: Duration = Duration::from_secs(1);

const PRESENT: u8 = 0;
const REQUESTED: u8 = 1;
const RELEASED: u8 = 2;

/// What releasing needs to reach: the BAR mappings and the device fds (all owned by the
/// `VfioPci`, which outlives every use: it joins the watcher before they go).
pub(crate) struct Targets {
    /// `(address, length)` of each mapped BAR.
    pub(crate) bars: Vec<(usize, usize)>,
    /// Every fd of this process that refers to the device file.
    pub(crate) fds: Vec<RawFd>,
    /// Where config space starts in the device fd.
    pub(crate) config_offset: u64,
}

/// A device's removal state, shared by the `VfioPci`, its drivers (through `is_removed`) and
/// the watcher thread.
pub(crate) struct Removal {
    addr: PciAddress,
    state: AtomicU8,
    /// Whether bus mastering read back off (or the function read all ones) when released.
    dma_stopped: AtomicBool,
    /// The MSI-X eventfds (the ends the kernel signals): kicked so sleeping queues look.
    msix: Arc<Mutex<Vec<EventFd>>>,
    /// Held while releasing, so the watcher and a driver thread release once between them.
    targets: Mutex<Targets>,
}

impl Removal {
    pub(crate) fn new(
        addr: PciAddress,
        msix: Arc<Mutex<Vec<EventFd>>>,
        targets: Targets,
    ) -> Arc<Removal> {
        Arc::new(Removal {
            addr,
            state: AtomicU8::new(PRESENT),
            dma_stopped: AtomicBool::new(false),
            msix,
            targets: Mutex::new(targets),
        })
    }

    /// Whether the kernel asked for the device back (or it was released already).
    #[inline]
    pub(crate) fn is_removed(&self) -> bool {
        self.state.load(Ordering::Acquire) != PRESENT
    }

    /// Whether the device was released (its BARs and fds are no longer the device's).
    pub(crate) fn is_released(&self) -> bool {
        self.state.load(Ordering::Acquire) == RELEASED
    }

    /// Whether the device was released with its DMA known stopped.
    pub(crate) fn dma_stopped(&self) -> bool {
        self.dma_stopped.load(Ordering::Acquire)
    }

    /// The kernel's request: mark the device removed and wake whoever sleeps on it.
    pub(crate) fn request(&self) {
        if self
            .state
            .compare_exchange(PRESENT, REQUESTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::warn!(
                addr = %self.addr,
                "the kernel asks for the device back (hot removal): failing its I/O and releasing it"
            );
        }
        self.kick();
    }

    /// Writes every MSI-X eventfd, so a queue asleep on its interrupt polls and sees the state.
    fn kick(&self) {
        for fd in self.msix.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            // A full counter (EAGAIN) is a wake-up already pending.
            let _ = fd.write(1);
        }
    }

    /// Gives the device back: bus mastering off, BARs and fds replaced (see the module
    /// documentation). Idempotent; also marks the device removed.
    pub(crate) fn release(&self) {
        let targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_released() {
            return;
        }
        self.state.store(REQUESTED, Ordering::Release);
        let stopped = targets.fds.first().is_some_and(|&fd| stop_bus_master(fd, &targets));
        self.dma_stopped.store(stopped, Ordering::Release);
        let ones = match all_ones_file(targets.bars.iter().map(|b| b.1).max().unwrap_or(0)) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!(addr = %self.addr, error = %e, "cannot make the all-ones pages");
                None
            }
        };
        for &(addr, len) in &targets.bars {
            let Some(ones) = &ones else { break };
            // SAFETY: `addr..addr + len` is a BAR mapping of this process, owned by the VfioPci
            // (alive: it joins the watcher and borrows for `release` calls). MAP_FIXED replaces
            // it atomically, so a concurrent volatile access reaches either the device or the
            // new pages, never a hole; no Rust reference points into MMIO (BarAccess only does
            // volatile reads and writes through the raw pointer). The new mapping has the old
            // one's length, so BarAccess's munmap still covers exactly it.
            let r = unsafe {
                libc::mmap(
                    addr as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_FIXED,
                    ones.as_raw_fd(),
                    0,
                )
            };
            if r == libc::MAP_FAILED {
                let e = std::io::Error::last_os_error();
                tracing::error!(addr = %self.addr, error = %e, "cannot replace a BAR mapping");
            }
        }
        match File::open("/dev/null") {
            Ok(null) => {
                for &fd in &targets.fds {
                    // SAFETY: `fd` is owned by the VfioPci (alive, as above) and stays open:
                    // dup3 atomically makes it refer to /dev/null instead of the device, so a
                    // thread in a pread on it reads EOF and no other file can take its number.
                    if unsafe { libc::dup3(null.as_raw_fd(), fd, libc::O_CLOEXEC) } < 0 {
                        let e = std::io::Error::last_os_error();
                        tracing::error!(addr = %self.addr, error = %e, "cannot close the device fd");
                    }
                }
            }
            Err(e) => tracing::error!(addr = %self.addr, error = %e, "cannot open /dev/null"),
        }
        self.state.store(RELEASED, Ordering::Release);
        tracing::warn!(addr = %self.addr, dma_stopped = stopped, "device released");
        self.kick();
    }
}

/// Bus mastering off through config space, then read back: `true` once the function issues no
/// more DMA (the bit reads back clear, or the function is gone and reads all ones).
fn stop_bus_master(fd: RawFd, t: &Targets) -> bool {
    let at = (t.config_offset + u64::from(CONFIG_COMMAND)) as libc::off_t;
    let read = || {
        let mut b = [0u8; 2];
        // SAFETY: reads 2 bytes into `b` from an fd of ours (see `release`).
        let n = unsafe { libc::pread(fd, b.as_mut_ptr().cast(), 2, at) };
        (n == 2).then(|| u16::from_le_bytes(b))
    };
    let Some(cmd) = read() else { return false };
    if cmd != u16::MAX && cmd & COMMAND_BUS_MASTER != 0 {
        let off = (cmd & !COMMAND_BUS_MASTER).to_le_bytes();
        // SAFETY: writes 2 bytes from `off` to an fd of ours.
        if unsafe { libc::pwrite(fd, off.as_ptr().cast(), 2, at) } != 2 {
            return false;
        }
    }
    read().is_some_and(|c| c == u16::MAX || c & COMMAND_BUS_MASTER == 0)
}

/// A memory file of `len` bytes of 0xff, for the BARs to read as all ones once released.
fn all_ones_file(len: usize) -> std::io::Result<File> {
    let name = c"mfio-pci-removed";
    // SAFETY: a NUL-terminated name; the kernel returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd nothing else owns.
    let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let page = vec![0xffu8; 1 << 16];
    let mut done = 0;
    while done < len {
        let n = page.len().min(len - done);
        std::os::unix::fs::FileExt::write_all_at(&f, &page[..n], done as u64)?;
        done += n;
    }
    Ok(f)
}

/// The thread that waits for the kernel's request.
pub(crate) struct Watcher {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Waits on `request` (registered with VFIO as the device-request eventfd) for `removal`.
    pub(crate) fn start(removal: Arc<Removal>, request: EventFd) -> std::io::Result<Watcher> {
        let stop = Arc::new(EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?);
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vfio-req {}", removal.addr))
            .spawn(move || watch(&removal, &request, &s))?;
        Ok(Watcher { stop, thread: Some(thread) })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(removal: &Removal, request: &EventFd, stop: &EventFd) {
    let mut asked: Option<Instant> = None;
    loop {
        let timeout = match asked {
            Some(at) if !removal.is_released() => {
                let left = GRACE.saturating_sub(at.elapsed()).as_millis().min(10_000);
                PollTimeout::from(left as u16)
            }
            _ => PollTimeout::NONE,
        };
        let mut fds = [
            PollFd::new(request.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(addr = %removal.addr, error = %e, "device-request watcher failed");
                return;
            }
            Ok(_) => {}
        }
        if fds[1].any().unwrap_or(false) {
            return;
        }
        if fds[0].any().unwrap_or(false) {
            // The kernel repeats its request every 10 s until the device is released.
            let _ = request.read();
            if asked.is_none() {
                asked = Some(Instant::now());
            }
            removal.request();
        }
        if asked.is_some_and(|at| at.elapsed() >= GRACE) && !removal.is_released() {
            tracing::warn!(addr = %removal.addr, "the driver did not release the device in time");
            removal.release();
        }
    }
}
