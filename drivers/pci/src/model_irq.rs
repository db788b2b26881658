//! MSI-X as an in-process device model raises it: one eventfd per vector, masking with a
//! pending bit, and a switch that loses messages (to test a driver's fallback).

use std::os::fd::AsFd;

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::{PciAddress, PciError};

/// A model's MSI-X vectors. The model calls [`raise`](Self::raise) where a device would send
/// a message; the driver sleeps on the eventfds [`enable`](Self::enable) gave it.
#[derive(Debug)]
pub struct ModelInterrupts {
    supported: u32,
    lines: Vec<EventFd>,
    masked: Vec<bool>,
    pending: Vec<bool>,
    raised: Vec<u64>,
    lose: bool,
    lost: u64,
}

impl ModelInterrupts {
    /// A function with `supported` MSI-X vectors (0: no MSI-X capability).
    pub fn new(supported: u32) -> Self {
        Self {
            supported,
            lines: Vec::new(),
            masked: Vec::new(),
            pending: Vec::new(),
            raised: Vec::new(),
            lose: false,
            lost: 0,
        }
    }

    /// The table size ([`PciDevice::msix_count`](crate::PciDevice::msix_count)).
    pub fn supported(&self) -> u32 {
        self.supported
    }

    /// Vectors routed to eventfds now (0 while MSI-X is off).
    pub fn enabled(&self) -> u32 {
        self.lines.len() as u32
    }

    /// [`PciDevice::enable_msix`](crate::PciDevice::enable_msix): routes vectors `0..count` to
    /// new eventfds (replacing any routed before, as VFIO does) and returns the driver's ends.
    pub fn enable(&mut self, addr: PciAddress, count: u32) -> Result<Vec<EventFd>, PciError> {
        if count == 0 || count > self.supported {
            return Err(PciError::Unsupported { addr, what: "that many MSI-X vectors" });
        }
        let err =
            |e: nix::Error| PciError::Vfio { addr, op: "model eventfd", detail: e.to_string() };
        let mk = || EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK);
        let lines: Vec<EventFd> =
            (0..count).map(|_| mk()).collect::<Result<_, _>>().map_err(err)?;
        let out =
            lines.iter().map(|l| dup_eventfd(l).map_err(err)).collect::<Result<Vec<_>, _>>()?;
        let n = count as usize;
        self.lines = lines;
        self.masked = vec![false; n];
        self.pending = vec![false; n];
        self.raised = vec![0; n];
        Ok(out)
    }

    /// [`PciDevice::disable_msix`](crate::PciDevice::disable_msix).
    pub fn disable(&mut self) {
        self.lines.clear();
        self.masked.clear();
        self.pending.clear();
    }

    /// Sends vector `v`'s message: signals its eventfd, or sets its pending bit while it is
    /// masked. Nothing while MSI-X is off or for a vector not routed; counted as lost (and not
    /// sent) while [`set_lose`](Self::set_lose) is on.
    pub fn raise(&mut self, v: u16) {
        let v = usize::from(v);
        let Some(line) = self.lines.get(v) else { return };
        if self.masked[v] {
            self.pending[v] = true;
        } else if self.lose {
            self.lost += 1;
        } else {
            // A full counter (2^64 - 2 unread interrupts) still leaves it readable.
            let _ = line.write(1);
            self.raised[v] += 1;
        }
    }

    /// Masks or unmasks vector `v` (the MSI-X table's per-vector mask); unmasking sends a
    /// message left pending meanwhile, as the PCI specification has it.
    pub fn set_masked(&mut self, v: u16, masked: bool) {
        let v = usize::from(v);
        if v >= self.lines.len() {
            return;
        }
        self.masked[v] = masked;
        if !masked && std::mem::take(&mut self.pending[v]) {
            self.raise(v as u16);
        }
    }

    /// Writes every routed vector's eventfd once, mask and lost messages aside: what the
    /// VFIO layer does on a hot-removal request, so queues asleep on their interrupts look.
    pub fn kick_all(&self) {
        for line in &self.lines {
            let _ = line.write(1);
        }
    }

    /// While `lose`, messages are dropped (a lost MSI), not sent.
    pub fn set_lose(&mut self, lose: bool) {
        self.lose = lose;
    }

    /// Messages sent on vector `v` so far.
    pub fn raised(&self, v: u16) -> u64 {
        self.raised.get(usize::from(v)).copied().unwrap_or(0)
    }

    /// Messages dropped by [`set_lose`](Self::set_lose).
    pub fn lost(&self) -> u64 {
        self.lost
    }
}

/// A second descriptor for an eventfd: both read and write the same counter (a queue's own
/// end of an interrupt the controller keeps too).
pub fn dup_eventfd(fd: &EventFd) -> Result<EventFd, nix::Error> {
    let owned = fd
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EBADF)))?;
    // SAFETY: `owned` is a fresh descriptor for an eventfd, owned by nobody else; the EventFd
    // takes it over (and closes it once).
    Ok(unsafe { EventFd::from_owned_fd(owned) })
}
