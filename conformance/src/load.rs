//! A closed-loop load generator for any block backend: `qd` packets kept in flight, each
//! resubmitted as soon as it completes, latencies in a log-linear histogram. Allocates only
//! at start (the packets and their buffers), so a counting allocator sees the backend's own
//! allocations per I/O.

use crate::Rng;
use mfio::{Activity, BlockDevice, BufFor, IoBackend, Packet, PacketIo, PacketPerms};
use mfio_dma::clock::CycleClock;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Access pattern.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Uniformly random block-aligned offsets.
    Random,
    /// Consecutive offsets, wrapping at the end of the span.
    Sequential,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Access pattern.
    pub pattern: Pattern,
    /// Bytes per I/O (a multiple of the block size).
    pub block: usize,
    /// I/Os kept in flight.
    pub qd: usize,
    /// Stop after this long (with `ios`, whichever comes first).
    pub duration: Option<Duration>,
    /// Stop after this many I/Os.
    pub ios: Option<u64>,
    /// Bytes of the device to spread I/O over, from offset 0 (capped by the capacity).
    pub span: u64,
    /// Seed of the random offsets.
    pub seed: u64,
}

/// Latency histogram: log2 buckets split into 32 linear sub-buckets (about 3 % resolution).
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
    sum: u128,
}

const SUB: u32 = 5;

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: vec![0; 64 << SUB].into_boxed_slice(), total: 0, max: 0, sum: 0 }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.total)
            .field("p50", &self.percentile(50.0))
            .field("p99", &self.percentile(99.0))
            .field("max", &self.max)
            .finish()
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < (1 << SUB) {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros();
        let shift = msb - SUB;
        let sub = (v >> shift) & ((1 << SUB) - 1);
        (((shift + 1) << SUB) as u64 + sub) as usize
    }

    fn value(i: usize) -> u64 {
        let bucket = (i >> SUB) as u32;
        let sub = (i & ((1 << SUB) - 1)) as u64;
        if bucket == 0 {
            return sub;
        }
        let shift = bucket - 1;
        // The middle of the sub-bucket.
        (((1 << SUB) | sub) << shift) + ((1u64 << shift) >> 1)
    }

    /// Records one value (nanoseconds).
    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    /// Adds `other`'s values to this histogram.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest value recorded.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean of the values recorded.
    pub fn mean(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            (self.sum / u128::from(self.total)) as u64
        }
    }

    /// The value below which `p` percent of the values lie.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let want = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Self::value(i).min(self.max);
            }
        }
        self.max
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct LoadResult {
    /// I/Os completed successfully.
    pub ios: u64,
    /// I/Os that failed.
    pub errors: u64,
    /// The first error seen.
    pub first_error: Option<mfio::Error>,
    /// Bytes moved by successful I/Os.
    pub bytes: u64,
    /// Wall time of the measured run.
    pub elapsed: Duration,
    /// Completion latency of each I/O, nanoseconds.
    pub latency: Histogram,
}

impl LoadResult {
    /// Combines the results of runs that went on at the same time (one per queue).
    pub fn merge(results: &[LoadResult]) -> LoadResult {
        let mut m = LoadResult {
            ios: 0,
            errors: 0,
            first_error: None,
            bytes: 0,
            elapsed: Duration::ZERO,
            latency: Histogram::default(),
        };
        for r in results {
            m.ios += r.ios;
            m.errors += r.errors;
            m.first_error = m.first_error.or(r.first_error);
            m.bytes += r.bytes;
            m.elapsed = m.elapsed.max(r.elapsed);
            m.latency.merge(&r.latency);
        }
        m
    }

