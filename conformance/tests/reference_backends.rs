//! The conformance suite on the framework's reference backends.

mod memory {
    mfio_conformance::conformance_tests!(mfio::backends::MemoryBackend::with_block_size(
        8 << 20,
        512
    ));
}

mod memory_bytes {
    mfio_conformance::conformance_tests!(mfio::backends::MemoryBackend::new(4 << 20));
}

mod stripe {
    use mfio::backends::{MemoryBackend, Stripe};
    mfio_conformance::conformance_tests!(Stripe::new(
        (0..3).map(|_| MemoryBackend::with_block_size(3 << 20, 4096)).collect(),
        64 << 10
    )
    .unwrap());
}

mod file {
    use mfio::backends::{FileBackend, FileOptions};

    fn image(opts: FileOptions) -> FileBackend {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "mfio-conformance-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(16 << 20).unwrap();
        let dev = FileBackend::open_with(&p, &opts).unwrap();
        std::fs::remove_file(&p).unwrap(); // the open file keeps it alive
        dev
    }

    mod uring {
        mfio_conformance::conformance_tests!(super::image(mfio::backends::FileOptions {
            block_size: 512,
            ..Default::default()
        }));
    }

    mod pread {
        mfio_conformance::conformance_tests!(super::image(mfio::backends::FileOptions {
            block_size: 4096,
            io_uring: false,
            ..Default::default()
        }));
    }
}
