//! read and write: byte or LBA ranges between a device and stdout/stdin or a file.

use crate::target::{is_virtio, open_file, open_nvme, open_virtio, parse, parse_size, Spec};
use crate::{with_ctrl, with_virtio};
use clap::Args;
use mfio::{block_on, BlockCommands, BlockDevice, IoBufMut, ReadAt, Window, WriteAt};
use mfio_dma::DmaBuffer;
use mfio_nvme::ControllerOptions;
use mfio_pci::PciDevice;
use std::io::{IsTerminal, Read, Write};
use std::time::Instant;

/// Bytes per I/O of a transfer.
const CHUNK: usize = 1 << 20;

/// Where a transfer goes on the device.
#[derive(Args, Debug, Clone)]
pub struct Range {
    /// Start in bytes (K/M/G suffixes allowed).
    #[arg(long, conflicts_with = "lba")]
    offset: Option<String>,
    /// Length in bytes (K/M/G suffixes allowed).
    #[arg(long, conflicts_with = "count")]
    length: Option<String>,
    /// Start in logical blocks.
    #[arg(long)]
    lba: Option<u64>,
    /// Length in logical blocks.
    #[arg(long)]
    count: Option<u64>,
    /// Namespace ID (NVMe).
    #[arg(short = 'n', long, default_value_t = 1)]
    nsid: u32,
}

/// `nvme-cat read`.
#[derive(Args, Debug)]
pub struct ReadArgs {
    /// PCI address, `model[:...]`, `virtio-model[:null]` or `file:PATH`.
    device: String,
    #[command(flatten)]
    range: Range,
    /// Write the data here instead of stdout.
    #[arg(short = 'O', long = "output-file")]
    output: Option<String>,
}

/// `nvme-cat write`.
#[derive(Args, Debug)]
pub struct WriteArgs {
    /// PCI address, `model[:...]`, `virtio-model[:null]` or `file:PATH`.
    device: String,
    #[command(flatten)]
    range: Range,
    /// Read the data from here instead of stdin.
    #[arg(short = 'I', long = "input-file")]
    input: Option<String>,
    /// Pad the data with zeroes to a whole number of blocks.
    #[arg(long)]
    pad: bool,
    /// Read the range back after writing and compare.
    #[arg(long)]
    verify: bool,
}

/// A buffer a transfer can move data through: a Vec, or DMA memory (zero copy).
trait Chunk: IoBufMut {
    fn copy_out(&self, len: usize, out: &mut [u8]);
    fn copy_in(&mut self, data: &[u8]);
}

impl Chunk for Vec<u8> {
    fn copy_out(&self, len: usize, out: &mut [u8]) {
        out[..len].copy_from_slice(&self[..len]);
    }
    fn copy_in(&mut self, data: &[u8]) {
        self[..data.len()].copy_from_slice(data);
    }
}

impl Chunk for Window<DmaBuffer> {
    fn copy_out(&self, len: usize, out: &mut [u8]) {
        self.get_ref().mem().copy_to_slice(0, &mut out[..len]);
    }
    fn copy_in(&mut self, data: &[u8]) {
        self.get_ref().mem().copy_from_slice(0, data);
    }
}

/// Resolves the range against the device's block size and capacity.
fn resolve(
    r: &Range,
    bs: u64,
    cap: u64,
    default_len: Option<u64>,
) -> Result<(u64, Option<u64>), String> {
    let start = match (&r.offset, r.lba) {
        (Some(o), _) => parse_size(o)?,
        (None, Some(l)) => l.checked_mul(bs).ok_or("LBA overflows")?,
        (None, None) => 0,
    };
    let len = match (&r.length, r.count) {
        (Some(l), _) => Some(parse_size(l)?),
        (None, Some(c)) => Some(c.checked_mul(bs).ok_or("count overflows")?),
        (None, None) => default_len,
    };
    if start % bs != 0 {
        return Err(format!("offset {start} is not a multiple of the block size {bs}"));
    }
    if let Some(len) = len.filter(|l| l % bs != 0) {
        if default_len.is_none() {
            return Err(format!("length {len} is not a multiple of the block size {bs}"));
        }
    }
    if let Some(len) = len {
        let end = start.checked_add(len).ok_or("range overflows")?;
        if end > cap {
            return Err(format!(
                "LBA range out of range: {} blocks at LBA {} end past the device's {} blocks ({} bytes)",
                len.div_ceil(bs),
                start / bs,
                cap / bs,
                cap
            ));
        }
    }
    Ok((start, len))
}

