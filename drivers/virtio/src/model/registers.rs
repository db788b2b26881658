//! The model's registers: the common configuration, ISR, device configuration and notify
//! structures in its BAR, each access checked for width and order, and what writing them
//! does (the status handshake, queue enable, notifies).

use super::*;

impl VirtioBlkModel {
    pub(super) fn bus_master(st: &State) -> bool {
        u16::from_le_bytes([st.config[4], st.config[5]]) & mfio_pci::COMMAND_BUS_MASTER != 0
    }

    /// Width of the common configuration field at `off`, if there is one.
    pub(super) fn common_width(off: u64) -> Option<u8> {
        Some(match off {
            common::DEVICE_FEATURE_SELECT
            | common::DEVICE_FEATURE
            | common::DRIVER_FEATURE_SELECT
            | common::DRIVER_FEATURE => 4,
            common::CONFIG_MSIX_VECTOR
            | common::NUM_QUEUES
            | common::QUEUE_SELECT
            | common::QUEUE_SIZE
            | common::QUEUE_MSIX_VECTOR
            | common::QUEUE_ENABLE
            | common::QUEUE_NOTIFY_OFF => 2,
            common::DEVICE_STATUS | common::CONFIG_GENERATION => 1,
            common::QUEUE_DESC | common::QUEUE_DRIVER | common::QUEUE_DEVICE => 8,
            _ => return None,
        })
    }

    pub(super) fn mmio_read(&self, bar: u8, off: u64, width: u8) -> u64 {
        assert!(bar == BAR && off + u64::from(width) <= BAR_LEN, "model: read outside BAR{BAR}");
        assert!(off % u64::from(width) == 0, "model: misaligned {width}-byte read at {off:#x}");
        let mut st = self.state();
        if st.removed {
            return u64::MAX >> (64 - 8 * u32::from(width));
        }
        if off < ISR_AT {
            let hi_half = width == 4 && (0x20..0x38).contains(&off);
            if Self::common_width(off) != Some(width) && !hi_half {
                self.violation(&mut st, format!("{width}-byte read of common config {off:#x}"));
                return 0;
            }
            let q = usize::from(st.queue_select);
            let mq = st.queues.get(q).copied().unwrap_or_default();
            let v: u64 = match if hi_half { off & !7 } else { off } {
                common::DEVICE_FEATURE_SELECT => u64::from(st.device_feature_select),
                common::DEVICE_FEATURE => match st.device_feature_select {
                    0 => self.inner.opts.features & 0xffff_ffff,
                    1 => self.inner.opts.features >> 32,
                    _ => 0,
                },
                common::DRIVER_FEATURE_SELECT => u64::from(st.driver_feature_select),
                common::DRIVER_FEATURE => match st.driver_feature_select {
                    0 => st.driver_features & 0xffff_ffff,
                    1 => st.driver_features >> 32,
                    _ => 0,
                },
                common::CONFIG_MSIX_VECTOR => {
                    u64::from(st.config_vector.unwrap_or(common::NO_VECTOR))
                }
                common::NUM_QUEUES => st.queues.len() as u64,
                common::DEVICE_STATUS => u64::from(st.status),
                common::CONFIG_GENERATION => 0,
                common::QUEUE_SELECT => u64::from(st.queue_select),
                common::QUEUE_SIZE => u64::from(if mq.size != 0 { mq.size } else { mq.max }),
                common::QUEUE_MSIX_VECTOR => u64::from(mq.vector.unwrap_or(common::NO_VECTOR)),
                common::QUEUE_ENABLE => u64::from(mq.enabled),
                common::QUEUE_NOTIFY_OFF => q as u64,
                common::QUEUE_DESC => mq.desc,
                common::QUEUE_DRIVER => mq.driver,
                common::QUEUE_DEVICE => mq.device,
                _ => 0,
            };
            match (hi_half, off % 8) {
                (false, _) => v,
                (true, 0) => v & 0xffff_ffff,
                (true, _) => v >> 32,
            }
        } else if off < DEVICE_AT {
            0 // ISR: only INTx sets it, and the model's interrupts are MSI-X
        } else if off < DEVICE_AT + DEVICE_LEN {
            let o = (off - DEVICE_AT) as usize;
            let mut b = [0u8; 8];
            b[..usize::from(width)].copy_from_slice(&st.device_cfg[o..o + usize::from(width)]);
            u64::from_le_bytes(b)
        } else {
            0
        }
    }

