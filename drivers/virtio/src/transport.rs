//! virtio-pci modern transport: the vendor capabilities (common configuration, notifications
//! with their offset multiplier, ISR, device configuration), the status handshake, feature
//! negotiation and queue registers. Every access goes through [`PciDevice`].

use crate::error::VirtioError;
use crate::spec::{cap, common, status};
use mfio_pci::{PciDevice, CAP_ID_VENDOR};
use std::time::{Duration, Instant};

/// A structure in a BAR.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// BAR index.
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Where the virtio-pci structures of a device lie.
#[derive(Copy, Clone, Debug)]
pub struct Transport {
    /// Common configuration.
    pub common: Region,
    /// Notification area.
    pub notify: Region,
    /// Bytes between the notify addresses of consecutive `queue_notify_off` values.
    pub notify_multiplier: u32,
    /// ISR status.
    pub isr: Region,
    /// Device-specific configuration.
    pub device: Region,
}

/// How long a reset may take before the device counts as stuck.
const RESET_TIMEOUT: Duration = Duration::from_secs(2);

impl Transport {
    /// Finds the vendor capabilities of `dev` (the first of each type whose BAR exists, as the
    /// specification asks) and checks that each lies within its BAR.
    pub fn find<D: PciDevice + ?Sized>(dev: &D) -> Result<Transport, VirtioError> {
        let (mut common, mut notify, mut isr, mut device) = (None, None, None, None);
        let mut multiplier = 0;
        for (id, off) in dev.capabilities()? {
            if id != CAP_ID_VENDOR {
                continue;
            }
            let ty = dev.config_read8(off + cap::CFG_TYPE)?;
            let bar = dev.config_read8(off + cap::BAR)?;
            if bar > 5 || dev.bar_len(bar).is_none() {
                continue;
            }
            let region = Region {
                bar,
                offset: u64::from(dev.config_read32(off + cap::OFFSET)?),
                len: u64::from(dev.config_read32(off + cap::LENGTH)?),
            };
            let slot = match ty {
                cap::COMMON_CFG => &mut common,
                cap::NOTIFY_CFG => {
                    if notify.is_none() {
                        multiplier = dev.config_read32(off + cap::NOTIFY_OFF_MULTIPLIER)?;
                    }
                    &mut notify
                }
                cap::ISR_CFG => &mut isr,
                cap::DEVICE_CFG => &mut device,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(region);
            }
        }
        let check = |r: Option<Region>, what: &'static str, min: u64| {
            let r = r.ok_or(VirtioError::MissingCapability { what })?;
            let bar_len = dev.bar_len(r.bar).unwrap_or(0);
            let fits = r.offset.checked_add(r.len).is_some_and(|end| end <= bar_len);
            if !fits || r.len < min {
                return Err(VirtioError::BadCapability {
                    what,
                    bar: r.bar,
                    offset: r.offset,
                    len: r.len,
                });
            }
            Ok(r)
        };
        Ok(Transport {
            common: check(common, "common configuration", common::LEN)?,
            notify: check(notify, "notification", 2)?,
            notify_multiplier: multiplier,
            isr: check(isr, "ISR", 1)?,
            device: check(device, "device configuration", 0)?,
        })
    }

    /// The device status.
    pub fn status<D: PciDevice + ?Sized>(&self, dev: &D) -> u8 {
        dev.read8(self.common.bar, self.common.offset + common::DEVICE_STATUS)
    }

    /// Writes the device status.
    pub fn set_status<D: PciDevice + ?Sized>(&self, dev: &D, s: u8) {
        dev.write8(self.common.bar, self.common.offset + common::DEVICE_STATUS, s)
    }

    /// Adds `bits` to the device status.
    pub fn add_status<D: PciDevice + ?Sized>(&self, dev: &D, bits: u8) {
        let s = self.status(dev);
        self.set_status(dev, s | bits);
    }

    /// Resets the device (status 0) and waits until it reads back 0: afterwards the device
    /// does no DMA and has forgotten every queue.
    pub fn reset<D: PciDevice + ?Sized>(&self, dev: &D) -> Result<(), VirtioError> {
        self.set_status(dev, 0);
        let start = Instant::now();
        loop {
            let s = self.status(dev);
            if s == 0 {
                return Ok(());
            }
            if s == u8::MAX {
                // No status has every bit set (bits 4 and 5 are reserved): the function is
                // gone, and waiting would change nothing.
                return Err(VirtioError::ResetTimeout { status: s });
            }
            if start.elapsed() > RESET_TIMEOUT {
                return Err(VirtioError::ResetTimeout { status: s });
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// The 64 feature bits the device offers.
    pub fn device_features<D: PciDevice + ?Sized>(&self, dev: &D) -> u64 {
        let (b, o) = (self.common.bar, self.common.offset);
        dev.write32(b, o + common::DEVICE_FEATURE_SELECT, 0);
        let lo = dev.read32(b, o + common::DEVICE_FEATURE);
        dev.write32(b, o + common::DEVICE_FEATURE_SELECT, 1);
        let hi = dev.read32(b, o + common::DEVICE_FEATURE);
        u64::from(hi) << 32 | u64::from(lo)
    }

    /// Writes the driver's 64 feature bits.
    pub fn set_driver_features<D: PciDevice + ?Sized>(&self, dev: &D, f: u64) {
        let (b, o) = (self.common.bar, self.common.offset);
        dev.write32(b, o + common::DRIVER_FEATURE_SELECT, 0);
        dev.write32(b, o + common::DRIVER_FEATURE, f as u32);
        dev.write32(b, o + common::DRIVER_FEATURE_SELECT, 1);
        dev.write32(b, o + common::DRIVER_FEATURE, (f >> 32) as u32);
    }

    /// Sets FEATURES_OK and checks that it sticks.
    pub fn features_ok<D: PciDevice + ?Sized>(&self, dev: &D, f: u64) -> Result<(), VirtioError> {
        self.add_status(dev, status::FEATURES_OK);
        if self.status(dev) & status::FEATURES_OK == 0 {
            return Err(VirtioError::FeaturesRejected { features: f });
        }
        Ok(())
    }

    /// Number of virtqueues the device has.
    pub fn num_queues<D: PciDevice + ?Sized>(&self, dev: &D) -> u16 {
        dev.read16(self.common.bar, self.common.offset + common::NUM_QUEUES)
    }

    /// Selects queue `q` for the queue registers, returns its maximum size (0: no such queue).
    pub fn select_queue<D: PciDevice + ?Sized>(&self, dev: &D, q: u16) -> u16 {
        let (b, o) = (self.common.bar, self.common.offset);
        dev.write16(b, o + common::QUEUE_SELECT, q);
        dev.read16(b, o + common::QUEUE_SIZE)
    }

    /// Programs the selected queue: size, ring addresses, its MSI-X vector (`None`: none, a
    /// polled queue); returns the BAR offset of its notify address.
    #[allow(clippy::too_many_arguments)]
    pub fn setup_queue<D: PciDevice + ?Sized>(
        &self,
        dev: &D,
        index: u16,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
        vector: Option<u16>,
    ) -> Result<u64, VirtioError> {
        let (b, o) = (self.common.bar, self.common.offset);
        dev.write16(b, o + common::QUEUE_SIZE, size);
        let v = vector.unwrap_or(common::NO_VECTOR);
        dev.write16(b, o + common::QUEUE_MSIX_VECTOR, v);
        // A device that cannot map the vector reads back NO_VECTOR.
        if vector.is_some() && dev.read16(b, o + common::QUEUE_MSIX_VECTOR) != v {
            return Err(VirtioError::Queue {
                index,
                why: format!("the device refused MSI-X vector {v} (it reads back NO_VECTOR)"),
            });
        }
        dev.write64(b, o + common::QUEUE_DESC, desc);
        dev.write64(b, o + common::QUEUE_DRIVER, avail);
        dev.write64(b, o + common::QUEUE_DEVICE, used);
        let notify_off = u64::from(dev.read16(b, o + common::QUEUE_NOTIFY_OFF));
        let at = notify_off * u64::from(self.notify_multiplier);
        if at + 2 > self.notify.len {
            return Err(VirtioError::Queue {
                index,
                why: format!(
                    "notify offset {notify_off} x {} lies outside the {:#x}-byte notify area",
                    self.notify_multiplier, self.notify.len
                ),
            });
        }
        Ok(self.notify.offset + at)
    }

    /// Enables the selected queue.
    pub fn enable_queue<D: PciDevice + ?Sized>(&self, dev: &D) {
        dev.write16(self.common.bar, self.common.offset + common::QUEUE_ENABLE, 1);
    }

    /// Reads a device configuration field of `width` bytes (1, 2, 4 or 8) at `off`, with
    /// accesses of the field's own width (8-byte fields as two 4-byte reads), retrying while
    /// the configuration generation changes under the reads. Past the structure: 0.
    pub fn read_config<D: PciDevice + ?Sized>(&self, dev: &D, off: u64, width: u8) -> u64 {
        if off + u64::from(width) > self.device.len {
            return 0;
        }
        let (b, at) = (self.device.bar, self.device.offset + off);
        let gen_at = self.common.offset + common::CONFIG_GENERATION;
        loop {
            let g0 = dev.read8(self.common.bar, gen_at);
            let v = match width {
                1 => u64::from(dev.read8(b, at)),
                2 => u64::from(dev.read16(b, at)),
                4 => u64::from(dev.read32(b, at)),
                _ => u64::from(dev.read32(b, at)) | u64::from(dev.read32(b, at + 4)) << 32,
            };
            if dev.read8(self.common.bar, gen_at) == g0 {
                return v;
            }
        }
    }
}
