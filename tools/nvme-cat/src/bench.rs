//! bench: closed-loop load, fio-style figures.

use crate::output::json;
use crate::target::{is_virtio, open_file, open_nvme, open_virtio, parse, parse_size, Spec};
use crate::{with_ctrl, with_virtio, Format};
use clap::{Args, ValueEnum};
use mfio::{BlockDevice, FromDevice, ReadAt, ToDevice, Window, WriteAt};
use mfio_conformance::load::{self, LoadResult, LoadSpec, Pattern};
use mfio_dma::DmaSpace;
use mfio_nvme::{CompletionMode, Controller, ControllerOptions, DataPointer};
use mfio_pci::{PciDevice, WakeupStats};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// A virtqueue layout.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Ring {
    /// Split virtqueues (virtio 1.0).
    Split,
    /// Packed virtqueues (virtio 1.1, RING_PACKED).
    Packed,
}

/// What kind of I/O.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Rw {
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
}

/// `nvme-cat bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// PCI address, `model[:...]`, `virtio-model[:null]` or `file:PATH`.
    device: String,
    /// Namespace ID (NVMe).
    #[arg(short = 'n', long, default_value_t = 1)]
    nsid: u32,
    /// I/O pattern.
    #[arg(long, value_enum, default_value_t = Rw::Randread)]
    rw: Rw,
    /// Bytes per I/O (K/M suffixes allowed).
    #[arg(long, default_value = "4K")]
    bs: String,
    /// I/Os in flight per queue.
    #[arg(long, default_value_t = 32)]
    qd: usize,
    /// Queues, one thread each (NVMe).
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// Seconds to run.
    #[arg(long, default_value_t = 5.0)]
    time: f64,
    /// Stop after this many I/Os per queue (before --time if reached first).
    #[arg(long)]
    ios: Option<u64>,
    /// Bytes of the device to spread I/O over (default: all of it).
    #[arg(long)]
    span: Option<String>,
    /// Use ordinary (bounced) buffers instead of DMA memory.
    #[arg(long)]
    bounce: bool,
    /// NVMe: use shadow doorbells when the controller offers them (Doorbell Buffer Config).
    #[arg(long)]
    shadow: bool,
    /// NVMe: describe every I/O with an SGL instead of PRPs.
    #[arg(long)]
    sgl: bool,
    /// virtio-blk: force a virtqueue layout (default: packed when the device offers it).
    #[arg(long, value_enum)]
    ring: Option<Ring>,
    /// How each queue waits for completions: poll, interrupt (MSI-X), adaptive (poll for
    /// 50 us after the last completion, then sleep on the interrupt) or adaptive:<us>.
    #[arg(long, default_value = "poll", value_parser = parse_completion)]
    completion: CompletionMode,
    /// Issue the load as a tokio program: per queue a current-thread runtime with `--qd` tasks,
    /// each with one I/O in flight, the queue driven by mfio-rt (use with `--completion`).
    #[arg(long)]
    tokio: bool,
    /// Issue nothing: hold the queues and drive them (as an engine waiting for work does) for
    /// this many seconds, and report the CPU that took.
    #[arg(long, value_name = "SECONDS")]
    idle: Option<f64>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

pub(crate) fn parse_completion(s: &str) -> Result<CompletionMode, String> {
    s.parse()
}

/// User and system CPU time of the whole process so far (every bench thread, and a model's).
fn cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::new(t.tv_sec().max(0) as u64, (t.tv_usec().max(0) as u32) * 1000)
    };
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| tv(u.user_time()) + tv(u.system_time()))
        .unwrap_or_default()
}

fn spec(a: &BenchArgs, seed: u64) -> Result<LoadSpec, String> {
    Ok(LoadSpec {
        pattern: match a.rw {
            Rw::Randread | Rw::Randwrite => Pattern::Random,
            Rw::Read | Rw::Write => Pattern::Sequential,
        },
        block: parse_size(&a.bs)? as usize,
        qd: a.qd.max(1),
        duration: Some(Duration::from_secs_f64(a.time.max(0.001))),
        ios: a.ios,
        span: match &a.span {
            Some(s) => parse_size(s)?,
            None => u64::MAX,
        },
        seed,
    })
}

fn is_write(a: &BenchArgs) -> bool {
    matches!(a.rw, Rw::Randwrite | Rw::Write)
}

