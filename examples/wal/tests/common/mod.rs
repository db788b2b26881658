//! The NVMe model as the log's device, and records that say what they should hold.
#![allow(dead_code)]

use mfio_devices::{Device, Nvme};
use mfio_nvme::model::{ModelConfig, NamespaceConfig, NvmeModel};
use mfio_nvme::{CompletionMode, Controller, ControllerOptions};
use mfio_wal::{Config, Lsn, Wal};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

pub type Dev = Nvme<NvmeModel>;

/// A one-namespace model of `blocks` blocks of `bs` bytes, with a volatile write cache.
pub fn model_config(blocks: u64, bs: u32) -> ModelConfig {
    ModelConfig { namespaces: vec![NamespaceConfig::new(blocks, bs)], ..ModelConfig::default() }
}

/// The model's namespace 1 as a device; commands time out after 300 ms.
pub fn device(model: &NvmeModel) -> Arc<Dev> {
    let opts = ControllerOptions { io_timeout: Duration::from_millis(300), ..Default::default() };
    let ctrl = Controller::new(model.clone(), opts).expect("bring-up on the model");
    Arc::new(Nvme::new(ctrl, 1, CompletionMode::Poll))
}

pub fn format(dev: &Arc<Dev>, cfg: &Config) -> Wal<Dev> {
    let q = Rc::new(dev.open_queue(0).unwrap());
    Wal::format_blocking(dev.clone(), q, cfg).expect("format")
}

/// Opens the log, returning the replayed records.
pub fn reopen(dev: &Arc<Dev>, cfg: &Config) -> (Wal<Dev>, Vec<(Lsn, Vec<u8>)>) {
    let q = Rc::new(dev.open_queue(0).unwrap());
    let mut got = Vec::new();
    let wal = Wal::open_blocking(dev.clone(), q, cfg, |lsn, p| got.push((lsn, p.to_vec())))
        .expect("recovery");
    (wal, got)
}

/// A payload that names its writer and number and checks itself: `len` bytes (at least 12)
/// of (writer, number, length) and then a pattern of them.
pub fn payload(writer: u32, n: u32, len: usize) -> Vec<u8> {
    let len = len.max(12);
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&writer.to_le_bytes());
    p.extend_from_slice(&n.to_le_bytes());
    p.extend_from_slice(&(len as u32).to_le_bytes());
    p.extend((12..len).map(|i| (i as u32 ^ writer.wrapping_mul(31) ^ n.wrapping_mul(7)) as u8));
    p
}

/// The (writer, number) of a payload made by [`payload`], if it is whole.
pub fn parse(p: &[u8]) -> Option<(u32, u32)> {
    let w = u32::from_le_bytes(p.get(0..4)?.try_into().ok()?);
    let n = u32::from_le_bytes(p.get(4..8)?.try_into().ok()?);
    let len = u32::from_le_bytes(p.get(8..12)?.try_into().ok()?) as usize;
    (len == p.len() && payload(w, n, len) == p).then_some((w, n))
}

/// Write commands the model has fetched.
pub fn writes(model: &NvmeModel) -> u64 {
    model.stats().io_commands.get(usize::from(mfio_nvme::spec::io::WRITE)).copied().unwrap_or(0)
}
