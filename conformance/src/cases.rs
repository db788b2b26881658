//! The checks. Each returns `Err(message)` naming what was expected and what happened.

use crate::{Case, Config, Rng, TestDevice};
use mfio::{block_on, ErrorKind, PartialError};

/// Names of every case, in the order they run.
pub const CASES: &[&str] = &[
    "geometry",
    "round_trip_random",
    "unaligned_memory",
    "zero_length",
    "boundaries",
    "misaligned",
    "large_transfers",
    "batched_concurrency",
    "queue_wrap",
    "partial_success_data",
];

/// A check's entry point.
type Run<D> = fn(&D, &Config) -> Result<(), String>;

pub(crate) fn all<D: TestDevice>() -> Vec<Case<D>> {
    let runs: [Run<D>; 10] = [
        geometry::<D>,
        round_trip_random::<D>,
        unaligned_memory::<D>,
        zero_length::<D>,
        boundaries::<D>,
        misaligned::<D>,
        large_transfers::<D>,
        batched_concurrency::<D>,
        queue_wrap::<D>,
        partial_success_data::<D>,
    ];
    CASES.iter().zip(runs).map(|(&name, run)| Case { name, run }).collect()
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(format!($($fmt)*));
        }
    };
}

fn bs<D: TestDevice>(dev: &D) -> u64 {
    u64::from(dev.block_size())
}

/// The part of the device the data tests use: whole blocks, at most `cfg.area` bytes.
fn area<D: TestDevice>(dev: &D, cfg: &Config) -> u64 {
    let b = bs(dev);
    dev.capacity().min(cfg.area) / b * b
}

fn io_err(what: &str, pos: u64, len: usize, e: PartialError) -> String {
    format!("{what} of {len} bytes at {pos}: {e}")
}

/// What the device should hold in the test area, where the suite has written.
struct Shadow {
    data: Vec<u8>,
    known: Vec<bool>,
    bs: usize,
}

impl Shadow {
    fn new(area: u64, bs: u64) -> Self {
        Self {
            data: vec![0; area as usize],
            known: vec![false; (area / bs) as usize],
            bs: bs as usize,
        }
    }
    fn write(&mut self, pos: u64, data: &[u8]) {
        let p = pos as usize;
        self.data[p..p + data.len()].copy_from_slice(data);
        for b in p / self.bs..(p + data.len()) / self.bs {
            self.known[b] = true;
        }
    }
    fn check(&self, pos: u64, got: &[u8]) -> Result<(), String> {
        let p = pos as usize;
        for (i, chunk) in got.chunks(self.bs).enumerate() {
            let blk = p / self.bs + i;
            let at = blk * self.bs;
            if self.known[blk] && chunk != &self.data[at..at + chunk.len()] {
                let off = chunk.iter().zip(&self.data[at..]).position(|(a, b)| a != b).unwrap_or(0);
                return Err(format!(
                    "data mismatch at byte {} (block {blk}): read {:#04x}, wrote {:#04x}",
                    at + off,
                    chunk[off],
                    self.data[at + off]
                ));
            }
        }
        Ok(())
    }
}

fn geometry<D: TestDevice>(dev: &D, _cfg: &Config) -> Result<(), String> {
    let b = bs(dev);
    ensure!(b >= 1 && b.is_power_of_two(), "block size {b} is not a power of two");
    ensure!(dev.capacity() >= 16 * b, "capacity {} is under 16 blocks", dev.capacity());
    ensure!(dev.capacity() % b == 0, "capacity {} is not whole blocks of {b}", dev.capacity());
    Ok(())
}

