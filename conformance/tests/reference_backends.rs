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

    pub(crate) fn image(opts: FileOptions) -> FileBackend {
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

/// Flush, discard, write zeroes and FUA writes on the reference backends.
mod commands {
    use mfio::backends::{FileBackend, FileOptions, MemoryBackend};
    use mfio::{BlockCommands, ErrorKind, Zeroes};
    use mfio_conformance::check_commands;

    #[test]
    fn memory() {
        check_commands(&MemoryBackend::with_block_size(1 << 20, 512), 1 << 20).unwrap();
        check_commands(&MemoryBackend::new(1 << 20), 1 << 20).unwrap();
    }

    #[test]
    fn file_through_io_uring_and_pread() {
        for (io_uring, block_size) in [(true, 512), (false, 4096)] {
            let dev =
                super::file::image(FileOptions { block_size, io_uring, ..Default::default() });
            check_commands(&dev, 4 << 20).unwrap();
        }
    }

    #[test]
    fn read_only_file_refuses_what_changes_data() {
        let p = std::env::temp_dir().join(format!("mfio-ro-{}", std::process::id()));
        std::fs::write(&p, vec![7u8; 1 << 16]).unwrap();
        let opts = FileOptions { writable: false, block_size: 512, ..Default::default() };
        let dev = FileBackend::open_with(&p, &opts).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert!(dev.capabilities().read_only);
        dev.flush_blocking().unwrap();
        let e = dev.discard_blocking(0, 512).unwrap_err();
        assert_eq!((e.kind(), e.errno()), (ErrorKind::Os, 9), "EBADF, as a write gets");
        let e = dev.write_zeroes_blocking(0, 512, Zeroes::Allocate).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Os);
    }
}
