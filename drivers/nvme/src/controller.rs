//! The controller: bring-up, identify, namespaces, queue IDs and vectors, shutdown (I/O
//! queues are made in `queue_pair`, options live in `options`).

use crate::admin::{AdminQueue, ErrorLogEntry, SmartLog, ADMIN_ENTRIES};
use crate::error::NvmeError;
use crate::namespace::Namespace;
use crate::options::{ControllerOptions, DataPointer};
use crate::queues::ShadowDoorbells;
use crate::spec::{
    cns, log, regs, Cap, Cc, Csts, IdentifyController, IdentifyNamespace, PAGE_SIZE,
};
use mfio_pci::{EventFd, PciDevice};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A bound-up NVMe controller. Share it (`Arc`) between the threads that own its I/O queues.
pub struct Controller<D: PciDevice> {
    dev: D,
    cap: Cap,
    version: u32,
    admin: Mutex<AdminQueue>,
    identify: IdentifyController,
    identify_raw: Vec<u8>,
    namespaces: Vec<Namespace>,
    pub(crate) granted: u16,
    /// Shadow doorbell pages, when the controller took them.
    shadow: Option<Arc<ShadowDoorbells>>,
    pub(crate) qids: Mutex<Vec<bool>>,
    max_transfer: usize,
    opts: ControllerOptions,
    /// Bumped when the controller is disabled (fatal status, unrecoverable timeout): queues
    /// then fail what they have in flight, since the device no longer touches memory.
    epoch: AtomicU64,
    enabled: AtomicBool,
    /// The driver's ends of the MSI-X eventfds, by vector, once a queue needed interrupts.
    vectors: Mutex<Option<Vec<EventFd>>>,
}

impl<D: PciDevice> Controller<D> {
    /// Brings the controller up: disable, admin queues, enable, identify, namespaces, queues.
    pub fn new(dev: D, opts: ControllerOptions) -> Result<Arc<Self>, NvmeError> {
        let span = tracing::info_span!("nvme_bringup", dev = %dev.address());
        let _g = span.enter();
        opts.validate()?;
        let bar0 = dev.bar_len(0).unwrap_or(0);
        if bar0 < 0x1000 + 8 {
            return Err(NvmeError::Bar0(bar0));
        }
        // Memory space only: bus mastering waits until the controller is known disabled (one left
        // enabled by an earlier user could otherwise resume DMA into memory that is not ours).
        let cmd = dev.config_read16(mfio_pci::CONFIG_COMMAND)?;
        dev.config_write16(mfio_pci::CONFIG_COMMAND, cmd | mfio_pci::COMMAND_MEMORY)?;
        let cap = Cap(dev.read64(0, regs::CAP));
        if cap.0 == u64::MAX {
            return Err(NvmeError::Gone);
        }
        if !cap.nvm_command_set() {
            return Err(NvmeError::NotNvm(dev.address().to_string()));
        }
        if cap.mps_min() > PAGE_SIZE {
            return Err(NvmeError::PageSize(cap.mps_min()));
        }
        let version = dev.read32(0, regs::VS);
        tracing::debug!(cap = format_args!("{:#x}", cap.0), version = format_args!("{version:#x}"));

        disable(&dev, cap)?;
        dev.set_bus_master(true)?;
        let mut admin = AdminQueue::new(dev.dma(), cap.dstrd())?;
        // From the enable on, the controller may DMA into the admin rings: a failed bring-up
        // stops it before they (and everything else it was given) are freed.
        let up = enable(&dev, cap, &admin).and_then(|()| bring_up(&dev, &opts, &mut admin));
        let (identify, identify_raw, namespaces, granted, shadow) = match up {
            Ok(v) => v,
            Err(e) => {
                if disable(&dev, cap).is_err() && stop_dma(&dev).is_err() {
                    tracing::error!("controller cannot be stopped after a failed bring-up");
                    // Its admin rings must outlive whatever it may still write into them.
                    std::mem::forget(admin);
                }
                return Err(e);
            }
        };
        let mdts_limit = identify.max_transfer(cap.mps_min()).unwrap_or(usize::MAX);
        let max_transfer = opts.max_transfer.min(mdts_limit).max(PAGE_SIZE);
        let shadowed = shadow.is_some();
        tracing::info!(
            namespaces = namespaces.len(),
            granted,
            max_transfer,
            shadowed,
            "controller ready"
        );
        Ok(Arc::new(Self {
            dev,
            cap,
            version,
            admin: Mutex::new(admin),
            identify,
            identify_raw,
            namespaces,
            granted,
            shadow,
            qids: Mutex::new(vec![false; usize::from(granted) + 1]),
            max_transfer,
            opts,
            epoch: AtomicU64::new(0),
            enabled: AtomicBool::new(true),
            vectors: Mutex::new(None),
        }))
    }