fn round_trip_random<D: TestDevice>(dev: &D, cfg: &Config) -> Result<(), String> {
    let (b, area) = (bs(dev), area(dev, cfg));
    let mut rng = Rng::new(cfg.seed);
    let mut shadow = Shadow::new(area, b);
    let max_blocks = (cfg.max_transfer as u64 / b).clamp(1, area / b);
    for round in 0..cfg.rounds {
        let len = (1 + rng.below(max_blocks)) * b;
        let pos = rng.below((area - len) / b + 1) * b;
        let data = rng.bytes(len as usize);
        dev.write_all_blocking(pos, &data).map_err(|e| io_err("write", pos, data.len(), e))?;
        shadow.write(pos, &data);
        if round % 4 == 3 {
            let len = (1 + rng.below(max_blocks)) * b;
            let pos = rng.below((area - len) / b + 1) * b;
            let mut got = vec![0u8; len as usize];
            dev.read_all_blocking(pos, &mut got).map_err(|e| io_err("read", pos, got.len(), e))?;
            shadow.check(pos, &got)?;
        }
    }
    // Everything written reads back.
    let chunk = (1u64 << 20).max(b) / b * b;
    let mut pos = 0;
    while pos < area {
        let len = chunk.min(area - pos) as usize;
        let mut got = vec![0u8; len];
        dev.read_all_blocking(pos, &mut got).map_err(|e| io_err("read", pos, len, e))?;
        shadow.check(pos, &got)?;
        pos += len as u64;
    }
    Ok(())
}

fn unaligned_memory<D: TestDevice>(dev: &D, cfg: &Config) -> Result<(), String> {
    let (b, area) = (bs(dev), area(dev, cfg));
    let mut rng = Rng::new(cfg.seed ^ 1);
    for (i, &mem_off) in [1usize, 3, 511, 4095, 4097].iter().enumerate() {
        let len = ((3 + i as u64) * 4096).div_ceil(b) * b;
        let pos = (area / 2 / b + i as u64 * 37) * b;
        let mut space = vec![0u8; len as usize + 8192];
        let data = rng.bytes(len as usize);
        space[mem_off..mem_off + data.len()].copy_from_slice(&data);
        dev.write_all_blocking(pos, &space[mem_off..mem_off + data.len()])
            .map_err(|e| io_err("write from unaligned memory", pos, data.len(), e))?;
        let mut back = vec![0u8; len as usize + 8192];
        let off2 = (mem_off * 7) % 4093 + 1;
        dev.read_all_blocking(pos, &mut back[off2..off2 + data.len()])
            .map_err(|e| io_err("read into unaligned memory", pos, data.len(), e))?;
        ensure!(
            back[off2..off2 + data.len()] == data[..],
            "data read into memory at offset {off2} differs from what was written from offset {mem_off}"
        );
        ensure!(
            back[..off2].iter().all(|&x| x == 0)
                && back[off2 + data.len()..].iter().all(|&x| x == 0),
            "a read wrote outside its buffer (memory offset {off2})"
        );
    }
    Ok(())
}

fn zero_length<D: TestDevice>(dev: &D, _cfg: &Config) -> Result<(), String> {
    ensure!(dev.read_at_blocking(0, &mut []) == Ok(0), "a 0-byte read did not return Ok(0)");
    ensure!(dev.write_at_blocking(0, &[]) == Ok(0), "a 0-byte write did not return Ok(0)");
    Ok(())
}