    pub(super) fn mmio_write(&self, bar: u8, off: u64, width: u8, v: u64) {
        assert!(bar == BAR && off + u64::from(width) <= BAR_LEN, "model: write outside BAR{BAR}");
        assert!(off % u64::from(width) == 0, "model: misaligned {width}-byte write at {off:#x}");
        let mut st = self.state();
        if st.removed {
            return;
        }
        if off >= NOTIFY_AT {
            let q = ((off - NOTIFY_AT) / NOTIFY_MULTIPLIER) as usize;
            if width != 2 || (off - NOTIFY_AT) % NOTIFY_MULTIPLIER != 0 || q >= st.queues.len() {
                return self.violation(&mut st, format!("{width}-byte notify write at {off:#x}"));
            }
            if v as usize != q {
                return self.violation(&mut st, format!("notify of queue {q} carries {v}"));
            }
            if st.status & status::DRIVER_OK == 0 || !st.queues[q].enabled {
                return self.violation(&mut st, format!("notify of queue {q} before it runs"));
            }
            st.notifies += 1;
            if !st.hold {
                self.process(&mut st, q, false);
            }
            return;
        }
        if off >= ISR_AT {
            return self.violation(&mut st, format!("write to read-only area at {off:#x}"));
        }
        let hi_half = width == 4 && matches!(off, 0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34);
        if Self::common_width(off) != Some(width) && !hi_half {
            return self
                .violation(&mut st, format!("{width}-byte write of common config {off:#x}"));
        }
        let q = usize::from(st.queue_select);
        let running = st.status & status::DRIVER_OK != 0;
        let packed = st.driver_features & feature::RING_PACKED != 0;
        match off {
            common::DEVICE_FEATURE_SELECT => st.device_feature_select = v as u32,
            common::DRIVER_FEATURE_SELECT => st.driver_feature_select = v as u32,
            common::DRIVER_FEATURE => {
                if st.status & status::FEATURES_OK != 0 {
                    return self
                        .violation(&mut st, "driver features written after FEATURES_OK".into());
                }
                match st.driver_feature_select {
                    0 => {
                        st.driver_features = (st.driver_features & !0xffff_ffff) | (v & 0xffff_ffff)
                    }
                    1 => st.driver_features = (st.driver_features & 0xffff_ffff) | (v << 32),
                    s => self.violation(&mut st, format!("driver feature select {s}")),
                }
            }
            common::CONFIG_MSIX_VECTOR | common::QUEUE_MSIX_VECTOR => {
                // A vector past the table reads back as NO_VECTOR: that is how the driver
                // learns the device refused it.
                let v = v as u16;
                let vector =
                    (v != common::NO_VECTOR && u32::from(v) < st.irq.supported()).then_some(v);
                if off == common::CONFIG_MSIX_VECTOR {
                    st.config_vector = vector;
                } else if q < st.queues.len() {
                    st.queues[q].vector = vector;
                } else {
                    self.violation(&mut st, format!("vector of queue {q}, which does not exist"));
                }
            }
            common::DEVICE_STATUS => self.write_status(&mut st, v as u8),
            common::QUEUE_SELECT => st.queue_select = v as u16,
            common::QUEUE_SIZE | common::QUEUE_ENABLE | 0x20..=0x37 => {
                if q >= st.queues.len() {
                    return self
                        .violation(&mut st, format!("setup of queue {q}, which does not exist"));
                }
                if running || st.queues[q].enabled {
                    return self
                        .violation(&mut st, format!("queue {q} reconfigured while running"));
                }
                if st.status & status::FEATURES_OK == 0 {
                    return self.violation(&mut st, format!("queue {q} set up before FEATURES_OK"));
                }
                let mq = &mut st.queues[q];
                match off {
                    common::QUEUE_SIZE => {
                        // Packed queues may have any size; split ones need a power of two.
                        let n = v as u16;
                        if n == 0 || n > mq.max || (!packed && !n.is_power_of_two()) {
                            return self.violation(&mut st, format!("queue size {n}"));
                        }
                        mq.size = n;
                    }
                    common::QUEUE_ENABLE => {
                        if v != 1 {
                            return self.violation(&mut st, format!("queue_enable written {v}"));
                        }
                        self.enable_queue(&mut st, q);
                    }
                    _ => {
                        let field = match off & !7 {
                            0x20 => &mut mq.desc,
                            0x28 => &mut mq.driver,
                            _ => &mut mq.device,
                        };
                        *field = match (width, off % 8) {
                            (8, _) => v,
                            (_, 0) => (*field & !0xffff_ffff) | (v & 0xffff_ffff),
                            _ => (*field & 0xffff_ffff) | (v << 32),
                        };
                    }
                }
            }
            _ => self.violation(&mut st, format!("write to read-only common config {off:#x}")),
        }
    }

