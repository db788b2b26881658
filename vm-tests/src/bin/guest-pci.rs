//! Guest test of `mfio-pci` and `mfio-dma` against QEMU's real (emulated) devices.
//!
//! Run inside the QEMU guest by `scripts/vm-tests.sh`, in IOMMU (VFIO type1) and no-IOMMU
//! mode (or by hand: `scripts/vm-run.sh [--mode noiommu] -- guest-pci`). For each device:
//! - open it through `VfioPci` (the mode must match `MFIO_IOMMU_MODE`), enable bus mastering;
//! - NVMe: read CAP and VS and check them, allocate and map DMA memory, bring the admin queue
//!   up (disable, AQA/ASQ/ACQ, CC.EN, wait for RDY) and run one Identify Controller through the
//!   mapped memory; the model string must start with "QEMU NVMe"; then disable again;
//! - virtio-blk: find the virtio-pci common config through the vendor capabilities, reset the
//!   device, read the device features: VERSION_1 (bit 32) must be offered, and in IOMMU mode
//!   ACCESS_PLATFORM (bit 33) too.
//!
//! Devices come from `MFIO_NVME_PCI` / `MFIO_VIRTIO_PCI`, else from sysfs enumeration.
//! Every step prints a line; the first failure ends the run with exit code 1.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use mfio_dma::{DmaBuffer, PagePolicy, PAGE_SIZE};
use mfio_pci::{IommuMode, PciAddress, PciDevice, Sysfs, VfioPci, CAP_ID_VENDOR};

use vm_tests::{ensure, R};

fn main() -> ExitCode {
    vm_tests::run_main("guest-pci", run)
}

fn expected_mode() -> R<Option<IommuMode>> {
    match std::env::var("MFIO_IOMMU_MODE").as_deref() {
        Ok("iommu") => Ok(Some(IommuMode::Type1)),
        Ok("noiommu") => Ok(Some(IommuMode::NoIommu)),
        Ok(other) => Err(format!("MFIO_IOMMU_MODE={other}: expected iommu or noiommu")),
        Err(_) => Ok(None),
    }
}

/// The device address from `var`, else the first function sysfs shows that `pick` accepts.
fn device(var: &str, what: &str, pick: fn(&mfio_pci::PciFunction) -> bool) -> R<PciAddress> {
    if let Ok(s) = std::env::var(var) {
        return s.parse().map_err(|e| format!("{var}: {e}"));
    }
    let all = Sysfs::system().list().map_err(|e| e.to_string())?;
    all.iter()
        .find(|f| pick(f))
        .map(|f| f.address)
        .ok_or_else(|| format!("{var} unset and no {what} found in sysfs"))
}

fn open(addr: PciAddress, want: Option<IommuMode>) -> R<VfioPci> {
    let d = VfioPci::open(addr).map_err(|e| format!("open {addr}: {e}"))?;
    println!(
        "{addr}: opened, mode {:?}, BAR lengths {:?}",
        d.mode(),
        (0..6).map(|b| d.bar_len(b)).collect::<Vec<_>>()
    );
    if let Some(w) = want {
        ensure!(d.mode() == w, "{addr}: opened in {:?} mode, MFIO_IOMMU_MODE says {w:?}", d.mode());
    }
    d.set_bus_master(true).map_err(|e| format!("{addr}: bus master: {e}"))?;
    let cmd = d.config_read16(mfio_pci::CONFIG_COMMAND).map_err(|e| e.to_string())?;
    ensure!(
        cmd & mfio_pci::COMMAND_BUS_MASTER != 0,
        "{addr}: bus master bit did not stick (command {cmd:#x})"
    );
    Ok(d)
}

fn run() -> R<()> {
    let want = expected_mode()?;
    let nvme = device("MFIO_NVME_PCI", "NVMe controller", |f| f.is_nvme())?;
    let vblk = device("MFIO_VIRTIO_PCI", "virtio-blk device", |f| f.is_virtio_blk())?;
    nvme_identify(nvme, want)?;
    virtio_features(vblk, want)?;
    Ok(())
}

