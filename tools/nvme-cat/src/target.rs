//! What DEVICE names: a VFIO-bound PCI function, the in-process model, or an image file.

use mfio::backends::{FileBackend, FileOptions};
use mfio_nvme::model::{ModelConfig, NamespaceConfig, NvmeModel};
use mfio_nvme::{Controller, ControllerOptions};
use mfio_pci::{PciAddress, Sysfs, VfioPci};
use std::sync::Arc;

/// A parsed DEVICE argument.
pub enum Spec {
    /// A PCI function, opened through VFIO.
    Pci(PciAddress),
    /// The in-process NVMe model.
    Model(ModelConfig),
    /// An image file or block device.
    File(String),
    /// The in-process virtio-blk model.
    VirtioModel(mfio_virtio::model::ModelOptions),
}

/// A virtio-blk device behind any backing.
pub enum Virtio {
    /// Through VFIO.
    Vfio(mfio_virtio::VirtioBlk<VfioPci>),
    /// The model.
    Model(mfio_virtio::VirtioBlk<mfio_virtio::model::VirtioBlkModel>),
}

/// An NVMe controller behind any device backing.
pub enum Nvme {
    /// Through VFIO.
    Vfio(Arc<Controller<VfioPci>>),
    /// The model.
    Model(Arc<Controller<NvmeModel>>),
}

/// Parses DEVICE.
pub fn parse(s: &str) -> Result<Spec, String> {
    if let Some(path) = s.strip_prefix("file:") {
        return Ok(Spec::File(path.to_string()));
    }
    if s == "virtio-model" || s == "virtio-model:null" {
        // `:null`: the model checks every request but stores nothing (as the host benches use).
        let null = s.ends_with(":null");
        return Ok(Spec::VirtioModel(mfio_virtio::model::ModelOptions {
            null,
            ..Default::default()
        }));
    }
    if s == "model" || s.starts_with("model:") {
        return model_config(s.strip_prefix("model").unwrap_or("").trim_start_matches(':'))
            .map(Spec::Model);
    }
    let full = if s.matches(':').count() == 1 { format!("0000:{s}") } else { s.to_string() };
    match full.parse::<PciAddress>() {
        Ok(a) => Ok(Spec::Pci(a)),
        Err(_) if std::path::Path::new(s).exists() => Ok(Spec::File(s.to_string())),
        Err(e) => Err(format!(
            "{e}; DEVICE is a PCI address (0000:00:04.0), `model[:ns=64M/512,...]` or `file:PATH`"
        )),
    }
}

/// `ns=SIZE/LBA,SIZE/LBA` (SIZE with K/M/G), `mdts=N`, `null=1`, `latency=MICROS` (I/O
/// completes that long after its doorbell, from the model's thread), separated by `;`.
fn model_config(opts: &str) -> Result<ModelConfig, String> {
    let mut cfg = ModelConfig {
        namespaces: vec![
            NamespaceConfig::new((64 << 20) / 512, 512),
            NamespaceConfig::new((16 << 20) / 4096, 4096),
        ],
        mdts: 7,
        ..ModelConfig::default()
    };
    for kv in opts.split(';').filter(|s| !s.is_empty()) {
        let (k, v) =
            kv.split_once('=').ok_or_else(|| format!("model option `{kv}`: expected KEY=VALUE"))?;
        match k {
            "ns" => {
                cfg.namespaces = v
                    .split(',')
                    .map(|n| {
                        let (size, lba) = n.split_once('/').unwrap_or((n, "512"));
                        let lba: u32 = lba.parse().map_err(|_| format!("LBA size `{lba}`"))?;
                        if lba != 512 && lba != 4096 {
                            return Err(format!("LBA size {lba}: the model offers 512 or 4096"));
                        }
                        let bytes = parse_size(size)?;
                        if bytes < u64::from(lba) {
                            return Err(format!(
                                "namespace size {size}: less than one {lba}-byte LBA; give at least {lba}"
                            ));
                        }
                        Ok(NamespaceConfig::new(bytes / u64::from(lba), lba))
                    })
                    .collect::<Result<_, String>>()?
            }
            "mdts" => cfg.mdts = v.parse().map_err(|_| format!("mdts `{v}`"))?,
            "null" => cfg.null_io = v == "1" || v == "true",
            "latency" => {
                let micros = v.parse().map_err(|_| format!("latency `{v}`: microseconds"))?;
                cfg.completion = mfio_nvme::model::CompletionMode::Timed { micros };
            }
            _ => return Err(format!("unknown model option `{k}` (ns, mdts, null, latency)")),
        }
    }
    Ok(cfg)
}