    pub(super) fn write_status(&self, st: &mut State, s: u8) {
        if s == 0 {
            return self.reset(st);
        }
        let old = st.status;
        if s & old != old & !status::DEVICE_NEEDS_RESET {
            return self
                .violation(st, format!("status {old:#x} -> {s:#x} clears bits without a reset"));
        }
        let new = s & !old;
        if new & status::FEATURES_OK != 0 {
            let offered = self.inner.opts.features;
            let f = st.driver_features;
            if f & !offered != 0 || f & feature::VERSION_1 == 0 {
                // The spec's answer: FEATURES_OK does not stick.
                st.status = s & !status::FEATURES_OK;
                return;
            }
            if old & status::DRIVER == 0 {
                return self.violation(st, "FEATURES_OK before DRIVER".into());
            }
        }
        if new & status::DRIVER_OK != 0 && s & status::FEATURES_OK == 0 {
            return self.violation(st, "DRIVER_OK without FEATURES_OK".into());
        }
        if new & status::DRIVER != 0 && s & status::ACKNOWLEDGE == 0 {
            return self.violation(st, "DRIVER without ACKNOWLEDGE".into());
        }
        st.status = s | (old & status::DEVICE_NEEDS_RESET);
    }

    pub(super) fn enable_queue(&self, st: &mut State, q: usize) {
        let mq = &mut st.queues[q];
        if mq.size == 0 {
            mq.size = mq.max;
        }
        let m = self.inner.dma.lock();
        let r = if st.driver_features & feature::RING_PACKED != 0 {
            packed::enable(st, &m, q)
        } else {
            Self::enable_split(st, &m, q)
        };
        match r {
            Ok(()) => st.queues[q].enabled = true,
            Err(why) => self.violation(st, why),
        }
    }

    pub(super) fn enable_split(st: &mut State, m: &DmaView, q: usize) -> Result<(), String> {
        let mq = st.queues[q];
        let n = mq.size;
        let checks = [
            ("descriptor table", mq.desc, 16u64, n as usize * ring::DESC_SIZE),
            ("available ring", mq.driver, 2, ring::avail_size(n)),
            ("used ring", mq.device, 4, ring::used_size(n)),
        ];
        for (what, iova, align, len) in checks {
            if iova % align != 0 || !m.is_mapped(mfio_dma::Iova(iova), len) {
                return Err(format!(
                    "queue {q}: {what} at {iova:#x} ({len} bytes) is misaligned or unmapped"
                ));
            }
        }
        st.work[q].busy = vec![false; usize::from(n)];
        Ok(())
    }

    pub(super) fn process(&self, st: &mut State, q: usize, all: bool) {
        if st.stopped || st.status & status::DRIVER_OK == 0 || !st.queues[q].enabled {
            return;
        }
        if !Self::bus_master(st) {
            return self.violation(st, "notified with bus mastering off: no DMA possible".into());
        }
        if let Err(Violation(m)) = process::process_queue(self, st, q, all) {
            self.violation(st, m);
        }
    }
}
