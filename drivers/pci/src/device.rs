//! The `PciDevice` trait: everything a driver needs from a PCI function.

use std::sync::Arc;

use mfio_dma::DmaSpace;
use nix::sys::eventfd::EventFd;

use crate::address::PciAddress;
use crate::error::PciError;

/// Offset of the command register in config space.
pub const CONFIG_COMMAND: u16 = 0x04;
/// Command register: memory space enable.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus master enable (the device may DMA).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: INTx disable.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Offset of the status register.
pub const CONFIG_STATUS: u16 = 0x06;
/// Status register: the capability list is valid.
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Offset of the capabilities pointer.
pub const CONFIG_CAP_PTR: u16 = 0x34;
/// Capability ID of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Capability ID of vendor-specific capabilities (virtio-pci uses them).
pub const CAP_ID_VENDOR: u8 = 0x09;

/// A PCI function as a driver sees it: BAR MMIO, config space, bus mastering, interrupts and
/// the DMA space it reaches memory through.
///
/// Implemented by [`crate::VfioPci`] for real devices and by in-process device models, so one
/// driver, generic over `D: PciDevice`, runs against both. BAR accesses go through methods
/// (never raw pointers) so a model sees every register access, doorbells included.
///
/// MMIO accessors take a BAR index (0..=5) and a byte offset. They cannot fail, like a CPU load
/// or store: an access outside the BAR or misaligned is a driver bug and panics (check
/// [`bar_len`](Self::bar_len) at bring-up); a device that has gone away reads as all ones.
pub trait PciDevice {
    /// The function's address (models make one up).
    fn address(&self) -> PciAddress;

    /// Length of BAR `bar`, or `None` when it does not exist (or is not memory).
    fn bar_len(&self, bar: u8) -> Option<u64>;

    /// Volatile 8-bit MMIO read.
    fn read8(&self, bar: u8, offset: u64) -> u8;
    /// Volatile 8-bit MMIO write.
    fn write8(&self, bar: u8, offset: u64, value: u8);
    /// Volatile 16-bit MMIO read (little endian, like PCI).
    fn read16(&self, bar: u8, offset: u64) -> u16;
    /// Volatile 16-bit MMIO write.
    fn write16(&self, bar: u8, offset: u64, value: u16);
    /// Volatile 32-bit MMIO read.
    fn read32(&self, bar: u8, offset: u64) -> u32;
    /// Volatile 32-bit MMIO write (a doorbell, for instance).
    fn write32(&self, bar: u8, offset: u64, value: u32);
    /// Volatile 64-bit MMIO read.
    fn read64(&self, bar: u8, offset: u64) -> u64;
    /// Volatile 64-bit MMIO write.
    fn write64(&self, bar: u8, offset: u64, value: u64);

    /// Read `buf.len()` bytes (1, 2 or 4, naturally aligned) of config space at `offset`.
    fn config_read(&self, offset: u16, buf: &mut [u8]) -> Result<(), PciError>;
    /// Write `buf` (1, 2 or 4 bytes, naturally aligned) to config space at `offset`.
    fn config_write(&self, offset: u16, buf: &[u8]) -> Result<(), PciError>;

    /// The DMA space the device reaches memory through (its mapper and translation table).
    fn dma(&self) -> &Arc<DmaSpace>;

    /// Reset the function, where it supports a reset.
    fn reset(&self) -> Result<(), PciError> {
        Err(PciError::Unsupported { addr: self.address(), what: "function reset" })
    }

    /// Number of MSI-X vectors the function has (0 if none).
    fn msix_count(&self) -> u32 {
        0
    }

    /// Route MSI-X vectors `0..count` to new eventfds. Optional: drivers poll.
    fn enable_msix(&self, count: u32) -> Result<Vec<EventFd>, PciError> {
        let _ = count;
        Err(PciError::Unsupported { addr: self.address(), what: "MSI-X" })
    }

    /// Stop MSI-X delivery.
    fn disable_msix(&self) -> Result<(), PciError> {
        Ok(())
    }

