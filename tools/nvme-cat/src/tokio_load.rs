//! `nvme-cat bench --tokio`: the load as a tokio program would issue it: one current-thread
//! runtime per queue, `qd` tasks each with one read (or write) in flight, the queue shared by
//! `Rc` and driven by `mfio_rt::tokio::drive`. Against the closed loop of `mfio-conformance`'s
//! load generator on the same queue, it shows what the runtime costs.

use mfio::{BlockDevice, IoBackend, IoBuf, IoBufMut, ReadAt, WriteAt};
use mfio_conformance::load::{LoadResult, LoadSpec, Pattern};
use mfio_conformance::Rng;
use mfio_dma::clock::CycleClock;
use std::cell::RefCell;
use std::rc::Rc;

/// Runs `spec` on `q` from `spec.qd` tasks; `buf` makes each task's buffer.
pub fn run<Q, B>(q: &Rc<Q>, spec: &LoadSpec, write: bool, mut buf: impl FnMut() -> B) -> LoadResult
where
    Q: ReadAt + WriteAt + BlockDevice + IoBackend + 'static,
    B: IoBuf + IoBufMut + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime");
    let bs = u64::from(q.block_size()).max(1);
    let block = (spec.block as u64).max(bs) / bs * bs;
    let slots = (spec.span.min(q.capacity()) / block).max(1);
    let clock = CycleClock::get();
    let deadline = spec.duration.map(|d| clock.now() + clock.ticks_in(d));
    let limit = spec.ios.unwrap_or(u64::MAX);
    let shared = Rc::new(RefCell::new((LoadResult::merge(&[]), 0u64 /* issued */)));
    let t0 = std::time::Instant::now();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        tokio::task::spawn_local(mfio_rt::tokio::drive(q.clone()));
        let mut tasks = Vec::new();
        for t in 0..spec.qd.max(1) {
            let (q, shared, mut b) = (q.clone(), shared.clone(), buf());
            let mut rng = Rng::new(spec.seed.wrapping_mul(1000) + t as u64);
            let pattern = spec.pattern;
            tasks.push(tokio::task::spawn_local(async move {
                let mut seq = t as u64;
                loop {
                    {
                        let mut s = shared.borrow_mut();
                        let now = clock.now();
                        if s.1 >= limit || deadline.is_some_and(|d| now >= d) {
                            break;
                        }
                        s.1 += 1;
                    }
                    let pos = match pattern {
                        Pattern::Random => rng.below(slots) * block,
                        Pattern::Sequential => {
                            seq = (seq + 1) % slots;
                            seq * block
                        }
                    };
                    let start = clock.now();
                    let (r, back) =
                        if write { q.write_at(pos, b).await } else { q.read_at(pos, b).await };
                    b = back;
                    let ns = clock.to_ns(clock.now().saturating_sub(start));
                    let mut s = shared.borrow_mut();
                    match r {
                        Ok(n) => {
                            s.0.ios += 1;
                            s.0.bytes += n as u64;
                            s.0.latency.record(ns);
                        }
                        Err(e) => {
                            s.0.errors += 1;
                            s.0.first_error.get_or_insert(e.error);
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let mut r = std::mem::replace(&mut shared.borrow_mut().0, LoadResult::merge(&[]));
    r.elapsed = t0.elapsed();
    r
}
