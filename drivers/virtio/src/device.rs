//! `VirtioBlk`: bring-up of a virtio-blk device (reset, ACKNOWLEDGE, DRIVER, feature
//! negotiation, FEATURES_OK, virtqueue setup, DRIVER_OK) and handing its queues to threads.

use crate::error::VirtioError;
use crate::parts::{Limits, QueueParts};
use crate::queue::BlkQueue;
pub use crate::shared::BlkInfo;
use crate::shared::Shared;
use crate::spec::{blk, feature, feature_names, status};
use crate::transport::Transport;
pub use crate::virtqueue::RingLayout;
use mfio_pci::{CompletionMode, PciDevice, PciError, Wakeup};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// How to bring a device up.
#[derive(Clone, Debug)]
pub struct Options {
    /// Request queues to set up (capped at what the device has; 0: all of them).
    pub queues: u16,
    /// Entries per virtqueue, at least 1 (rounded down to a power of two, capped at the
    /// device's maximum).
    pub queue_size: u16,
    /// Largest transfer of one request, in bytes, at least 512 (one sector); larger I/O is
    /// split.
    pub max_transfer: usize,
    /// Bytes per bounce buffer (for memory that is not DMA-mapped), at least 4096; larger I/O
    /// is split.
    pub bounce_size: usize,
    /// Bounce buffers per queue, at least 1; `bounce_size` x `bounce_slots` is allocated per
    /// queue at bring-up, at most [`MAX_BOUNCE_PER_QUEUE`].
    pub bounce_slots: usize,
    /// Feature bits to refuse even when offered (tests use it to exercise the paths without
    /// INDIRECT_DESC or EVENT_IDX). VERSION_1 and ACCESS_PLATFORM cannot be refused;
    /// RING_PACKED follows [`ring`](Self::ring) when that is set.
    pub refuse_features: u64,
    /// The virtqueue layout. `None` (default): packed when the device offers RING_PACKED,
    /// split otherwise. `Some(Split)` refuses RING_PACKED (to test both layouts on one
    /// device); `Some(Packed)` fails bring-up unless the device offers it.
    pub ring: Option<RingLayout>,
    /// How [`VirtioBlk::queue`]'s queues wait for completions (per queue:
    /// [`VirtioBlk::queue_with`]). An interrupt-driven mode gives every queue an MSI-X vector
    /// of its own at bring-up (queue `i`: vector `i`), so any queue may then use any mode.
    pub completion: CompletionMode,
}

/// The most bounce memory one queue may ask for.
pub const MAX_BOUNCE_PER_QUEUE: usize = 1 << 30;

impl Options {
    /// Checks every option against what any device can work with, before anything is
    /// touched: [`VirtioError::Options`] names the first that fails. ([`VirtioBlk::new`]
    /// calls it.)
    pub fn validate(&self) -> Result<(), VirtioError> {
        let bad = |why: String| Err(VirtioError::Options(why));
        if self.queue_size == 0 {
            return bad("queue_size is 0: give at least 1 entry per virtqueue".into());
        }
        if self.max_transfer < 512 {
            return bad(format!(
                "max_transfer is {}: give at least 512 bytes (one sector)",
                self.max_transfer
            ));
        }
        if self.bounce_size < 4096 {
            return bad(format!(
                "bounce_size is {}: give at least 4096 bytes (one memory page)",
                self.bounce_size
            ));
        }
        if self.bounce_slots == 0 {
            return bad("bounce_slots is 0: give at least 1 (memory the device cannot reach goes through them)".into());
        }
        if self.bounce_size.checked_mul(self.bounce_slots).is_none_or(|b| b > MAX_BOUNCE_PER_QUEUE)
        {
            return bad(format!(
                "bounce_size {} x bounce_slots {} is more than the {} MiB of bounce memory a queue may have: lower either",
                self.bounce_size,
                self.bounce_slots,
                MAX_BOUNCE_PER_QUEUE >> 20
            ));
        }
        Ok(())
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            queues: 1,
            queue_size: 256,
            max_transfer: 1 << 20,
            bounce_size: 128 << 10,
            bounce_slots: 16,
            refuse_features: 0,
            ring: None,
            completion: CompletionMode::Poll,
        }
    }
}

