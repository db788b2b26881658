//! The block commands (flush, discard, write zeroes, FUA writes) checked the same way on every
//! backend that has them: what each capability promises, the range checks, and the typed
//! `Unsupported` for what a device lacks.

use crate::Rng;
use mfio::{block_on, BlockCommands, ErrorKind, ReadAt, WriteAt, Zeroes};

/// `return Err(..)` unless the two are equal, saying what was expected (shortened: data).
macro_rules! ensure_eq {
    ($got:expr, $want:expr, $($fmt:tt)*) => {
        let (got, want) = (&$got, &$want);
        if got != want {
            let short = |s: String| s.chars().take(120).collect::<String>();
            return Err(format!(
                "{}: got {}, expected {}",
                format!($($fmt)*),
                short(format!("{got:?}")),
                short(format!("{want:?}"))
            ));
        }
    };
}

/// Runs every command check on `dev`, in the first `area` bytes (at least 64 blocks). Returns
/// the first violated expectation.
pub fn check_commands<D: BlockCommands + ReadAt>(dev: &D, area: u64) -> Result<(), String> {
    let caps = dev.capabilities();
    let bs = u64::from(dev.block_size());
    if area.min(dev.capacity()) < 64 * bs {
        return Err(format!("the command checks need 64 blocks of {bs} bytes"));
    }
    let mut rng = Rng::new(0xc0de);
    let data = rng.bytes(16 * bs as usize);
    let read = |pos: u64, len: u64| -> Result<Vec<u8>, String> {
        let mut b = vec![0xa5u8; len as usize];
        dev.read_all_blocking(pos, &mut b).map_err(|e| format!("read at {pos}: {e}"))?;
        Ok(b)
    };
    let write = |pos: u64| dev.write_all_blocking(pos, &data).map_err(|e| format!("write: {e}"));

    // FUA: one command or a write and a flush; the data reads back either way.
    let (r, _) = block_on(dev, dev.write_all_fua(0, data.clone()));
    r.map_err(|e| format!("FUA write: {e}"))?;
    ensure_eq!(read(0, data.len() as u64)?, data, "a FUA write reads back");
    dev.flush_blocking().map_err(|e| format!("flush: {e}"))?;

    // Write zeroes, both ways: exactly the range reads zeroes afterwards.
    for (i, how) in [Zeroes::Allocate, Zeroes::MayUnmap].into_iter().enumerate() {
        let pos = (16 + 16 * i as u64) * bs;
        write(pos)?;
        match dev.write_zeroes_blocking(pos + bs, 2 * bs, how) {
            Ok(()) => {
                let back = read(pos, data.len() as u64)?;
                let b = bs as usize;
                ensure_eq!(back[..b], data[..b], "write zeroes ({how:?}) kept the block before");
                ensure_eq!(back[b..3 * b], vec![0u8; 2 * b][..], "write zeroes ({how:?}) zeroed");
                ensure_eq!(back[3 * b..], data[3 * b..], "write zeroes ({how:?}) kept the rest");
                if !caps.write_zeroes {
                    return Err("write zeroes worked while the capabilities deny it".into());
                }
            }
            Err(e) if e.kind() == ErrorKind::Unsupported && !caps.write_zeroes => {}
            Err(e) => return Err(format!("write zeroes ({how:?}): {e}")),
        }
    }

    // Discard: reads zeroes afterwards only where the device says so.
    let pos = 48 * bs;
    write(pos)?;
    match dev.discard_blocking(pos, 8 * bs) {
        Ok(()) if caps.discard => {
            if caps.discard_zeroes {
                ensure_eq!(read(pos, 8 * bs)?, vec![0u8; 8 * bs as usize], "discarded reads 0");
            }
            let b = 8 * bs as usize;
            ensure_eq!(read(pos + 8 * bs, 8 * bs)?, data[b..], "discard kept what follows");
        }
        Ok(()) => return Err("discard worked while the capabilities deny it".into()),
        Err(e) if e.kind() == ErrorKind::Unsupported && !caps.discard => {}
        Err(e) => return Err(format!("discard: {e}")),
    }

    // Range checks, as for reads and writes; an empty range does nothing.
    let cap = dev.capacity();
    let kinds = |r: Result<(), mfio::Error>| r.err().map(|e| e.kind());
    for (name, supported, past, empty) in [
        (
            "discard",
            caps.discard,
            kinds(dev.discard_blocking(cap, bs)),
            kinds(dev.discard_blocking(0, 0)),
        ),
        (
            "write zeroes",
            caps.write_zeroes,
            kinds(dev.write_zeroes_blocking(cap - bs, 2 * bs, Zeroes::Allocate)),
            kinds(dev.write_zeroes_blocking(bs, 0, Zeroes::Allocate)),
        ),
    ] {
        let want = if supported { ErrorKind::OutOfRange } else { ErrorKind::Unsupported };
        ensure_eq!(past, Some(want), "{name} past the end");
        ensure_eq!(empty, if supported { None } else { Some(want) }, "{name} of nothing");
        if supported && bs > 1 {
            let mis = kinds(if name == "discard" {
                dev.discard_blocking(1, bs)
            } else {
                dev.write_zeroes_blocking(bs, bs + 1, Zeroes::Allocate)
            });
            ensure_eq!(mis, Some(ErrorKind::Misaligned), "{name} misaligned");
        }
    }
    let (r, _) = block_on(dev, dev.write_all_fua(cap, vec![0u8; bs as usize]));
    ensure_eq!(r.err().map(|e| e.error.kind()), Some(ErrorKind::OutOfRange), "FUA past the end");
    Ok(())
}