fn boundaries<D: TestDevice>(dev: &D, cfg: &Config) -> Result<(), String> {
    let (b, cap) = (bs(dev), dev.capacity());
    let mut rng = Rng::new(cfg.seed ^ 2);
    let last = cap - b;
    let data = rng.bytes(b as usize);
    dev.write_all_blocking(last, &data)
        .map_err(|e| io_err("write of the last block", last, data.len(), e))?;
    let mut got = vec![0u8; b as usize];
    dev.read_all_blocking(last, &mut got)
        .map_err(|e| io_err("read of the last block", last, got.len(), e))?;
    ensure!(got == data, "the last block read back differs");

    let mut buf = vec![0u8; 4 * b as usize];
    let r = dev.read_at_blocking(last, &mut buf);
    ensure!(r == Ok(b as usize), "read_at across the end returned {r:?}, expected Ok({b})");
    ensure!(buf[..b as usize] == data[..], "the in-range part of a read across the end is wrong");
    match dev.read_all_blocking(last, &mut buf) {
        Err(e) if e.done == b as usize && e.error.kind() == ErrorKind::OutOfRange => {}
        r => return Err(format!("read_all across the end: {r:?}, expected OutOfRange after {b}")),
    }
    let data2 = rng.bytes(2 * b as usize);
    match dev.write_all_blocking(last, &data2) {
        Err(e) if e.done == b as usize && e.error.kind() == ErrorKind::OutOfRange => {}
        r => return Err(format!("write_all across the end: {r:?}, expected OutOfRange after {b}")),
    }
    dev.read_all_blocking(last, &mut got)
        .map_err(|e| io_err("read of the last block", last, got.len(), e))?;
    ensure!(
        got[..] == data2[..b as usize],
        "the in-range part of a write across the end did not land"
    );
    for pos in [cap, cap + b, u64::MAX / b * b] {
        match dev.read_all_blocking(pos, &mut got) {
            Err(e) if e.done == 0 && e.error.kind() == ErrorKind::OutOfRange => {}
            r => return Err(format!("read at {pos} (past the end): {r:?}, expected OutOfRange")),
        }
        match dev.write_all_blocking(pos, &got) {
            Err(e) if e.done == 0 && e.error.kind() == ErrorKind::OutOfRange => {}
            r => return Err(format!("write at {pos} (past the end): {r:?}, expected OutOfRange")),
        }
    }
    Ok(())
}

fn misaligned<D: TestDevice>(dev: &D, _cfg: &Config) -> Result<(), String> {
    let b = bs(dev);
    if b == 1 {
        return Ok(()); // byte-addressable: nothing can be misaligned
    }
    let mut buf = vec![0u8; 2 * b as usize];
    for (pos, len) in [(b / 2, b as usize), (b, b as usize + 1), (b, (b / 2) as usize)] {
        match dev.read_all_blocking(pos, &mut buf[..len]) {
            Err(e) if e.done == 0 && e.error.kind() == ErrorKind::Misaligned => {}
            r => return Err(format!("read of {len} bytes at {pos}: {r:?}, expected Misaligned")),
        }
        match dev.write_all_blocking(pos, &buf[..len]) {
            Err(e) if e.done == 0 && e.error.kind() == ErrorKind::Misaligned => {}
            r => return Err(format!("write of {len} bytes at {pos}: {r:?}, expected Misaligned")),
        }
    }
    // The device still works.
    dev.read_all_blocking(0, &mut buf)
        .map_err(|e| io_err("read after misaligned requests", 0, buf.len(), e))?;
    Ok(())
}

fn large_transfers<D: TestDevice>(dev: &D, cfg: &Config) -> Result<(), String> {
    let (b, area) = (bs(dev), area(dev, cfg));
    let mut rng = Rng::new(cfg.seed ^ 3);
    for size in [4096u64, 128 << 10, (1 << 20) + 4096, 4 << 20] {
        let len = size.div_ceil(b) * b;
        if len > area {
            continue;
        }
        let pos = rng.below((area - len) / b + 1) * b;
        let data = rng.bytes(len as usize);
        let (r, _) = block_on(dev, dev.write_all(pos, data.clone()));
        r.map_err(|e| io_err("large write", pos, data.len(), e))?;
        let (r, got) = block_on(dev, dev.read_all(pos, vec![0u8; len as usize]));
        r.map_err(|e| io_err("large read", pos, len as usize, e))?;
        ensure!(got == data, "a {len}-byte transfer at {pos} read back differently");
        // And in small pieces.
        let piece = 4096u64.div_ceil(b) * b;
        let mut off = 0;
        while off < len {
            let n = piece.min(len - off) as usize;
            let mut p = vec![0u8; n];
            dev.read_all_blocking(pos + off, &mut p)
                .map_err(|e| io_err("read", pos + off, n, e))?;
            ensure!(
                p[..] == data[off as usize..off as usize + n],
                "piece at {} differs",
                pos + off
            );
            off += n as u64;
        }
    }
    Ok(())
}