// NVMe controller registers (BAR0).
const CAP: u64 = 0x00;
const VS: u64 = 0x08;
const CC: u64 = 0x14;
const CSTS: u64 = 0x1c;
const AQA: u64 = 0x24;
const ASQ: u64 = 0x28;
const ACQ: u64 = 0x30;
const DOORBELLS: u64 = 0x1000;
const ADMIN_QSIZE: u32 = 16;

fn wait_ready(d: &VfioPci, ready: bool, timeout: Duration) -> R<()> {
    let start = Instant::now();
    loop {
        let csts = d.read32(0, CSTS);
        ensure!(csts != u32::MAX, "CSTS reads all ones: the device is gone");
        ensure!(csts & 2 == 0, "controller fatal status (CSTS {csts:#x})");
        if (csts & 1 == 1) == ready {
            return Ok(());
        }
        ensure!(
            start.elapsed() < timeout,
            "CSTS.RDY did not become {} within {timeout:?} (CSTS {csts:#x})",
            ready as u8
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn alloc_page(d: &VfioPci, what: &str) -> R<DmaBuffer> {
    let b = d
        .dma()
        .alloc_with(PAGE_SIZE, PagePolicy::Auto)
        .map_err(|e| format!("DMA alloc for {what}: {e}"))?;
    ensure!(b.contiguous_iova(0, PAGE_SIZE).is_some(), "{what}: one page is not IOVA-contiguous");
    Ok(b)
}

fn nvme_identify(addr: PciAddress, want: Option<IommuMode>) -> R<()> {
    let d = open(addr, want)?;
    let bar0 = d.require_bar(0).map_err(|e| e.to_string())?;
    ensure!(bar0 >= 0x2000, "NVMe BAR0 is only {bar0:#x} bytes");
    println!("{addr}: BAR0 {bar0:#x} bytes, mapped: {}", d.bar_is_mapped(0));

    let cap = d.read64(0, CAP);
    let vs = d.read32(0, VS);
    let mqes = (cap & 0xffff) as u32 + 1;
    let dstrd = ((cap >> 32) & 0xf) as u32;
    let to = Duration::from_millis(((cap >> 24) & 0xff).max(1) * 500);
    let css_nvm = (cap >> 37) & 1;
    let mpsmin = (cap >> 48) & 0xf;
    println!("{addr}: CAP {cap:#018x} (MQES+1 {mqes}, DSTRD {dstrd}, TO {to:?}, CSS.NVM {css_nvm}, MPSMIN {mpsmin}), VS {vs:#010x}");
    ensure!(cap != u64::MAX && cap != 0, "implausible CAP {cap:#x}");
    ensure!(mqes >= 2, "CAP.MQES+1 = {mqes}: too small");
    ensure!(css_nvm == 1, "controller does not support the NVM command set");
    ensure!(mpsmin == 0, "CAP.MPSMIN {mpsmin}: 4 KiB pages not supported");
    ensure!(vs >> 16 >= 1 && vs != u32::MAX, "implausible VS {vs:#x}");

    let asq = alloc_page(&d, "admin SQ")?;
    let acq = alloc_page(&d, "admin CQ")?;
    let id = alloc_page(&d, "identify data")?;
    println!(
        "{addr}: DMA via {} on {:?} pages: ASQ {} ACQ {} data {}",
        d.dma().mapper().name(),
        asq.page_kind(),
        asq.iova(),
        acq.iova(),
        id.iova()
    );
    // The hot-path translation agrees with the buffer's own IOVA.
    let mut tr = d.dma().translator();
    let segs: Vec<_> = tr
        .segments(id.as_ptr(), PAGE_SIZE)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("translating the identify buffer: {e}"))?;
    ensure!(
        segs.len() == 1 && segs[0].iova == id.iova(),
        "translation {segs:?} disagrees with {}",
        id.iova()
    );
    if d.mode() == IommuMode::Type1 {
        ensure!(id.iova().get() < 1 << 39, "IOVA {} beyond the 39-bit IOMMU limit", id.iova());
    }

    // MSI-X vector 0 (the admin CQ's) to an eventfd: the Identify completion must signal it.
    // Before CC.EN: QEMU's controller takes up the admin CQ's vector only when it creates the
    // queue, and only if MSI-X is on by then.
    let msix = d.msix_count();
    ensure!(msix >= 1, "NVMe function reports no MSI-X vectors");
    let irq = d.enable_msix(1).map_err(|e| format!("enable MSI-X: {e}"))?;
    println!(
        "{addr}: {msix} MSI-X vectors, vector 0 routed to an eventfd; reset offered: {}",
        d.can_reset()
    );

    // Disable, program the admin queues, enable.
    d.write32(0, CC, 0);
    wait_ready(&d, false, to)?;
    d.write32(0, AQA, ((ADMIN_QSIZE - 1) << 16) | (ADMIN_QSIZE - 1));
    d.write64(0, ASQ, asq.iova().get());
    d.write64(0, ACQ, acq.iova().get());
    ensure!(d.read64(0, ASQ) == asq.iova().get(), "ASQ read back {:#x}", d.read64(0, ASQ));
    // EN, CSS NVM, MPS 4 KiB, round robin, IOSQES 6 (64 B), IOCQES 4 (16 B).
    d.write32(0, CC, 1 | (6 << 16) | (4 << 20));
    wait_ready(&d, true, to)?;
    println!("{addr}: controller enabled");

    // Identify Controller: opcode 0x06, CID 1, PRP1 = data page, CNS 1.
    let sqe = asq.mem();
    sqe.write_le32(0, 0x06 | (1 << 16));
    sqe.write_le32(4, 0);
    sqe.write_le64(24, id.iova().get());
    sqe.write_le64(32, 0);
    sqe.write_le32(40, 1);
    let stride = 4u64 << dstrd;
    d.write32(0, DOORBELLS, 1); // SQ 0 tail
    let cq = acq.mem();
    let start = Instant::now();
    let dw3 = loop {
        let dw3 = u32::from_le(cq.load_acquire_u32(12));
        if dw3 & (1 << 16) != 0 {
            break dw3;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(10),
            "no completion for Identify within 10 s (CSTS {:#x})",
            d.read32(0, CSTS)
        );
        std::hint::spin_loop();
    };
    d.write32(0, DOORBELLS + stride, 1); // CQ 0 head
    let status = dw3 >> 17;
    ensure!(dw3 & 0xffff == 1, "completion for CID {} instead of 1", dw3 & 0xffff);
    ensure!(
        status == 0,
        "Identify failed: status {status:#x} (SCT {}, SC {:#x})",
        (status >> 8) & 7,
        status & 0xff
    );
    let vid = id.mem().read_le16(0);
    let mut mn = [0u8; 40];
    id.mem().copy_to_slice(24, &mut mn);
    let model = String::from_utf8_lossy(&mn).trim_end().to_string();
    let mut sn = [0u8; 20];
    id.mem().copy_to_slice(4, &mut sn);
    println!(
        "{addr}: Identify: VID {vid:#06x}, model {model:?}, serial {:?}, took {:?}",
        String::from_utf8_lossy(&sn).trim_end(),
        start.elapsed()
    );
    ensure!(model.starts_with("QEMU NVMe"), "model {model:?} does not start with \"QEMU NVMe\"");
    ensure!(vid == 0x1b36, "PCI vendor in Identify is {vid:#x}, expected 0x1b36");

    let start = Instant::now();
    let signalled = loop {
        match irq[0].read() {
            Ok(n) => break n,
            Err(mfio_pci::Errno::EAGAIN) if start.elapsed() < Duration::from_secs(2) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(format!("no MSI-X interrupt for the admin completion: {e}")),
        }
    };
    println!("{addr}: MSI-X vector 0 signalled {signalled} time(s)");
    d.disable_msix().map_err(|e| format!("disable MSI-X: {e}"))?;

    dma_big_buffer(&d)?;

    // Leave the controller disabled for the next program.
    d.write32(0, CC, 0);
    wait_ready(&d, false, to)?;
    d.set_bus_master(false).map_err(|e| e.to_string())?;
    println!("{addr}: NVMe OK");
    Ok(())
}

/// A 4 MiB buffer: huge pages when the guest has them; its translation must cover it exactly,
/// in 2 MiB-or-larger pieces on huge pages, and be one piece under an IOMMU. (Nothing is said
/// of the bytes around it: the kernel may place other DMA regions right next to it.)
fn dma_big_buffer(d: &VfioPci) -> R<()> {
    let len = 4 << 20;
    let b = d.dma().alloc(len).map_err(|e| format!("4 MiB DMA alloc: {e}"))?;
    let mut tr = d.dma().translator();
    let segs: Vec<_> = tr
        .segments(b.as_ptr(), len)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("translating the 4 MiB buffer: {e}"))?;
    ensure!(
        segs.iter().map(|s| s.len).sum::<usize>() == len,
        "segments {segs:?} do not cover 4 MiB"
    );
    println!(
        "{}: 4 MiB buffer on {:?} pages: {} IOVA segment(s), first at {}",
        d.address(),
        b.page_kind(),
        segs.len(),
        segs[0].iova
    );
    match (d.mode(), b.page_kind()) {
        (IommuMode::Type1, _) => ensure!(segs.len() == 1, "type1 mapping split: {segs:?}"),
        (IommuMode::NoIommu, mfio_dma::PageKind::Huge2M) => {
            ensure!(segs.iter().all(|s| s.len >= 2 << 20), "huge pages split below 2 MiB: {segs:?}")
        }
        (IommuMode::NoIommu, mfio_dma::PageKind::Small4K) => {}
    }
    Ok(())
}

// virtio-pci capability types and common config offsets.
const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;

fn virtio_features(addr: PciAddress, want: Option<IommuMode>) -> R<()> {
    let d = open(addr, want)?;
    let caps = d.capabilities().map_err(|e| e.to_string())?;
    let mut common = None;
    for (id, off) in caps {
        if id != CAP_ID_VENDOR {
            continue;
        }
        let cfg_type = d.config_read8(off + 3).map_err(|e| e.to_string())?;
        if cfg_type == VIRTIO_PCI_CAP_COMMON_CFG {
            let bar = d.config_read8(off + 4).map_err(|e| e.to_string())?;
            let offset = d.config_read32(off + 8).map_err(|e| e.to_string())?;
            let len = d.config_read32(off + 12).map_err(|e| e.to_string())?;
            common = Some((bar, u64::from(offset), u64::from(len)));
            break;
        }
    }
    let (bar, base, len) =
        common.ok_or("no virtio common config capability: not a modern virtio device?")?;
    let bar_len = d.require_bar(bar).map_err(|e| e.to_string())?;
    ensure!(
        base + len <= bar_len && len >= 0x38,
        "common config {base:#x}+{len:#x} does not fit BAR{bar} ({bar_len:#x})"
    );
    println!(
        "{addr}: common config in BAR{bar} at {base:#x} ({len:#x} bytes), BAR mapped: {}",
        d.bar_is_mapped(bar)
    );

    // Reset: the kernel driver left the device with status bits set.
    d.write8(bar, base + DEVICE_STATUS, 0);
    let start = Instant::now();
    while d.read8(bar, base + DEVICE_STATUS) != 0 {
        ensure!(start.elapsed() < Duration::from_secs(5), "device status did not reset to 0");
        std::thread::sleep(Duration::from_millis(1));
    }
    d.write32(bar, base + DEVICE_FEATURE_SELECT, 0);
    let lo = d.read32(bar, base + DEVICE_FEATURE);
    d.write32(bar, base + DEVICE_FEATURE_SELECT, 1);
    let hi = d.read32(bar, base + DEVICE_FEATURE);
    let features = u64::from(hi) << 32 | u64::from(lo);
    let queues = d.read16(bar, base + NUM_QUEUES);
    println!("{addr}: device features {features:#018x}, {queues} queue(s)");
    ensure!(
        features & VIRTIO_F_VERSION_1 != 0,
        "VERSION_1 (bit 32) not offered: features {features:#x}"
    );
    ensure!(queues >= 1, "device reports no queues");
    if d.mode() == IommuMode::Type1 {
        ensure!(
            features & VIRTIO_F_ACCESS_PLATFORM != 0,
            "ACCESS_PLATFORM (bit 33) not offered under an IOMMU: QEMU needs iommu_platform=on"
        );
    }
    d.set_bus_master(false).map_err(|e| e.to_string())?;
    println!("{addr}: virtio OK");
    Ok(())
}
