//! A worker's payload buffers: made on first use (DMA memory is expensive to map), reused
//! after, and bounded, so a flood of large requests waits for buffers instead of growing
//! without limit.
//!
//! A request takes all the buffers it needs at once ([`Pool::take`]): two connections each
//! holding part of what they need and waiting for the rest would never finish. The semaphore
//! is fair (first come, first served), so a large request is not starved by small ones.

use std::cell::RefCell;
use std::rc::Rc;
use tokio::sync::Semaphore;

/// The bytes of one buffer: a request is split into pieces of at most this size.
pub const CHUNK: usize = 128 << 10;

/// Bounded buffers of [`CHUNK`] bytes.
pub struct Pool<B> {
    free: RefCell<Vec<B>>,
    permits: Semaphore,
    limit: usize,
    make: Box<dyn Fn() -> Result<B, String>>,
}

/// Buffers taken from a [`Pool`], given back when dropped (or with [`Taken::put`]).
pub struct Taken<B> {
    pool: Rc<Pool<B>>,
    bufs: Vec<B>,
    permits: usize,
}

impl<B> Pool<B> {
    /// At most `limit` buffers (at least one), made by `make` when none is free.
    pub fn new(limit: usize, make: impl Fn() -> Result<B, String> + 'static) -> Rc<Self> {
        let limit = limit.max(1);
        Rc::new(Self {
            free: RefCell::new(Vec::new()),
            permits: Semaphore::new(limit),
            limit,
            make: Box::new(make),
        })
    }

    /// The most buffers there can be.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Waits until `n` buffers (at most [`limit`](Self::limit)) are free, and takes them.
    pub async fn take(self: &Rc<Self>, n: usize) -> Result<Taken<B>, String> {
        let n = n.clamp(1, self.limit);
        let permit = self
            .permits
            .acquire_many(n as u32)
            .await
            .map_err(|_| "the buffer pool is closed".to_string())?;
        permit.forget(); // given back by `Taken`'s drop
        let mut taken = Taken { pool: self.clone(), bufs: Vec::with_capacity(n), permits: n };
        for _ in 0..n {
            let b = self.free.borrow_mut().pop();
            taken.bufs.push(match b {
                Some(b) => b,
                None => (self.make)()?, // `taken` gives the permits back on this error
            });
        }
        Ok(taken)
    }
}

impl<B> Taken<B> {
    /// The buffers, to lend to the device (each comes back through [`Taken::put`]).
    pub fn take_all(&mut self) -> Vec<B> {
        std::mem::take(&mut self.bufs)
    }

    /// Gives a buffer back to this lot (it returns to the pool with the rest).
    pub fn put(&mut self, b: B) {
        self.bufs.push(b);
    }
}

impl<B> Drop for Taken<B> {
    fn drop(&mut self) {
        // A buffer lost with its request (a leaked I/O keeps its buffer) is made again later:
        // the permit, not the buffer, bounds the memory in use.
        self.pool.free.borrow_mut().append(&mut self.bufs);
        self.pool.permits.add_permits(self.permits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn buffers_are_made_once_reused_and_bounded() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let made = Rc::new(Cell::new(0));
        let m = made.clone();
        let pool = Pool::new(4, move || {
            m.set(m.get() + 1);
            Ok(vec![0u8; 16])
        });
        rt.block_on(async {
            let a = pool.take(3).await.unwrap();
            assert_eq!(made.get(), 3);
            // Only one left: a request for two waits until `a` is given back.
            let wait = tokio::time::timeout(std::time::Duration::from_millis(20), pool.take(2));
            assert!(wait.await.is_err(), "took more buffers than the limit");
            drop(a);
            let b = pool.take(4).await.unwrap();
            assert_eq!(made.get(), 4, "three reused, one made");
            drop(b);
            // More than the limit is capped, not a deadlock.
            assert_eq!(pool.take(100).await.unwrap().bufs.len(), 4);
        });
    }

    #[test]
    fn a_failed_make_gives_its_permits_back() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let pool: Rc<Pool<Vec<u8>>> = Pool::new(2, || Err("no DMA memory".into()));
        rt.block_on(async {
            assert_eq!(pool.take(2).await.err().as_deref(), Some("no DMA memory"));
            assert_eq!(pool.permits.available_permits(), 2);
        });
    }
}