fn batched_concurrency<D: TestDevice>(dev: &D, cfg: &Config) -> Result<(), String> {
    let (b, area) = (bs(dev), area(dev, cfg));
    let mut rng = Rng::new(cfg.seed ^ 4);
    let slot = (16u64 << 10).div_ceil(b) * b;
    let n = (cfg.queue_depth as u64).min(area / slot) as usize;
    ensure!(n > 0, "test area too small for concurrent I/O");
    let base = rng.below(area / slot - n as u64 + 1) * slot;
    let datas: Vec<Vec<u8>> =
        (0..n).map(|i| rng.bytes((b * (1 + i as u64 % 8)).min(slot) as usize)).collect();
    let writes =
        datas.iter().enumerate().map(|(i, d)| dev.write_all(base + i as u64 * slot, d.clone()));
    for (i, (r, _)) in block_on(dev, futures::future::join_all(writes)).into_iter().enumerate() {
        r.map_err(|e| io_err("concurrent write", base + i as u64 * slot, datas[i].len(), e))?;
    }
    let reads = datas
        .iter()
        .enumerate()
        .map(|(i, d)| dev.read_all(base + i as u64 * slot, vec![0u8; d.len()]));
    for (i, (r, got)) in block_on(dev, futures::future::join_all(reads)).into_iter().enumerate() {
        r.map_err(|e| io_err("concurrent read", base + i as u64 * slot, datas[i].len(), e))?;
        ensure!(got == datas[i], "concurrent request {i} read back differently");
    }
    Ok(())
}

fn queue_wrap<D: TestDevice>(dev: &D, cfg: &Config) -> Result<(), String> {
    let (b, area) = (bs(dev), area(dev, cfg));
    let blocks = (area / b).min(256);
    let mut rng = Rng::new(cfg.seed ^ 5);
    let mut shadow = Shadow::new(blocks * b, b);
    for i in 0..cfg.wrap_ios {
        let pos = (i as u64 % blocks) * b;
        if i % 2 == 0 {
            let data = rng.bytes(b as usize);
            dev.write_all_blocking(pos, &data).map_err(|e| io_err("write", pos, data.len(), e))?;
            shadow.write(pos, &data);
        } else {
            let mut got = vec![0u8; b as usize];
            dev.read_all_blocking(pos, &mut got).map_err(|e| io_err("read", pos, got.len(), e))?;
            shadow.check(pos, &got).map_err(|m| format!("I/O {i}: {m}"))?;
        }
    }
    Ok(())
}

fn partial_success_data<D: TestDevice>(dev: &D, cfg: &Config) -> Result<(), String> {
    let (b, cap) = (bs(dev), dev.capacity());
    let mut rng = Rng::new(cfg.seed ^ 6);
    let start = cap - 2 * b;
    let data = rng.bytes(2 * b as usize);
    dev.write_all_blocking(start, &data).map_err(|e| io_err("write", start, data.len(), e))?;
    let (r, got) = block_on(dev, dev.read_all(start, vec![0xa5u8; 5 * b as usize]));
    match r {
        Err(e) if e.done == 2 * b as usize && e.error.kind() == ErrorKind::OutOfRange => {}
        r => return Err(format!("read of 5 blocks from 2 before the end: {r:?}")),
    }
    ensure!(got[..2 * b as usize] == data[..], "the good prefix of a partial read is wrong");
    ensure!(
        got[2 * b as usize..].iter().all(|&x| x == 0xa5),
        "a failed segment wrote into the buffer"
    );
    Ok(())
}
