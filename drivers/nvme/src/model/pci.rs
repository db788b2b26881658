//! The model's PCI config space: QEMU's NVMe identity (1b36:0010, class 010802), a 64-bit
//! BAR0 of 16 KiB, no capability list (its MSI-X vectors are reached through
//! `PciDevice::enable_msix`, as VFIO gives them), and a command register whose memory-space and
//! bus-master bits the model obeys.

use mfio_pci::{COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE, COMMAND_MEMORY, CONFIG_COMMAND};

/// BAR0 size: registers plus doorbells for 1536 queue pairs at stride 4.
pub const BAR0_SIZE: u64 = 0x4000;
/// PCI vendor ID (Red Hat, as QEMU's emulated NVMe).
pub const VENDOR_ID: u16 = 0x1b36;
/// PCI device ID (QEMU NVMe).
pub const DEVICE_ID: u16 = 0x0010;
/// Class code: mass storage, non-volatile memory, NVMe I/O controller.
pub const CLASS_CODE: u32 = 0x01_08_02;

/// Config space bytes (the 256-byte PCI header; extended space reads as zero).
#[derive(Debug, Clone)]
pub(crate) struct ConfigSpace {
    bytes: [u8; 256],
}

impl ConfigSpace {
    pub fn new() -> Self {
        let mut b = [0u8; 256];
        b[0..2].copy_from_slice(&VENDOR_ID.to_le_bytes());
        b[2..4].copy_from_slice(&DEVICE_ID.to_le_bytes());
        // vfio-pci enables memory decoding when it opens a device; bus mastering is the
        // driver's job.
        b[4..6].copy_from_slice(&COMMAND_MEMORY.to_le_bytes());
        b[8] = 0x02; // revision
        b[9] = CLASS_CODE as u8;
        b[10] = (CLASS_CODE >> 8) as u8;
        b[11] = (CLASS_CODE >> 16) as u8;
        // BAR0: memory, 64-bit, not prefetchable; the address is made up.
        b[0x10..0x14].copy_from_slice(&(0xfebf_0000u32 | 0x4).to_le_bytes());
        b[0x2c..0x2e].copy_from_slice(&0x1af4u16.to_le_bytes());
        b[0x2e..0x30].copy_from_slice(&0x1100u16.to_le_bytes());
        b[0x3d] = 1; // interrupt pin INTA
        Self { bytes: b }
    }

    pub fn read(&self, offset: u16, buf: &mut [u8]) {
        for (i, out) in buf.iter_mut().enumerate() {
            *out = self.bytes.get(usize::from(offset) + i).copied().unwrap_or(0);
        }
    }

    /// Writes the writable bits: the command register's memory, bus-master and INTx-disable
    /// bits, and BAR0/BAR1 (with BAR sizing: all ones reads back the size mask).
    pub fn write(&mut self, offset: u16, buf: &[u8]) {
        let cmd_mask = COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
        for (i, &v) in buf.iter().enumerate() {
            let o = usize::from(offset) + i;
            match o {
                4 => self.bytes[4] = v & cmd_mask as u8,
                5 => self.bytes[5] = v & (cmd_mask >> 8) as u8,
                0x10..=0x17 => self.bytes[o] = v,
                _ => {}
            }
        }
        let mut raw = [0u8; 4];
        raw.copy_from_slice(&self.bytes[0x10..0x14]);
        let bar0 = u32::from_le_bytes(raw);
        let bar0 = (bar0 & !(BAR0_SIZE as u32 - 1)) | 0x4;
        self.bytes[0x10..0x14].copy_from_slice(&bar0.to_le_bytes());
    }

    pub fn command(&self) -> u16 {
        let o = usize::from(CONFIG_COMMAND);
        u16::from_le_bytes([self.bytes[o], self.bytes[o + 1]])
    }

    pub fn bus_master(&self) -> bool {
        self.command() & COMMAND_BUS_MASTER != 0
    }

    pub fn memory_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY != 0
    }
}