    /// The device the controller is reached through.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// The controller's capabilities register.
    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// The controller's version register (e.g. 0x10400 for 1.4).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Identify Controller data.
    pub fn identify(&self) -> &IdentifyController {
        &self.identify
    }

    /// The raw 4 KiB Identify Controller data structure.
    pub fn identify_raw(&self) -> &[u8] {
        &self.identify_raw
    }

    /// The active namespaces.
    pub fn namespaces(&self) -> &[Namespace] {
        &self.namespaces
    }

    /// Namespace `nsid`, if active.
    pub fn namespace(&self, nsid: u32) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.nsid == nsid)
    }

    /// I/O queue pairs the controller granted.
    pub fn io_queues_granted(&self) -> u16 {
        self.granted
    }

    /// Largest transfer per command, in bytes.
    pub fn max_transfer(&self) -> usize {
        self.max_transfer
    }

    /// The shadow doorbell pages, when the controller uses them.
    pub(crate) fn shadow_doorbells(&self) -> Option<&Arc<ShadowDoorbells>> {
        self.shadow.as_ref()
    }

    /// Whether I/O queues use shadow doorbells (Doorbell Buffer Config was accepted).
    pub fn uses_shadow_doorbells(&self) -> bool {
        self.shadow.is_some()
    }

    /// The options the controller was brought up with.
    pub fn options(&self) -> &ControllerOptions {
        &self.opts
    }

    /// The controller status register.
    pub fn status(&self) -> Csts {
        Csts(self.dev.read32(0, regs::CSTS))
    }

    /// Queue `qid`'s interrupt: a descriptor for MSI-X vector `qid`'s eventfd. The first call
    /// routes every vector a queue can use (one per granted queue, plus the admin queue's) to
    /// eventfds at once: VFIO on older kernels cannot add vectors to an enabled table.
    pub(crate) fn vector(&self, qid: u16) -> Result<EventFd, NvmeError> {
        let count = self.dev.msix_count();
        if count == 0 {
            return Err(NvmeError::NoMsix);
        }
        if u32::from(qid) >= count {
            return Err(NvmeError::NoVector { qid, vectors: count });
        }
        let mut vectors = self.vectors.lock().unwrap_or_else(|e| e.into_inner());
        if vectors.is_none() {
            let n = count.min(u32::from(self.granted) + 1);
            *vectors = Some(self.dev.enable_msix(n)?);
            tracing::debug!(vectors = n, "MSI-X enabled");
        }
        let fd = &vectors.as_ref().expect("set above")[usize::from(qid)];
        mfio_pci::dup_eventfd(fd).map_err(|e| {
            NvmeError::Pci(mfio_pci::PciError::Vfio {
                addr: self.dev.address(),
                op: "dup MSI-X eventfd",
                detail: e.to_string(),
            })
        })
    }

    pub(crate) fn release_qid(&self, qid: u16) {
        let mut qids = self.qids.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = qids.get_mut(usize::from(qid)) {
            *q = false;
        }
    }

    pub(crate) fn admin(&self) -> MutexGuard<'_, AdminQueue> {
        self.admin.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether the controller is enabled (false after a failed recovery).
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Times the controller was reset since bring-up.
    pub fn resets(&self) -> u64 {
        self.epoch() / 2
    }

    /// Resets the controller: disable (the device stops all DMA), then enable again with fresh
    /// admin queues. Every I/O queue fails what it had in flight with a `Fatal` error on its
    /// next poll and re-creates its queue pair on the device, so it works again afterwards.
    /// The driver calls this itself on a fatal status or a command that neither completes nor
    /// aborts; call it by hand to recover from anything else.
    ///
    /// Queues give their segments' memory back only once the device can no longer reach it:
    /// the epoch moves (which is what lets them fail and release) after CSTS.RDY has gone to 0,
    /// or, when the controller does not stop within CAP.TO, after bus mastering is turned off
    /// in the PCI command register (a function with it off issues no DMA). If even that
    /// fails, the epoch stays and the queues keep their memory: a reset that cannot stop the
    /// device returns an error and frees nothing.
    pub fn reset(&self) -> Result<(), NvmeError> {
        let span = tracing::warn_span!("nvme_reset", dev = %self.dev.address());
        let _g = span.enter();
        let mut admin = self.admin();
        if self.dev.is_removed() {
            return self.give_back();
        }
        self.enabled.store(false, Ordering::Release);
        let disabled = disable(&self.dev, self.cap);
        if let Err(e) = &disabled {
            // All ones from CSTS is a function that is gone, or one whose memory space is off
            // while it may still master: stop_dma tells them apart (config space reads all ones
            // only when it is gone).
            tracing::error!(error = %e, "controller did not stop: turning bus mastering off");
            stop_dma(&self.dev)?;
        }
        // Odd epoch: a reset in progress (or one that failed). Queues seeing a new epoch fail
        // everything they hold, which is safe from here on: the device touches no memory. The
        // next even epoch means enabled again.
        self.epoch.fetch_or(1, Ordering::AcqRel);
        disabled?;
        admin.reset();
        self.dev.set_bus_master(true)?;
        enable(&self.dev, self.cap, &admin)?;
        let t = self.opts.admin_timeout;
        let granted = admin.set_queue_count(&self.dev, self.opts.io_queues.max(1), t)?;
        if let Some(pages) = &self.shadow {
            // A reset forgets the buffers: give them again, zeroed, before any queue returns.
            pages.clear();
            admin.doorbell_buffer_config(&self.dev, pages.iovas(), t)?;
        }
        if granted < self.granted {
            tracing::warn!(granted, before = self.granted, "fewer queues granted after reset");
        }
        self.enabled.store(true, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        tracing::warn!("controller reset complete");
        Ok(())
    }

    /// The kernel asked for the device back (hot removal): stop the controller while its
    /// registers may still answer, give the device back, and let the queues fail everything
    /// with `Gone` (the odd epoch). Never enabled again; called under the admin lock, once
    /// per removal (later calls find it done).
    #[cold]
    fn give_back(&self) -> Result<(), NvmeError> {
        let first = self.enabled.swap(false, Ordering::AcqRel) || self.epoch() % 2 == 0;
        if first {
            tracing::warn!("device removed: stopping the controller and releasing it");
            // Bounded: a function already gone reads all ones, which ends the wait at once.
            let _ = disable(&self.dev, self.cap);
        }
        self.dev.release();
        // The release turned bus mastering off; without that proof the memory stays.
        stop_dma(&self.dev)?;
        self.epoch.fetch_or(1, Ordering::AcqRel);
        Err(NvmeError::Gone)
    }

    /// Recovery from a fatal status or a command that neither completes nor aborts.
    pub(crate) fn recover(&self) {
        if self.dev.is_removed() {
            let _ = self.reset();
            return;
        }
        tracing::error!("controller unresponsive or fatal: resetting it");
        if let Err(e) = self.reset() {
            tracing::error!(error = %e, "controller reset failed; I/O fails until the next reset");
        }
    }

    /// SMART / Health Information (log page 02h), controller-wide.
    pub fn smart_log(&self) -> Result<SmartLog, NvmeError> {
        let t = self.opts.admin_timeout;
        let data = self.admin().get_log_page(&self.dev, log::SMART_HEALTH, 0xffff_ffff, 512, t)?;
        Ok(SmartLog::parse(&data))
    }

    /// Error Information log entries (log page 01h), newest first as the controller keeps them.
    pub fn error_log(&self) -> Result<Vec<ErrorLogEntry>, NvmeError> {
        let t = self.opts.admin_timeout;
        let entries = usize::from(self.identify.elpe) + 1;
        let len = (entries * 64).min(PAGE_SIZE);
        let data = self.admin().get_log_page(&self.dev, log::ERROR_INFORMATION, 0, len, t)?;
        Ok(ErrorLogEntry::parse_all(&data))
    }

    /// A raw log page (`len` bytes, a multiple of 4 up to 4096).
    pub fn log_page(&self, lid: u8, nsid: u32, len: usize) -> Result<Vec<u8>, NvmeError> {
        let t = self.opts.admin_timeout;
        self.admin().get_log_page(&self.dev, lid, nsid, len, t)
    }

    /// Get Features (current value of feature `fid`), completion dword 0.
    pub fn get_features(&self, fid: u8) -> Result<u32, NvmeError> {
        let t = self.opts.admin_timeout;
        self.admin().get_features(&self.dev, fid, t)
    }

    /// Completions on the admin queue that matched no command.
    pub fn admin_stray_completions(&self) -> u64 {
        self.admin().stray
    }
}