/// Runs the benchmark.
/// Most I/Os in flight per queue: an NVMe queue holds at most 4096 commands (a virtqueue
/// 32768 descriptors, but QEMU's 256), and deeper would only wait in the driver's pending
/// list.
const MAX_QD: usize = 4096;
/// The longest run `--time` may ask for.
const MAX_TIME_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// Most buffer memory a run may ask for (`--qd` x `--bs` x `--queues`).
const MAX_BUFFERS: u64 = 1 << 30;

/// The options' values, checked before anything is opened: each refusal says what to give.
fn validate(a: &BenchArgs) -> Result<usize, String> {
    let block = parse_size(&a.bs)?;
    if block == 0 {
        return Err("--bs 0: give the bytes per I/O, a multiple of the block size (4K)".into());
    }
    if !(1..=MAX_QD).contains(&a.qd) {
        return Err(format!("--qd {}: give 1 to {MAX_QD} I/Os in flight per queue", a.qd));
    }
    if a.queues == 0 {
        return Err("--queues 0: give at least one queue".into());
    }
    let total = block.saturating_mul(a.qd as u64).saturating_mul(u64::from(a.queues));
    if total > MAX_BUFFERS {
        return Err(format!(
            "--qd {} x --bs {} x --queues {} needs {} MiB of buffers, more than the {} MiB a \
             run may use: lower --qd or --bs",
            a.qd,
            a.bs,
            a.queues,
            total >> 20,
            MAX_BUFFERS >> 20
        ));
    }
    if !(a.time.is_finite() && a.time > 0.0) {
        return Err(format!("--time {}: give a positive number of seconds", a.time));
    }
    if a.time > MAX_TIME_SECS {
        return Err(format!("--time {}: give at most {MAX_TIME_SECS} seconds (a year)", a.time));
    }
    if a.ios == Some(0) {
        return Err("--ios 0: give at least one I/O per queue".into());
    }
    if let Some(span) = &a.span {
        if parse_size(span)? < block {
            return Err(format!("--span {span} is smaller than one I/O (--bs {})", a.bs));
        }
    }
    Ok(block as usize)
}

/// Refuses an I/O size the device cannot take, before any I/O.
fn check_block(q: &impl BlockDevice, block: usize) -> Result<(), String> {
    let bs = q.block_size() as usize;
    if bs == 0 || block % bs != 0 {
        return Err(format!("--bs {block}: not a multiple of the device's {bs}-byte block size"));
    }
    if block as u64 > q.capacity() {
        return Err(format!("--bs {block}: larger than the device ({} bytes)", q.capacity()));
    }
    Ok(())
}

pub fn run(a: &BenchArgs) -> Result<(), String> {
    let block = validate(a)?;
    let spec_ = parse(&a.device)?;
    if a.completion != CompletionMode::Poll && matches!(spec_, Spec::File(_)) {
        return Err("--completion applies to NVMe and virtio-blk queues, not to files".into());
    }
    if let Some(secs) = a.idle {
        return idle(spec_, a, Duration::from_secs_f64(secs.clamp(0.0, 3600.0)));
    }
    let cpu0 = cpu_time();
    let result = match spec_ {
        Spec::File(p) => {
            let dev = open_file(&p)?;
            check_block(&dev, block)?;
            let s = spec(a, 1)?;
            if is_write(a) {
                load::run::<_, ToDevice, _>(&dev, &s, || vec![0u8; block])
            } else {
                load::run::<_, FromDevice, _>(&dev, &s, || vec![0u8; block])
            }
        }
        s @ Spec::VirtioModel(_) => virtio_bench(s, a, block)?,
        s @ Spec::Pci(addr) if is_virtio(addr) => virtio_bench(s, a, block)?,
        _ => {
            let opts = ControllerOptions {
                io_queues: a.queues.max(1),
                // At least 64 entries: with a tiny ring the lazy CQ head doorbell fires on
                // every completion (half of a 2-entry ring is one entry).
                queue_depth: (a.qd + 1).clamp(64, 4096) as u16,
                shadow_doorbells: a.shadow,
                data_pointer: if a.sgl { DataPointer::Sgl } else { DataPointer::Auto },
                ..Default::default()
            };
            let nvme = open_nvme(&a.device, opts)?;
            with_ctrl!(&nvme, |c| nvme_bench(c, a, block))?
        }
    };
    let cpu = cpu_time().saturating_sub(cpu0);
    report(a, block, &result, cpu);
    if result.ios == 0 {
        return Err(match result.first_error {
            Some(e) => format!("every I/O failed: {e}"),
            None => "no I/O completed".to_string(),
        });
    }
    Ok(())
}