struct Progress {
    total: u64,
    t0: Instant,
    on: bool,
}

impl Progress {
    fn new(total: u64) -> Self {
        Self { total, t0: Instant::now(), on: std::io::stderr().is_terminal() && total >= 8 << 20 }
    }
    fn show(&self, done: u64) {
        if self.on {
            let mb = done as f64 / 1e6;
            eprint!(
                "\r{:>6.1}% {:>10.1} MB {:>8.1} MB/s",
                100.0 * done as f64 / self.total.max(1) as f64,
                mb,
                mb / self.t0.elapsed().as_secs_f64().max(1e-6)
            );
        }
    }
    fn end(&self) {
        if self.on {
            eprintln!();
        }
    }
}

fn read_range<D: ReadAt + BlockDevice, B: Chunk>(
    dev: &D,
    start: u64,
    len: u64,
    mut buf: B,
    out: &mut dyn Write,
) -> Result<(), String> {
    let mut bytes = vec![0u8; CHUNK];
    let progress = Progress::new(len);
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        let (r, b) =
            block_on(dev, dev.read_all(start + done, Window::new(buf, 0, n).ok_or("chunk")?));
        buf = b.into_inner();
        r.map_err(|e| format!("read at byte {}: {e}", start + done))?;
        buf.copy_out(n, &mut bytes);
        out.write_all(&bytes[..n]).map_err(|e| format!("output: {e}"))?;
        done += n as u64;
        progress.show(done);
    }
    progress.end();
    out.flush().map_err(|e| format!("output: {e}"))
}

fn write_range<D: ReadAt + WriteAt + BlockDevice, B: Chunk>(
    dev: &D,
    start: u64,
    data: &[u8],
    mut buf: B,
    verify: bool,
) -> Result<(), String> {
    let progress = Progress::new(data.len() as u64);
    let mut done = 0usize;
    while done < data.len() {
        let n = (data.len() - done).min(CHUNK);
        buf.copy_in(&data[done..done + n]);
        let (r, b) = block_on(
            dev,
            dev.write_all(start + done as u64, Window::new(buf, 0, n).ok_or("chunk")?),
        );
        buf = b.into_inner();
        r.map_err(|e| format!("write at byte {}: {e}", start + done as u64))?;
        done += n;
        progress.show(done as u64);
    }
    progress.end();
    if verify {
        let mut back = Vec::with_capacity(data.len());
        read_range(dev, start, data.len() as u64, buf, &mut back)?;
        if back != data {
            let at = back.iter().zip(data).position(|(a, b)| a != b).unwrap_or(0);
            return Err(format!("verify: byte {} reads back differently", start + at as u64));
        }
        eprintln!("verified {} bytes", data.len());
    }
    Ok(())
}

/// `nvme-cat read`.
pub fn read(a: &ReadArgs) -> Result<(), String> {
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::fs::File::create(p).map_err(|e| format!("{p}: {e}"))?),
        None => Box::new(std::io::stdout().lock()),
    };
    match parse(&a.device)? {
        Spec::File(p) => {
            let dev = open_file(&p)?;
            let (start, len) =
                resolve(&a.range, u64::from(dev.block_size()), dev.capacity(), None)?;
            let len = len.unwrap_or(dev.capacity() - start);
            read_range(&dev, start, len, vec![0u8; CHUNK], &mut out)
        }
        s @ Spec::VirtioModel(_) => read_virtio(s, a, &mut out),
        s @ Spec::Pci(addr) if is_virtio(addr) => read_virtio(s, a, &mut out),
        _ => {
            let nvme =
                open_nvme(&a.device, ControllerOptions { io_queues: 1, ..Default::default() })?;
            with_ctrl!(&nvme, |c| {
                let q = c.io_queue(a.range.nsid).map_err(|e| e.to_string())?;
                let (start, len) =
                    resolve(&a.range, u64::from(q.block_size()), q.capacity(), None)?;
                let len = len.ok_or("give --length or --count (how much to read)")?;
                let dma = c.device().dma().alloc(CHUNK).map_err(|e| e.to_string())?;
                read_range(&q, start, len, Window::new(dma, 0, CHUNK).ok_or("chunk")?, &mut out)
            })
        }
    }
}