    /// I/Os per second.
    pub fn iops(&self) -> f64 {
        self.ios as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Megabytes (10^6 bytes) per second.
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `spec` against `dev` in direction `P` (`FromDevice`: reads, `ToDevice`: writes), with
/// one buffer per slot from `make_buf`.
pub fn run<'d, D, P, B>(dev: &'d D, spec: &LoadSpec, mut make_buf: impl FnMut() -> B) -> LoadResult
where
    D: PacketIo<P, u64> + IoBackend + BlockDevice,
    P: PacketPerms,
    B: BufFor<P>,
{
    let bs = u64::from(dev.block_size()).max(1);
    let block = (spec.block as u64).max(bs) / bs * bs;
    let span = spec.span.min(dev.capacity()) / block * block;
    let slots_in_span = (span / block).max(1);
    let qd = spec.qd.max(1);
    let mut packets: Vec<Pin<Box<Packet<'d, P, B>>>> =
        (0..qd).map(|_| Box::pin(Packet::new(make_buf()))).collect();
    // Timestamps from the CPU's counter: a clock read per round of completions would otherwise
    // cost a system call and an HPET read in a TCG guest (see `mfio_dma::clock`).
    let clock = CycleClock::get();
    let mut started = vec![clock.now(); qd];
    let mut rng = Rng::new(spec.seed);
    let mut next_seq = 0u64;
    let mut next_pos = |rng: &mut Rng| match spec.pattern {
        Pattern::Random => rng.below(slots_in_span) * block,
        Pattern::Sequential => {
            let p = next_seq * block;
            next_seq = (next_seq + 1) % slots_in_span;
            p
        }
    };
    let mut cx = Context::from_waker(Waker::noop());
    let mut result = LoadResult {
        ios: 0,
        errors: 0,
        first_error: None,
        bytes: 0,
        elapsed: Duration::ZERO,
        latency: Histogram::default(),
    };
    let limit_ios = spec.ios.unwrap_or(u64::MAX);
    let t0 = Instant::now();
    let deadline = spec.duration.map(|d| clock.now().saturating_add(clock.ticks_in(d)));
    let mut busy = vec![false; qd];
    let mut issued = 0u64;
    let mut in_flight = 0u64;
    for (i, p) in packets.iter_mut().enumerate() {
        if issued < limit_ios && p.as_mut().submit(dev, next_pos(&mut rng)).is_ok() {
            started[i] = clock.now();
            busy[i] = true;
            issued += 1;
            in_flight += 1;
        }
    }
    let handle = dev.polling_handle();
    while in_flight > 0 {
        if dev.poll_backend(&mut cx) == Activity::Armed {
            // An interrupt-driven queue with nothing posted: sleep until its interrupt.
            if let Some(h) = handle {
                h.wait(mfio::SLEEP_BOUND_MS);
            }
        }
        // One clock read per round with completions, shared by all of them.
        let mut round_now = None;
        for (i, p) in packets.iter_mut().enumerate() {
            if !busy[i] {
                continue;
            }
            let Poll::Ready(t) = p.poll_done(&mut cx) else { continue };
            let now = *round_now.get_or_insert_with(|| clock.now());
            busy[i] = false;
            in_flight -= 1;
            match t.error {
                None => {
                    result.ios += 1;
                    result.bytes += t.len as u64;
                    result.latency.record(clock.to_ns(now.saturating_sub(started[i])));
                }
                Some(e) => {
                    result.errors += 1;
                    result.first_error.get_or_insert(e);
                }
            }
            let stop = issued >= limit_ios || deadline.is_some_and(|d| now >= d);
            if !stop && p.as_mut().submit(dev, next_pos(&mut rng)).is_ok() {
                started[i] = now;
                busy[i] = true;
                issued += 1;
                in_flight += 1;
            }
        }
    }
    result.elapsed = t0.elapsed();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use mfio::backends::MemoryBackend;
    use mfio::FromDevice;

    #[test]
    fn histogram_percentiles_are_close() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (p, want) in [(50.0, 50_000u64), (90.0, 90_000), (99.0, 99_000), (99.9, 99_900)] {
            let got = h.percentile(p);
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err < 0.04, "p{p}: {got} vs {want}");
        }
        assert_eq!(h.max(), 100_000);
        assert_eq!(h.count(), 100_000);
        assert_eq!(h.mean(), 50_000);
        let mut small = Histogram::default();
        small.record(7);
        assert_eq!(small.percentile(50.0), 7);
    }

    #[test]
    fn runs_the_requested_number_of_ios_at_depth() {
        let dev = MemoryBackend::with_block_size(1 << 20, 512);
        let spec = LoadSpec {
            pattern: Pattern::Random,
            block: 4096,
            qd: 16,
            duration: None,
            ios: Some(1000),
            span: 1 << 20,
            seed: 1,
        };
        let r = run::<_, FromDevice, _>(&dev, &spec, || vec![0u8; 4096]);
        assert_eq!((r.ios, r.errors, r.bytes), (1000, 0, 1000 * 4096));
        assert_eq!(r.latency.count(), 1000);
        assert_eq!(dev.stats().largest_batch, 16, "the queue is kept {} deep", spec.qd);
        // Past the end: every I/O fails, and the run still ends.
        let spec = LoadSpec { block: 8192, span: 1 << 30, ios: Some(50), ..spec };
        let small = MemoryBackend::with_block_size(4096, 512);
        let r = run::<_, FromDevice, _>(&small, &spec, || vec![0u8; 8192]);
        assert_eq!(r.ios + r.errors, 50);
    }
}