/// `--idle`: every queue driven for `secs` with nothing issued, its CPU reported.
fn idle(spec: Spec, a: &BenchArgs, secs: Duration) -> Result<(), String> {
    let (cpu, wall) = match spec {
        Spec::File(_) => return Err("--idle holds NVMe or virtio-blk queues, not files".into()),
        s @ (Spec::VirtioModel(_) | Spec::Pci(_)) if is_virtio_spec(&s) => {
            let v = open_virtio(s, a.queues.max(1), None, a.completion)?;
            with_virtio!(&v, |v| {
                let queues = (0..a.queues.max(1).min(v.queue_count()))
                    .map(|t| v.queue(t).map_err(|e| e.to_string()))
                    .collect::<Result<Vec<_>, _>>()?;
                hold(queues, secs)
            })?
        }
        _ => {
            let opts = ControllerOptions { io_queues: a.queues.max(1), ..Default::default() };
            let nvme = open_nvme(&a.device, opts)?;
            with_ctrl!(&nvme, |c| {
                let queues = (0..a.queues.max(1))
                    .map(|_| c.io_queue_with(a.nsid, a.completion).map_err(|e| e.to_string()))
                    .collect::<Result<Vec<_>, _>>()?;
                hold(queues, secs)
            })?
        }
    };
    let cores = cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9);
    let completion = a.completion.to_string();
    match a.output {
        Format::Json => json(&json!({
            "device": a.device, "completion": completion, "queues": a.queues,
            "idle_seconds": wall.as_secs_f64(), "cpu_seconds": cpu.as_secs_f64(), "cpu_cores": cores,
        })),
        Format::Normal => println!(
            "{}: {} queue(s), completion={completion}, idle {:.1} s: {:.3} s of CPU ({:.2}% of a core)",
            a.device,
            a.queues,
            wall.as_secs_f64(),
            cpu.as_secs_f64(),
            cores * 100.0
        ),
    }
    Ok(())
}

/// Drives each queue on a thread of its own, with nothing to do, until `secs` have passed: the
/// wait is a future woken from another thread, as an engine's is by its clients. Returns the
/// process's CPU time and the wall time over that hold (bring-up and a warm-up excluded).
fn hold<Q: mfio::IoBackend + Send>(
    queues: Vec<Q>,
    secs: Duration,
) -> Result<(Duration, Duration), String> {
    // Half a second first, not counted: the first pass through the code faults its pages in
    // (over 9p in the bench guest), which is start-up, not holding a queue.
    let (cpu0, t0) = (std::sync::Mutex::new(None), std::sync::Barrier::new(queues.len().max(1)));
    let warm = Duration::from_millis(500).min(secs);
    std::thread::scope(|scope| {
        for q in queues {
            let (cpu0, t0) = (&cpu0, &t0);
            scope.spawn(move || {
                mfio::block_on(&q, Deadline::after(warm));
                if t0.wait().is_leader() {
                    *cpu0.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((cpu_time(), std::time::Instant::now()));
                }
                t0.wait();
                mfio::block_on(&q, Deadline::after(secs));
            });
        }
    });
    let measured = cpu0.into_inner().unwrap_or_else(|p| p.into_inner());
    let (c0, w0) = measured.unwrap_or_else(|| (cpu_time(), std::time::Instant::now()));
    Ok((cpu_time().saturating_sub(c0), w0.elapsed()))
}

/// A future that is ready once a timer thread says so (after `secs`), woken from there.
struct Deadline {
    state: Arc<(std::sync::Mutex<Option<std::task::Waker>>, std::sync::atomic::AtomicBool)>,
}

impl Deadline {
    fn after(secs: Duration) -> Deadline {
        let state = Arc::new((
            std::sync::Mutex::new(None::<std::task::Waker>),
            std::sync::atomic::AtomicBool::new(false),
        ));
        let s = state.clone();
        std::thread::spawn(move || {
            std::thread::sleep(secs);
            s.1.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(w) = s.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
                w.wake();
            }
        });
        Deadline { state }
    }
}