/// `nvme-cat write`.
pub fn write(a: &WriteArgs) -> Result<(), String> {
    let mut data = Vec::new();
    match &a.input {
        Some(p) => std::fs::File::open(p).and_then(|mut f| f.read_to_end(&mut data)),
        None => std::io::stdin().lock().read_to_end(&mut data),
    }
    .map_err(|e| format!("input: {e}"))?;
    let go = |bs: u64, cap: u64| -> Result<(u64, Vec<u8>), String> {
        let (start, len) = resolve(&a.range, bs, cap, Some(data.len() as u64))?;
        let mut d = data.clone();
        if let Some(len) = len {
            d.resize(len as usize, 0);
        }
        if d.len() as u64 % bs != 0 {
            if !a.pad {
                return Err(format!(
                    "{} bytes is not a whole number of {bs}-byte blocks: pass --pad to pad with zeroes",
                    d.len()
                ));
            }
            d.resize((d.len() as u64).next_multiple_of(bs) as usize, 0);
        }
        if start + d.len() as u64 > cap {
            return Err(format!(
                "LBA range out of range: the data ends past the device's {cap} bytes"
            ));
        }
        Ok((start, d))
    };
    match parse(&a.device)? {
        Spec::File(p) => {
            let dev = open_file(&p)?;
            let (start, d) = go(u64::from(dev.block_size()), dev.capacity())?;
            write_range(&dev, start, &d, vec![0u8; CHUNK], a.verify)
        }
        s @ (Spec::VirtioModel(_) | Spec::Pci(_))
            if matches!(s, Spec::VirtioModel(_)) || matches!(s, Spec::Pci(a) if is_virtio(a)) =>
        {
            let v = open_virtio(s, 1, None, mfio_pci::CompletionMode::Poll)?;
            with_virtio!(&v, |v| {
                let q = v.queue(0).map_err(|e| e.to_string())?;
                let (start, d) = go(u64::from(q.block_size()), q.capacity())?;
                let dma = v.device().dma().alloc(CHUNK).map_err(|e| e.to_string())?;
                write_range(&q, start, &d, Window::new(dma, 0, CHUNK).ok_or("chunk")?, a.verify)?;
                q.flush_blocking().map_err(|e| format!("flush: {e}"))
            })
        }
        _ => {
            let nvme =
                open_nvme(&a.device, ControllerOptions { io_queues: 1, ..Default::default() })?;
            with_ctrl!(&nvme, |c| {
                let q = c.io_queue(a.range.nsid).map_err(|e| e.to_string())?;
                let (start, d) = go(u64::from(q.block_size()), q.capacity())?;
                let dma = c.device().dma().alloc(CHUNK).map_err(|e| e.to_string())?;
                write_range(&q, start, &d, Window::new(dma, 0, CHUNK).ok_or("chunk")?, a.verify)?;
                q.flush_blocking().map_err(|e| format!("flush: {e}"))
            })
        }
    }
}

fn read_virtio(s: Spec, a: &ReadArgs, out: &mut dyn Write) -> Result<(), String> {
    let v = open_virtio(s, 1, None, mfio_pci::CompletionMode::Poll)?;
    with_virtio!(&v, |v| {
        let q = v.queue(0).map_err(|e| e.to_string())?;
        let (start, len) = resolve(&a.range, u64::from(q.block_size()), q.capacity(), None)?;
        let len = len.ok_or("give --length or --count (how much to read)")?;
        let dma = v.device().dma().alloc(CHUNK).map_err(|e| e.to_string())?;
        read_range(&q, start, len, Window::new(dma, 0, CHUNK).ok_or("chunk")?, out)
    })
}
