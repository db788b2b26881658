//! Index arithmetic on circular queues of `n` entries, shared by the driver's queues and the
//! controller model. Queue sizes are not powers of two in general (any size up to MQES+1), so
//! these compare and subtract instead of dividing: a division costs tens of cycles, and the
//! hot path does several per I/O.

/// The index after `i`.
#[inline]
pub(crate) fn next(i: u32, n: u32) -> u32 {
    let j = i + 1;
    if j == n {
        0
    } else {
        j
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_modular_arithmetic() {
        for n in [2u32, 3, 64, 65, 1024] {
            for a in 0..n {
                assert_eq!(next(a, n), (a + 1) % n);
            }
        }
    }
}