/// `4096`, `64K`, `16M`, `2G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("`{s}` is not a size (e.g. 4096, 64K, 16M, 2G)"))
}

/// Opens DEVICE as an NVMe controller.
pub fn open_nvme(device: &str, opts: ControllerOptions) -> Result<Nvme, String> {
    match parse(device)? {
        Spec::Model(cfg) => {
            let ctrl = Controller::new(NvmeModel::new(cfg), opts).map_err(|e| e.to_string())?;
            Ok(Nvme::Model(ctrl))
        }
        Spec::Pci(addr) => {
            check_is_nvme(addr)?;
            let dev = VfioPci::open(addr).map_err(|e| e.to_string())?;
            let ctrl = Controller::new(dev, opts).map_err(|e| format!("{addr}: {e}"))?;
            Ok(Nvme::Vfio(ctrl))
        }
        Spec::File(p) => Err(format!(
            "{p} is an image file, not an NVMe controller: this command needs a controller \
             (a PCI address or `model`); read, write and bench work on files"
        )),
        Spec::VirtioModel(_) => {
            Err("virtio-model is a virtio-blk device: read, write and bench work on it".into())
        }
    }
}

/// Whether the PCI function at `addr` is a virtio-blk device.
pub fn is_virtio(addr: PciAddress) -> bool {
    Sysfs::system().function(addr).is_ok_and(|f| f.is_virtio_blk())
}

/// Opens a virtio-blk device (PCI address or the model) with `queues` request queues.
/// `ring`: force a virtqueue layout (default: packed when the device offers it).
pub fn open_virtio(
    spec: Spec,
    queues: u16,
    ring: Option<mfio_virtio::RingLayout>,
    completion: mfio_pci::CompletionMode,
) -> Result<Virtio, String> {
    let opts = mfio_virtio::Options { queues, ring, completion, ..Default::default() };
    match spec {
        Spec::Pci(addr) => {
            let dev = VfioPci::open(addr).map_err(|e| e.to_string())?;
            mfio_virtio::VirtioBlk::new(dev, &opts)
                .map(Virtio::Vfio)
                .map_err(|e| format!("{addr}: {e}"))
        }
        Spec::VirtioModel(m) => {
            let dev = mfio_virtio::model::VirtioBlkModel::new(m);
            mfio_virtio::VirtioBlk::new(dev, &opts).map(Virtio::Model).map_err(|e| e.to_string())
        }
        _ => Err("not a virtio-blk device".into()),
    }
}

/// Refuses a function that is not an NVMe controller, naming what it is.
fn check_is_nvme(addr: PciAddress) -> Result<(), String> {
    let f = Sysfs::system().function(addr).map_err(|e| e.to_string())?;
    if f.class >> 8 != 0x0108 {
        return Err(format!(
            "{addr} is not an NVMe controller (class {:#08x}, vendor {:04x} device {:04x})",
            f.class, f.vendor, f.device
        ));
    }
    Ok(())
}

/// Opens an image file for block I/O.
pub fn open_file(path: &str) -> Result<FileBackend, String> {
    FileBackend::open_with(path, &FileOptions::default()).map_err(|e| format!("{path}: {e}"))
}