    /// 8-bit config read.
    fn config_read8(&self, offset: u16) -> Result<u8, PciError> {
        let mut b = [0; 1];
        self.config_read(offset, &mut b)?;
        Ok(b[0])
    }
    /// 16-bit config read.
    fn config_read16(&self, offset: u16) -> Result<u16, PciError> {
        let mut b = [0; 2];
        self.config_read(offset, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    /// 32-bit config read.
    fn config_read32(&self, offset: u16) -> Result<u32, PciError> {
        let mut b = [0; 4];
        self.config_read(offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    /// 8-bit config write.
    fn config_write8(&self, offset: u16, v: u8) -> Result<(), PciError> {
        self.config_write(offset, &[v])
    }
    /// 16-bit config write.
    fn config_write16(&self, offset: u16, v: u16) -> Result<(), PciError> {
        self.config_write(offset, &v.to_le_bytes())
    }
    /// 32-bit config write.
    fn config_write32(&self, offset: u16, v: u32) -> Result<(), PciError> {
        self.config_write(offset, &v.to_le_bytes())
    }

    /// Turn bus mastering (and memory space decoding) on or off. Nothing may DMA without it.
    fn set_bus_master(&self, on: bool) -> Result<(), PciError> {
        let cmd = self.config_read16(CONFIG_COMMAND)?;
        let new =
            if on { cmd | COMMAND_BUS_MASTER | COMMAND_MEMORY } else { cmd & !COMMAND_BUS_MASTER };
        if new != cmd {
            self.config_write16(CONFIG_COMMAND, new)?;
        }
        Ok(())
    }

    /// Stops the function's DMA for good: bus mastering off, then the command register read
    /// back (the read also flushes the device's posted writes ahead of it). `true` once the
    /// function can issue no more DMA (bus mastering reads back off, or the function is gone and
    /// reads all ones); `false` if that cannot be established, when memory it was given must not
    /// be freed.
    fn stop_dma(&self) -> bool {
        stop_dma_by_command(self)
    }

    /// Whether the function is being removed: the kernel asked for it back (hot unplug, sysfs
    /// remove, unbind), or it was [released](Self::release). A driver that sees this fails
    /// everything it holds with `ErrorKind::Gone`, quiesces the device if its registers still
    /// answer, and calls `release`. Cheap (one atomic load): drivers check it on their slow
    /// paths and after every wake-up.
    fn is_removed(&self) -> bool {
        false
    }

    /// Gives a removed function back to the kernel at once: its DMA stopped, its registers and
    /// config space from then on read as all ones (or fail with [`PciError::Gone`]), and the
    /// process holds nothing of it, so the kernel's unplug completes. Safe to call from any
    /// thread, more than once, and while other threads still access the registers.
    fn release(&self) {}

    /// The capability list: `(id, offset)` of each entry, at most 48 (a loop ends it).
    fn capabilities(&self) -> Result<Vec<(u8, u16)>, PciError> {
        let mut out = Vec::new();
        if self.config_read16(CONFIG_STATUS)? & STATUS_CAP_LIST == 0 {
            return Ok(out);
        }
        let mut ptr = u16::from(self.config_read8(CONFIG_CAP_PTR)? & 0xfc);
        while ptr >= 0x40 && out.len() < 48 {
            let id = self.config_read8(ptr)?;
            out.push((id, ptr));
            ptr = u16::from(self.config_read8(ptr + 1)? & 0xfc);
        }
        Ok(out)
    }
}

/// [`PciDevice::stop_dma`]'s work through the command register: bus mastering off, read back.
pub fn stop_dma_by_command<D: PciDevice + ?Sized>(dev: &D) -> bool {
    if dev.set_bus_master(false).is_err() {
        return false;
    }
    match dev.config_read16(CONFIG_COMMAND) {
        Ok(cmd) => cmd == u16::MAX || cmd & COMMAND_BUS_MASTER == 0,
        Err(_) => false,
    }
}

/// Check a config space access: 1, 2 or 4 bytes, naturally aligned, within 4 KiB.
pub fn check_config_access(offset: u16, len: usize) -> Result<(), PciError> {
    let ok =
        matches!(len, 1 | 2 | 4) && (offset as usize) % len == 0 && offset as usize + len <= 4096;
    if ok {
        Ok(())
    } else {
        Err(PciError::ConfigRange { offset, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A minimal in-process device: 256 bytes of config space with a capability list, one BAR.
    struct Fake {
        cfg: RefCell<[u8; 256]>,
        bar: RefCell<Vec<u32>>,
        dma: Arc<DmaSpace>,
    }

    impl Fake {
        fn new() -> Fake {
            let mut cfg = [0u8; 256];
            cfg[CONFIG_STATUS as usize] = STATUS_CAP_LIST as u8;
            cfg[CONFIG_CAP_PTR as usize] = 0x40;
            cfg[0x40] = CAP_ID_VENDOR;
            cfg[0x41] = 0x50;
            cfg[0x50] = CAP_ID_MSIX;
            cfg[0x51] = 0x40; // Loops back: must not hang.
            Fake {
                cfg: RefCell::new(cfg),
                bar: RefCell::new(vec![0; 4]),
                dma: DmaSpace::new(Arc::new(mfio_dma::CheckingMapper::new())),
            }
        }
    }

    impl PciDevice for Fake {
        fn address(&self) -> PciAddress {
            "0000:00:01.0".parse().unwrap()
        }
        fn bar_len(&self, bar: u8) -> Option<u64> {
            (bar == 0).then_some(16)
        }
        fn read8(&self, _: u8, _: u64) -> u8 {
            0
        }
        fn write8(&self, _: u8, _: u64, _: u8) {}
        fn read16(&self, _: u8, _: u64) -> u16 {
            0
        }
        fn write16(&self, _: u8, _: u64, _: u16) {}
        fn read32(&self, _: u8, o: u64) -> u32 {
            self.bar.borrow()[o as usize / 4]
        }
        fn write32(&self, _: u8, o: u64, v: u32) {
            self.bar.borrow_mut()[o as usize / 4] = v
        }
        fn read64(&self, b: u8, o: u64) -> u64 {
            u64::from(self.read32(b, o)) | u64::from(self.read32(b, o + 4)) << 32
        }
        fn write64(&self, b: u8, o: u64, v: u64) {
            self.write32(b, o, v as u32);
            self.write32(b, o + 4, (v >> 32) as u32);
        }
        fn config_read(&self, offset: u16, buf: &mut [u8]) -> Result<(), PciError> {
            check_config_access(offset, buf.len())?;
            let o = offset as usize;
            let c = self.cfg.borrow();
            buf.copy_from_slice(
                c.get(o..o + buf.len()).ok_or(PciError::ConfigRange { offset, len: buf.len() })?,
            );
            Ok(())
        }
        fn config_write(&self, offset: u16, buf: &[u8]) -> Result<(), PciError> {
            check_config_access(offset, buf.len())?;
            let o = offset as usize;
            let mut c = self.cfg.borrow_mut();
            c.get_mut(o..o + buf.len())
                .ok_or(PciError::ConfigRange { offset, len: buf.len() })?
                .copy_from_slice(buf);
            Ok(())
        }
        fn dma(&self) -> &Arc<DmaSpace> {
            &self.dma
        }
    }

    #[test]
    fn default_methods_work_on_a_model() {
        let d = Fake::new();
        d.set_bus_master(true).unwrap();
        assert_eq!(d.config_read16(CONFIG_COMMAND).unwrap(), COMMAND_BUS_MASTER | COMMAND_MEMORY);
        d.set_bus_master(false).unwrap();
        assert_eq!(d.config_read16(CONFIG_COMMAND).unwrap(), COMMAND_MEMORY);
        let caps = d.capabilities().unwrap();
        assert_eq!(caps[0], (CAP_ID_VENDOR, 0x40));
        assert_eq!(caps[1], (CAP_ID_MSIX, 0x50));
        assert_eq!(caps.len(), 48, "a looping list is cut off, not followed forever");
        d.write64(0, 0, 0x1122_3344_5566_7788);
        assert_eq!(d.read64(0, 0), 0x1122_3344_5566_7788);
        assert!(d.reset().is_err());
        assert!(d.enable_msix(1).is_err());
        assert!(d.config_read32(2).is_err(), "misaligned");
        assert!(d.config_read(0, &mut [0; 3]).is_err(), "bad width");
        assert!(d.config_write32(4094, 0).is_err());
    }
}
