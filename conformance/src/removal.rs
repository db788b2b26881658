//! Hot removal, as any backend must take it: I/O kept in flight until the device goes away,
//! then every request resolved, each in-flight one with `ErrorKind::Gone` (or done before).
//!
//! The model tests remove their model from another thread while [`read_until_gone`] runs; the
//! guest test does the same with a real `echo 1 > /sys/bus/pci/devices/.../remove`.

use crate::{Rng, TestDevice};
use mfio::{block_on, ErrorKind, IoBackend};
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// What [`read_until_gone`] saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Reads that completed.
    pub ok: u64,
    /// Workers whose last read failed with `Gone` (each ends there).
    pub gone: u64,
    /// Errors of any other kind (a worker goes on after one).
    pub other: Vec<mfio::Error>,
    /// Workers still reading at the deadline: the removal was never noticed.
    pub unfinished: u64,
    /// From the first `Gone` to the last worker's end.
    pub drain: Duration,
}

/// Keeps `depth` reads of `block` bytes in flight on `dev` (random offsets below `span`)
/// until each worker's read fails with `Gone`, or `deadline` from now. The device is expected
/// to be removed meanwhile, from outside.
pub fn read_until_gone<D: TestDevice + IoBackend>(
    dev: &D,
    depth: usize,
    block: usize,
    span: u64,
    deadline: Duration,
    seed: u64,
) -> Tally {
    let tally = RefCell::new(Tally::default());
    let first_gone: RefCell<Option<Instant>> = RefCell::new(None);
    let end = Instant::now() + deadline;
    let blocks = (span.min(dev.capacity()) / block as u64).max(1);
    let workers = (0..depth).map(|w| {
        let (tally, first_gone) = (&tally, &first_gone);
        async move {
            let mut rng = Rng::new(seed ^ (w as u64).wrapping_mul(0x9e37_79b9));
            let mut buf = vec![0u8; block];
            loop {
                if Instant::now() >= end {
                    tally.borrow_mut().unfinished += 1;
                    return;
                }
                let pos = rng.below(blocks) * block as u64;
                let (r, b) = dev.read_at(pos, buf).await;
                buf = b;
                match r {
                    Ok(_) => tally.borrow_mut().ok += 1,
                    Err(e) if e.error.kind() == ErrorKind::Gone => {
                        first_gone.borrow_mut().get_or_insert_with(Instant::now);
                        tally.borrow_mut().gone += 1;
                        return;
                    }
                    Err(e) => tally.borrow_mut().other.push(e.error),
                }
            }
        }
    });
    block_on(dev, futures::future::join_all(workers));
    let mut t = tally.into_inner();
    t.drain = first_gone.into_inner().map(|at| at.elapsed()).unwrap_or_default();
    t
}

/// After a removal: a new read and a new write must fail with `Gone` at once (within
/// `limit`), not wait for a timeout.
pub fn fails_gone_at_once<D: TestDevice + IoBackend>(
    dev: &D,
    limit: Duration,
) -> Result<(), String> {
    let t0 = Instant::now();
    let (r, _) = block_on(dev, dev.read_at(0, vec![0u8; dev.block_size() as usize]));
    let (w, _) = block_on(dev, dev.write_at(0, vec![0u8; dev.block_size() as usize]));
    let took = t0.elapsed();
    for (what, r) in [("read", r), ("write", w)] {
        match r {
            Err(e) if e.error.kind() == ErrorKind::Gone => {}
            other => return Err(format!("a {what} after the removal gave {other:?}, not Gone")),
        }
    }
    if took > limit {
        return Err(format!("failing a read and a write took {took:?} (more than {limit:?})"));
    }
    Ok(())
}