impl std::future::Future for Deadline {
    type Output = ();
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let mut w = self.state.0.lock().unwrap_or_else(|p| p.into_inner());
        if self.state.1.load(std::sync::atomic::Ordering::SeqCst) {
            return std::task::Poll::Ready(());
        }
        *w = Some(cx.waker().clone());
        std::task::Poll::Pending
    }
}

fn is_virtio_spec(s: &Spec) -> bool {
    match s {
        Spec::VirtioModel(_) => true,
        Spec::Pci(addr) => is_virtio(*addr),
        _ => false,
    }
}

fn virtio_bench(s: Spec, a: &BenchArgs, block: usize) -> Result<LoadResult, String> {
    let ring = a.ring.map(|r| match r {
        Ring::Split => mfio_virtio::RingLayout::Split,
        Ring::Packed => mfio_virtio::RingLayout::Packed,
    });
    let v = open_virtio(s, a.queues.max(1), ring, a.completion)?;
    with_virtio!(&v, |v| {
        let queues = (0..a.queues.max(1).min(v.queue_count()))
            .map(|t| v.queue(t).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        run_queues(queues, v.device().dma(), a, block)
    })
}

fn nvme_bench<D: PciDevice + Send + Sync + 'static>(
    c: &Arc<Controller<D>>,
    a: &BenchArgs,
    block: usize,
) -> Result<LoadResult, String> {
    let queues = (0..a.queues.max(1))
        .map(|_| c.io_queue_with(a.nsid, a.completion).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    run_queues(queues, c.device().dma(), a, block)
}

/// Runs the load on every queue at once, one thread each (queues are `Send`, not `Sync`), with
/// DMA buffers from `space` (zero copy) unless `--bounce`; merges the results.
fn run_queues<Q>(
    queues: Vec<Q>,
    space: &Arc<DmaSpace>,
    a: &BenchArgs,
    block: usize,
) -> Result<LoadResult, String>
where
    Q: ReadAt + WriteAt + BlockDevice + mfio::IoBackend + Waits + Send + 'static,
{
    for q in &queues {
        check_block(q, block)?;
    }
    // Every buffer up front, so a device out of DMA memory is an error, not a panic.
    let pool: Vec<Vec<Window<mfio_dma::DmaBuffer>>> = (0..queues.len())
        .map(|_| {
            (0..if a.bounce { 0 } else { a.qd })
                .map(|_| {
                    let buf = space.alloc(block).map_err(|e| {
                        format!("DMA memory for --qd {} x --bs {}: {e}", a.qd, a.bs)
                    })?;
                    Window::new(buf, 0, block)
                        .ok_or_else(|| "a window inside its buffer".to_string())
                })
                .collect::<Result<Vec<_>, String>>()
        })
        .collect::<Result<_, _>>()?;
    let results: Vec<Result<LoadResult, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = queues
            .into_iter()
            .zip(pool)
            .enumerate()
            .map(|(t, (q, bufs))| {
                scope.spawn(move || -> Result<LoadResult, String> {
                    let s = spec(a, 1 + t as u64)?;
                    // One buffer per slot: the load asks for exactly `--qd`.
                    let mut bufs = bufs.into_iter();
                    let dma = move || bufs.next().expect("a buffer per I/O in flight");
                    let heap = || vec![0u8; block];
                    if a.tokio {
                        let q = std::rc::Rc::new(q);
                        let r = match a.bounce {
                            false => crate::tokio_load::run(&q, &s, is_write(a), dma),
                            true => crate::tokio_load::run(&q, &s, is_write(a), heap),
                        };
                        add_waits(q.wakeup());
                        return Ok(r);
                    }
                    let r = match (is_write(a), a.bounce) {
                        (false, false) => load::run::<_, FromDevice, _>(&q, &s, dma),
                        (true, false) => load::run::<_, ToDevice, _>(&q, &s, dma),
                        (false, true) => load::run::<_, FromDevice, _>(&q, &s, heap),
                        (true, true) => load::run::<_, ToDevice, _>(&q, &s, heap),
                    };
                    add_waits(q.wakeup());
                    Ok(r)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a bench thread panicked".into())))
            .collect()
    });
    let results: Vec<LoadResult> = results.into_iter().collect::<Result<_, _>>()?;
    Ok(LoadResult::merge(&results))
}

/// How a queue waited, for the report.
trait Waits {
    fn wakeup(&self) -> WakeupStats;
}

impl<D: PciDevice> Waits for mfio_nvme::IoQueue<D> {
    fn wakeup(&self) -> WakeupStats {
        self.stats().wakeup
    }
}

impl<D: PciDevice> Waits for mfio_virtio::BlkQueue<D> {
    fn wakeup(&self) -> WakeupStats {
        self.stats().wakeup
    }
}

/// Every bench queue's waits, summed.
static WAITS: std::sync::Mutex<WakeupStats> = std::sync::Mutex::new(WakeupStats {
    armed: 0,
    interrupts: 0,
    unannounced: 0,
    fell_back: false,
});

fn add_waits(w: WakeupStats) {
    let mut t = WAITS.lock().unwrap_or_else(|p| p.into_inner());
    t.armed += w.armed;
    t.interrupts += w.interrupts;
    t.unannounced += w.unannounced;
    t.fell_back |= w.fell_back;
}

/// Prints the figures. `cpu` is the process's user + system time over the run (setup
/// included: opening the device and creating queues, which is small next to seconds of I/O).
fn report(a: &BenchArgs, block: usize, r: &LoadResult, cpu: Duration) {
    let h = &r.latency;
    let us = |ns: u64| ns as f64 / 1000.0;
    let cpu_ns_per_io = cpu.as_nanos() as f64 / (r.ios + r.errors).max(1) as f64;
    let cpu_share = cpu.as_secs_f64() / r.elapsed.as_secs_f64().max(1e-9);
    let completion = a.completion.to_string();
    let w = *WAITS.lock().unwrap_or_else(|p| p.into_inner());
    let per_io = |n: u64| n as f64 / r.ios.max(1) as f64;
    match a.output {
        Format::Json => json(&json!({
            "sleeps_per_io": per_io(w.armed), "interrupts_per_io": per_io(w.interrupts),
            "unannounced": w.unannounced, "fell_back": w.fell_back,
            "device": a.device, "rw": format!("{:?}", a.rw).to_lowercase(), "bs": block, "qd": a.qd,
            "queues": a.queues, "completion": completion,
            "ios": r.ios, "errors": r.errors, "seconds": r.elapsed.as_secs_f64(),
            "cpu_seconds": cpu.as_secs_f64(), "cpu_ns_per_io": cpu_ns_per_io,
            "cpu_cores": cpu_share,
            "iops": r.iops(), "mbps": r.mbps(),
            "first_error": r.first_error.map(|e| e.to_string()),
            "lat_ns": {
                "mean": h.mean(), "p50": h.percentile(50.0), "p90": h.percentile(90.0),
                "p99": h.percentile(99.0), "p99.9": h.percentile(99.9), "max": h.max(),
            },
        })),
        Format::Normal => {
            println!(
                "{}: {:?} bs={} qd={} queues={} completion={completion}: {} IOs in {:.2} s",
                a.device,
                a.rw,
                block,
                a.qd,
                a.queues,
                r.ios,
                r.elapsed.as_secs_f64()
            );
            println!("  iops={:.0} bw={:.1} MB/s errors={}", r.iops(), r.mbps(), r.errors);
            println!(
                "  cpu: {:.2} s user+sys, {:.0} ns per I/O, {:.0}% of a core",
                cpu.as_secs_f64(),
                cpu_ns_per_io,
                cpu_share * 100.0
            );
            if a.completion.uses_interrupts() {
                println!(
                    "  waits: {:.3} sleeps and {:.3} interrupts per I/O, {} unannounced{}",
                    per_io(w.armed),
                    per_io(w.interrupts),
                    w.unannounced,
                    if w.fell_back { ", fell back to polling" } else { "" }
                );
            }
            println!(
                "  lat (usec): mean={:.1} p50={:.1} p90={:.1} p99={:.1} p99.9={:.1} max={:.1}",
                us(h.mean()),
                us(h.percentile(50.0)),
                us(h.percentile(90.0)),
                us(h.percentile(99.0)),
                us(h.percentile(99.9)),
                us(h.max())
            );
            if let Some(e) = r.first_error {
                println!("  first error: {e}");
            }
        }
    }
}