/// A virtio-blk device, brought up, with its virtqueues set up; hand them out with
/// [`queue`](Self::queue), one per thread.
pub struct VirtioBlk<D: PciDevice> {
    shared: Arc<Shared<D>>,
}

impl<D: PciDevice> VirtioBlk<D> {
    /// Brings the device up: finds the virtio-pci capabilities, resets it, negotiates
    /// features, sets up `opts.queues` virtqueues and sets DRIVER_OK.
    pub fn new(dev: D, opts: &Options) -> Result<VirtioBlk<D>, VirtioError> {
        opts.validate()?;
        let transport = Transport::find(&dev)?;
        dev.set_bus_master(true)?;
        // The kernel's driver (or a previous program) may have left it running.
        transport.reset(&dev)?;
        transport.set_status(&dev, status::ACKNOWLEDGE);
        transport.add_status(&dev, status::DRIVER);
        match Self::negotiate_and_setup(&dev, transport, opts) {
            Ok((features, info, limits, parts)) => {
                transport.add_status(&dev, status::DRIVER_OK);
                let s = transport.status(&dev);
                if s & (status::DEVICE_NEEDS_RESET | status::FAILED) != 0
                    || s & status::DRIVER_OK == 0
                {
                    let _ = transport.reset(&dev);
                    return Err(VirtioError::Broken { status: s });
                }
                tracing::info!(
                    "virtio-blk {}: up, features [{}], {} sectors of 512, block {}, {} {:?} queue(s) of {}",
                    dev.address(),
                    feature_names(features),
                    info.capacity_sectors,
                    info.block_size,
                    parts.len(),
                    limits.layout,
                    parts.first().map_or(0, |p| p.size())
                );
                let slots = Mutex::new(parts.into_iter().map(Some).collect());
                let shared = Shared {
                    dev,
                    transport,
                    features,
                    info,
                    limits,
                    slots,
                    completion: opts.completion,
                    msix: opts.completion.uses_interrupts(),
                    broken: AtomicBool::new(false),
                    broken_status: AtomicU8::new(0),
                };
                Ok(VirtioBlk { shared: Arc::new(shared) })
            }
            Err(e) => {
                transport.add_status(&dev, status::FAILED);
                let _ = transport.reset(&dev);
                let _ = dev.set_bus_master(false);
                if opts.completion.uses_interrupts() {
                    let _ = dev.disable_msix();
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn negotiate_and_setup(
        dev: &D,
        t: Transport,
        opts: &Options,
    ) -> Result<(u64, BlkInfo, Limits, Vec<QueueParts>), VirtioError> {
        let offered = t.device_features(dev);
        tracing::debug!("virtio-blk {}: offered [{}]", dev.address(), feature_names(offered));
        if offered & feature::VERSION_1 == 0 {
            return Err(VirtioError::MissingFeature {
                name: "VERSION_1",
                offered,
                hint: "only virtio 1.x (modern) devices are supported",
            });
        }
        let mapper = dev.dma().mapper().name();
        if mapper == "vfio-type1" && offered & feature::ACCESS_PLATFORM == 0 {
            return Err(VirtioError::MissingFeature {
                name: "ACCESS_PLATFORM",
                offered,
                hint: "behind an IOMMU the device must translate its DMA; give QEMU's \
                       virtio-blk-pci iommu_platform=on",
            });
        }
        if opts.ring == Some(RingLayout::Packed) && offered & feature::RING_PACKED == 0 {
            return Err(VirtioError::MissingFeature {
                name: "RING_PACKED",
                offered,
                hint: "packed virtqueues were asked for; give QEMU's virtio-blk-pci packed=on",
            });
        }
        // `ring` is the explicit choice: it wins over `refuse_features` for RING_PACKED.
        let refuse = match opts.ring {
            Some(RingLayout::Split) => opts.refuse_features | feature::RING_PACKED,
            Some(RingLayout::Packed) => opts.refuse_features & !feature::RING_PACKED,
            None => opts.refuse_features,
        };
        let mut wanted = offered & feature::SUPPORTED & !refuse;
        wanted |= offered & (feature::VERSION_1 | feature::ACCESS_PLATFORM);
        t.set_driver_features(dev, wanted);
        t.features_ok(dev, wanted)?;

        let has = |f: u64| wanted & f != 0;
        let cfg = |off: u64, w: u8| t.read_config(dev, off, w);
        let block_size =
            if has(feature::BLK_BLK_SIZE) { cfg(blk::CFG_BLK_SIZE, 4) as u32 } else { 512 };
        if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
            return Err(VirtioError::BadDevice(format!("block size {block_size}")));
        }
        let dev_queues = if has(feature::BLK_MQ) { cfg(blk::CFG_NUM_QUEUES, 2) as u16 } else { 1 };
        let dev_queues = dev_queues.clamp(1, t.num_queues(dev).max(1));
        let info = BlkInfo {
            capacity_sectors: cfg(blk::CFG_CAPACITY, 8),
            block_size,
            size_max: has(feature::BLK_SIZE_MAX).then(|| cfg(blk::CFG_SIZE_MAX, 4) as u32),
            seg_max: has(feature::BLK_SEG_MAX).then(|| cfg(blk::CFG_SEG_MAX, 4) as u32),
            num_queues: dev_queues,
            read_only: has(feature::BLK_RO),
            max_discard_sectors: if has(feature::BLK_DISCARD) {
                (cfg(blk::CFG_MAX_DISCARD_SECTORS, 4) as u32).max(1)
            } else {
                0
            },
            max_write_zeroes_sectors: if has(feature::BLK_WRITE_ZEROES) {
                (cfg(blk::CFG_MAX_WRITE_ZEROES_SECTORS, 4) as u32).max(1)
            } else {
                0
            },
            write_zeroes_may_unmap: has(feature::BLK_WRITE_ZEROES)
                && cfg(blk::CFG_WRITE_ZEROES_MAY_UNMAP, 1) != 0,
        };
        if info.capacity_bytes() == 0 {
            return Err(VirtioError::BadDevice("capacity is 0".into()));
        }
        let count = if opts.queues == 0 { dev_queues } else { opts.queues.min(dev_queues) };
        let bs = block_size as usize;
        let round = |v: usize| (v / bs * bs).max(bs);
        let limits = Limits {
            layout: if has(feature::RING_PACKED) { RingLayout::Packed } else { RingLayout::Split },
            indirect: has(feature::INDIRECT_DESC),
            event_idx: has(feature::EVENT_IDX),
            seg_max: info.seg_max.map_or(1, |s| s.max(1) as usize),
            size_max: info.size_max.map_or(u32::MAX as usize, |s| s.max(512) as usize) / 512 * 512,
            max_transfer: round(opts.max_transfer.min(u32::MAX as usize / 2)),
            bounce_size: round(opts.bounce_size),
            bounce_slots: opts.bounce_slots.max(1),
        };
        // Interrupt-driven: vector q for queue q, routed to eventfds before any queue names it
        // (as Linux's virtio-pci allocates its vectors first); configuration changes get none.
        let mut irqs = match opts.completion.uses_interrupts() {
            false => Vec::new(),
            true => {
                let vectors = dev.msix_count();
                if vectors < u32::from(count) {
                    return Err(VirtioError::NoVectors { vectors, queues: count });
                }
                dev.enable_msix(u32::from(count))?
            }
        }
        .into_iter();
        let mut parts = Vec::with_capacity(usize::from(count));
        for q in 0..count {
            let max = t.select_queue(dev, q);
            if max == 0 {
                return Err(VirtioError::Queue {
                    index: q,
                    why: "the device has no such queue".into(),
                });
            }
            let want = opts.queue_size.clamp(2, max);
            // The largest power of two not above `want` (split queues need one; packed ones
            // do not, but gain nothing from other sizes).
            let size = 1u16 << (15 - want.leading_zeros());
            let p = QueueParts::new(dev.dma(), q, size, &limits, irqs.next())
                .map_err(|why| VirtioError::Queue { index: q, why })?;
            let (desc, avail, used) = p.ring_iovas();
            let vector = p.has_interrupt().then_some(q);
            let notify = t.setup_queue(dev, q, size, desc, avail, used, vector)?;
            t.enable_queue(dev);
            parts.push(p.with_notify(notify));
        }
        Ok((wanted, info, limits, parts))
    }

    /// Features negotiated.
    pub fn features(&self) -> u64 {
        self.shared.features
    }

    /// The virtqueue layout negotiated (packed when RING_PACKED was).
    pub fn ring_layout(&self) -> RingLayout {
        self.shared.limits.layout
    }

    /// Names of the features negotiated.
    pub fn feature_names(&self) -> String {
        feature_names(self.shared.features)
    }

    /// The device's geometry and limits.
    pub fn info(&self) -> &BlkInfo {
        &self.shared.info
    }

    /// Virtqueues set up.
    pub fn queue_count(&self) -> u16 {
        self.shared.slots.lock().unwrap_or_else(|p| p.into_inner()).len() as u16
    }

    /// The PCI device (a model's injection knobs, for instance).
    pub fn device(&self) -> &D {
        &self.shared.dev
    }

    /// Takes virtqueue `index` for this thread, waiting for completions as
    /// [`Options::completion`] said. It goes back when the [`BlkQueue`] is dropped (unless the
    /// device had to be reset).
    pub fn queue(&self, index: u16) -> Result<BlkQueue<D>, VirtioError> {
        self.queue_with(index, self.shared.completion)
    }

    /// Takes virtqueue `index` for this thread, waiting for completions in `mode`. An
    /// interrupt-driven mode needs the device brought up with one
    /// ([`Options::completion`]), which gave every queue its MSI-X vector.
    pub fn queue_with(&self, index: u16, mode: CompletionMode) -> Result<BlkQueue<D>, VirtioError> {
        if self.shared.dev.is_removed() {
            return Err(VirtioError::Gone);
        }
        if self.shared.broken.load(Ordering::Acquire) {
            return Err(VirtioError::Broken {
                status: self.shared.broken_status.load(Ordering::Relaxed),
            });
        }
        let mut slots = self.shared.slots.lock().unwrap_or_else(|p| p.into_inner());
        let count = slots.len() as u16;
        let slot =
            slots.get_mut(usize::from(index)).ok_or(VirtioError::NoSuchQueue { index, count })?;
        let parts = slot.take().ok_or(VirtioError::QueueInUse { index })?;
        let wakeup = match mode.uses_interrupts() {
            false => None,
            true => match parts.interrupt() {
                Some(Ok(fd)) => Some(Wakeup::new(mode, fd, format!("virtio-blk queue {index}"))),
                Some(Err(e)) => {
                    *slot = Some(parts);
                    let addr = self.shared.dev.address();
                    let detail = e.to_string();
                    return Err(PciError::Vfio { addr, op: "dup MSI-X eventfd", detail }.into());
                }
                None => {
                    *slot = Some(parts);
                    return Err(VirtioError::NoInterrupt { index });
                }
            },
        };
        drop(slots);
        Ok(BlkQueue::new(self.shared.clone(), parts, wakeup))
    }
}
