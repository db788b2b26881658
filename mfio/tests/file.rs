//! The file backend, through io_uring and through pread/pwrite.

mod common;

use common::pattern;
use mfio::backends::{FileBackend, FileOptions};
use mfio::{block_on, BlockDevice, ErrorKind, ReadAt, WriteAt};
use std::path::PathBuf;

struct TempImage(PathBuf);

impl TempImage {
    fn new(name: &str, len: u64) -> Self {
        let p = std::env::temp_dir().join(format!("mfio-test-{}-{name}", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(len).unwrap();
        Self(p)
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn exercise(dev: &FileBackend) {
    assert_eq!(dev.capacity(), 1 << 20);
    // Many concurrent writes in one batch, then read everything back.
    let futs: Vec<_> = (0..64u64).map(|i| dev.write_all(i * 16384 + 7, pattern(i, 9000))).collect();
    for (r, _) in block_on(dev, futures::future::join_all(futs)) {
        r.unwrap();
    }
    for i in 0..64u64 {
        let mut back = vec![0u8; 9000];
        dev.read_all_blocking(i * 16384 + 7, &mut back).unwrap();
        assert_eq!(back, pattern(i, 9000), "block {i}");
    }
    // The tail past the end fails on its own: short for *_at, an error for *_all.
    let mut buf = vec![0u8; 8192];
    assert_eq!(dev.read_at_blocking((1 << 20) - 4096, &mut buf), Ok(4096));
    let e = dev.write_all_blocking((1 << 20) - 100, &buf).unwrap_err();
    assert_eq!((e.done, e.error.kind()), (100, ErrorKind::OutOfRange));
    // The file did not grow.
    assert_eq!(dev.capacity(), 1 << 20);
}

#[test]
fn file_backend_with_io_uring() {
    let img = TempImage::new("uring", 1 << 20);
    let dev = FileBackend::open(&img.0).unwrap();
    eprintln!("io_uring in use: {}", dev.uses_io_uring());
    exercise(&dev);
}

#[test]
fn file_backend_with_pread() {
    let img = TempImage::new("pread", 1 << 20);
    let opts = FileOptions { io_uring: false, ..FileOptions::default() };
    let dev = FileBackend::open_with(&img.0, &opts).unwrap();
    assert!(!dev.uses_io_uring());
    exercise(&dev);
}

#[test]
fn more_requests_than_ring_slots_all_complete() {
    let img = TempImage::new("deep", 1 << 20);
    let opts = FileOptions { depth: 4, ..FileOptions::default() };
    let dev = FileBackend::open_with(&img.0, &opts).unwrap();
    let futs: Vec<_> = (0..100u64).map(|i| dev.write_all(i * 4096, pattern(i, 4096))).collect();
    for (r, _) in block_on(&dev, futures::future::join_all(futs)) {
        r.unwrap();
    }
    let futs: Vec<_> = (0..100u64).map(|i| dev.read_all(i * 4096, vec![0u8; 4096])).collect();
    for (i, (r, buf)) in block_on(&dev, futures::future::join_all(futs)).into_iter().enumerate() {
        r.unwrap();
        assert_eq!(buf, pattern(i as u64, 4096));
    }
}

#[test]
fn block_size_is_enforced() {
    let img = TempImage::new("bs", 1 << 16);
    let opts = FileOptions { block_size: 512, ..FileOptions::default() };
    let dev = FileBackend::open_with(&img.0, &opts).unwrap();
    let e = dev.read_all_blocking(100, &mut [0u8; 512]).unwrap_err();
    assert_eq!(e.error.kind(), ErrorKind::Misaligned);
    let e: std::io::Error = e.into();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let e = FileBackend::open("/nonexistent/mfio-image").err().unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
}
