//! One block-device conformance suite, written once and run against every backend: the
//! in-memory and file backends and the device models in `cargo test`, and QEMU's real NVMe and
//! virtio-blk devices through VFIO inside the test guest.
//!
//! Each [`Case`] takes a device and a [`Config`] and returns `Err(message)` on the first
//! violated expectation. [`conformance_tests!`] turns the suite into one `#[test]` per case;
//! [`run_all`] runs it in a program (the guest test binaries) and reports every case.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cases;
mod commands;
pub mod cpu;
pub mod load;
pub mod removal;
mod rng;

pub use cases::CASES;
pub use commands::check_commands;
pub use rng::Rng;

use mfio::{BlockDevice, ReadAt, WriteAt};

/// What a device under test must support to run the suite.
pub trait TestDevice: ReadAt + WriteAt + BlockDevice {}
impl<T: ReadAt + WriteAt + BlockDevice> TestDevice for T {}

/// Knobs of a run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Seed of the pseudo-random sizes, offsets and data.
    pub seed: u64,
    /// Bytes at the start of the device the data tests may use (capped by the capacity).
    pub area: u64,
    /// Random round trips per data test.
    pub rounds: usize,
    /// Largest single transfer, in bytes, of the random tests (rounded to the block size).
    pub max_transfer: usize,
    /// Requests in flight at once in the concurrency tests.
    pub queue_depth: usize,
    /// Sequential I/Os of the queue wrap-around test (several times any queue's depth).
    pub wrap_ios: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: 0x5eed_f00d,
            area: 32 << 20,
            rounds: 200,
            max_transfer: 512 << 10,
            queue_depth: 64,
            wrap_ios: 2500,
        }
    }
}

/// One conformance check.
pub struct Case<D: ?Sized> {
    /// The check's name (also the `#[test]` name `conformance_tests!` gives it).
    pub name: &'static str,
    /// Runs the check.
    pub run: fn(&D, &Config) -> Result<(), String>,
}

/// The outcome of one case in [`run_all`].
#[derive(Debug)]
pub struct Outcome {
    /// The case's name.
    pub name: &'static str,
    /// `Err(message)` if it failed.
    pub result: Result<(), String>,
    /// Wall time of the case.
    pub elapsed: std::time::Duration,
}

/// Runs one case by name.
pub fn run_case<D: TestDevice>(dev: &D, cfg: &Config, name: &str) -> Result<(), String> {
    let case = cases::all::<D>()
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| format!("no conformance case named {name}"))?;
    (case.run)(dev, cfg)
}

/// Runs every case, printing one line per case; returns the outcomes.
pub fn run_all<D: TestDevice>(dev: &D, cfg: &Config, label: &str) -> Vec<Outcome> {
    cases::all::<D>()
        .into_iter()
        .map(|c| {
            let t0 = std::time::Instant::now();
            let result = (c.run)(dev, cfg);
            let elapsed = t0.elapsed();
            match &result {
                Ok(()) => println!("conformance {label} {:<28} ok ({:.2?})", c.name, elapsed),
                Err(m) => println!("conformance {label} {:<28} FAILED: {m}", c.name),
            }
            Outcome { name: c.name, result, elapsed }
        })
        .collect()
}

/// Expands to one `#[test]` per conformance case, each on a fresh device from `$make`.
///
/// ```text
/// mfio_conformance::conformance_tests!(mfio::backends::MemoryBackend::with_block_size(8 << 20, 512));
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            geometry, round_trip_random, unaligned_memory, zero_length, boundaries,
            misaligned, large_transfers, batched_concurrency, queue_wrap, partial_success_data);
    };
    (@cases $make:expr; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                let dev = $make;
                let cfg = $crate::Config::default();
                if let Err(m) = $crate::run_case(&dev, &cfg, stringify!($name)) {
                    panic!("conformance case {} failed: {}", stringify!($name), m);
                }
            }
        )*
    };
}

/// Runs `f` on a thread of its own and gives its outcome within `limit`: `Err("PANIC")` if it
/// panicked, `Err("HANG")` if it had not finished (for table-driven tests of bad input, where
/// a panic or a hang is the failure being looked for).
pub fn bounded<F>(limit: std::time::Duration, f: F) -> Result<(), String>
where
    F: FnOnce() -> Result<(), String> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r.unwrap_or_else(|_| Err("PANIC".into())));
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| Err("HANG".into()))
}

/// Writes `len` bytes of a pattern at `pos` and reads them back; the error as text.
pub fn round_trip<D: TestDevice>(dev: &D, pos: u64, len: usize) -> Result<(), String> {
    let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
    dev.write_all_blocking(pos, &data).map_err(|e| e.to_string())?;
    let mut back = vec![0u8; len];
    dev.read_all_blocking(pos, &mut back).map_err(|e| e.to_string())?;
    if back != data {
        return Err("DATA MISMATCH".into());
    }
    Ok(())
}