impl<D: PciDevice> Drop for Controller<D> {
    fn drop(&mut self) {
        // Orderly shutdown: CC.SHN = normal, wait for CSTS.SHST = complete (bounded by CAP.TO).
        let cc = self.dev.read32(0, regs::CC);
        self.dev.write32(0, regs::CC, (cc & !Cc::SHN_MASK) | Cc::SHN_NORMAL);
        let deadline = Instant::now() + Duration::from_millis(self.cap.timeout_ms().max(500));
        loop {
            let csts = Csts(self.dev.read32(0, regs::CSTS));
            if csts.shst() == 2 || csts.is_gone() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        let stopped = disable(&self.dev, self.cap).is_ok() || stop_dma(&self.dev).is_ok();
        if self.vectors.get_mut().map_or(true, |v| v.is_some()) {
            let _ = self.dev.disable_msix();
        }
        if !stopped {
            // The admin rings and shadow pages go with `self`: a device that can be neither
            // disabled nor kept from DMA could write them after they are reused.
            // Not `eprintln!`: it panics on a closed stderr, and this must reach the abort.
            let _ = writeln!(
                std::io::stderr(),
                "mfio-nvme: controller {} can be neither disabled nor stopped from DMA; \
                 aborting rather than freeing memory it may still write",
                self.dev.address()
            );
            std::process::abort();
        }
    }
}

/// What bring-up learns once the controller is enabled: identify data, namespaces, the queues
/// granted and the shadow doorbell pages it took.
type BroughtUp = (IdentifyController, Vec<u8>, Vec<Namespace>, u16, Option<Arc<ShadowDoorbells>>);

/// Bring-up after the enable: identify, namespaces, queue count, shadow doorbells.
fn bring_up<D: PciDevice>(
    dev: &D,
    opts: &ControllerOptions,
    admin: &mut AdminQueue,
) -> Result<BroughtUp, NvmeError> {
    let t = opts.admin_timeout;
    let identify_raw = admin.identify(dev, cns::CONTROLLER, 0, t)?;
    let identify = IdentifyController::parse(&identify_raw);
    tracing::info!(model = %identify.mn, serial = %identify.sn, fw = %identify.fr, mdts = identify.mdts, "identified");
    let mut namespaces = Vec::new();
    for nsid in admin.active_namespaces(dev, t)? {
        let data = admin.identify(dev, cns::NAMESPACE, nsid, t)?;
        if let Some(ns) = Namespace::from_identify(nsid, IdentifyNamespace::parse(&data), data) {
            namespaces.push(ns);
        }
    }
    if opts.data_pointer == DataPointer::Sgl && !identify.supports_sgl() {
        return Err(NvmeError::Unsupported(
            "SGLs were asked for (DataPointer::Sgl) but the controller does not offer them \
             (Identify SGLS = 0): use DataPointer::Auto or Prp",
        ));
    }
    let granted = admin.set_queue_count(dev, opts.io_queues.max(1), t)?;
    let shadow = if opts.shadow_doorbells
        && identify.oacs & IdentifyController::OACS_DOORBELL_BUFFER_CONFIG != 0
    {
        let pages = Arc::new(ShadowDoorbells::new(dev.dma())?);
        match admin.doorbell_buffer_config(dev, pages.iovas(), t) {
            Ok(()) => Some(pages),
            Err(e) => {
                tracing::warn!(error = %e, "Doorbell Buffer Config failed: registers only");
                // It may have taken the pages all the same (a timeout): never free them.
                std::mem::forget(pages);
                None
            }
        }
    } else {
        None
    };
    Ok((identify, identify_raw, namespaces, granted, shadow))
}

/// Stops the device's DMA through the PCI layer (bus mastering off, read back).
fn stop_dma<D: PciDevice>(dev: &D) -> Result<(), NvmeError> {
    if dev.stop_dma() {
        Ok(())
    } else {
        Err(NvmeError::DmaNotStopped)
    }
}

/// Clears CC.EN and waits for CSTS.RDY = 0 (bounded by CAP.TO).
fn disable<D: PciDevice>(dev: &D, cap: Cap) -> Result<(), NvmeError> {
    let cc = dev.read32(0, regs::CC);
    if cc & Cc::EN != 0 {
        dev.write32(0, regs::CC, cc & !Cc::EN);
    }
    wait_ready(dev, cap, false)
}

/// Programs the admin queues and CC, sets CC.EN and waits for CSTS.RDY = 1.
fn enable<D: PciDevice>(dev: &D, cap: Cap, admin: &AdminQueue) -> Result<(), NvmeError> {
    let n = u32::from(ADMIN_ENTRIES - 1);
    dev.write32(0, regs::AQA, (n << 16) | n);
    dev.write64(0, regs::ASQ, admin.sq.iova());
    dev.write64(0, regs::ACQ, admin.cq.iova());
    dev.write32(0, regs::CC, Cc::enabled_nvm().0);
    wait_ready(dev, cap, true)
}

fn wait_ready<D: PciDevice>(dev: &D, cap: Cap, ready: bool) -> Result<(), NvmeError> {
    let ms = cap.timeout_ms().max(500);
    let deadline = Instant::now() + Duration::from_millis(ms);
    loop {
        let csts = Csts(dev.read32(0, regs::CSTS));
        if csts.is_gone() {
            return Err(NvmeError::Gone);
        }
        if csts.rdy() == ready {
            return Ok(());
        }
        if ready && csts.cfs() {
            return Err(NvmeError::Fatal);
        }
        if Instant::now() > deadline {
            let state = if ready { "ready" } else { "disabled" };
            return Err(NvmeError::ReadyTimeout { state, ms });
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}
