//! Wakers that panic: every other appender is still woken, no batch is lost, nothing hangs.
//! (Run under valgrind by scripts/test.sh.)

mod common;

use common::*;
use mfio_nvme::model::NvmeModel;
use mfio_wal::{Config, Lsn, WalError};
use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// Counts its wakes and panics on the `panic_on`-th (0: never).
struct Flaky {
    wakes: AtomicUsize,
    panic_on: usize,
}

impl Wake for Flaky {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let n = self.wakes.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.panic_on {
            panic!("a waker that panics on wake {n}");
        }
    }
}

fn flaky(panic_on: usize) -> (Arc<Flaky>, Waker) {
    let f = Arc::new(Flaky { wakes: AtomicUsize::new(0), panic_on });
    (f.clone(), Waker::from(f))
}

type Outcome = Option<Result<Lsn, WalError>>;

/// Both appends' results and how often the second was woken.
type Results = (Result<Lsn, WalError>, Result<Lsn, WalError>, usize);

/// Two appends, `a` with a waker that panics on its `panic_on`-th wake and `b` with one that
/// never does, driven beside the committer until the panic comes out of the driving loop.
/// Returns the appends' outcomes, polled again afterwards, and how often `b` was woken.
fn two_appends_with_a_panicking_waker(panic_on: usize) -> (Results, Arc<Dev>, Config) {
    let model = NvmeModel::new(model_config(1024, 512));
    let dev = device(&model);
    let cfg = Config { max_batch: 64 << 10, ..Config::default() };
    let wal = format(&dev, &cfg);
    let results = drive(&wal, panic_on);
    drop(wal);
    (results, dev, cfg)
}

fn drive(wal: &mfio_wal::Wal<Dev>, panic_on: usize) -> Results {
    let (_, wa) = flaky(panic_on);
    let (fb, wb) = flaky(0);
    let mut a = pin!(wal.append(b"first"));
    let mut b = pin!(wal.append(b"second"));
    let mut committer = pin!(wal.committer());
    let (mut ra, mut rb): (Outcome, Outcome) = (None, None);
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        mfio::block_on(
            &**wal.queue(),
            poll_fn(|cx| {
                for (f, w, r) in [(a.as_mut(), &wa, &mut ra), (b.as_mut(), &wb, &mut rb)] {
                    if r.is_none() {
                        if let Poll::Ready(v) = f.poll(&mut Context::from_waker(w)) {
                            *r = Some(v);
                        }
                    }
                }
                if let Poll::Ready(e) = committer.as_mut().poll(cx) {
                    panic!("the committer stopped: {e}");
                }
                Poll::<()>::Pending
            }),
        )
    }));
    let msg = panicked.expect_err("the waker's panic comes out of the driving loop");
    assert!(
        msg.downcast_ref::<String>().is_some_and(|m| m.contains("a waker that panics")),
        "the waker's own panic, not another"
    );
    let woken = fb.wakes.load(Ordering::SeqCst);
    let again = |f: std::pin::Pin<&mut dyn Future<Output = Result<Lsn, WalError>>>, r: Outcome| {
        r.unwrap_or_else(|| match f.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("an append still waits after the panic: it would hang"),
        })
    };
    (again(a, ra), again(b, rb), woken)
}

#[test]
fn a_waker_that_panics_when_room_opens_fails_the_batch_it_held_up_and_wakes_the_rest() {
    // The first wake comes as the committer takes the batch (room for new appends): the batch
    // is not written, and both appends say so instead of waiting forever.
    let ((a, b, woken), dev, cfg) = two_appends_with_a_panicking_waker(1);
    assert!(woken >= 1, "the other appender was never woken");
    assert_eq!(a, Err(WalError::Stopped));
    assert_eq!(b, Err(WalError::Stopped));
    let (wal, got) = reopen(&dev, &cfg);
    assert!(got.is_empty(), "a batch that was never written came back: {got:?}");
    assert_eq!(wal.append_blocking(b"after").unwrap(), Lsn(1));
}

#[test]
fn a_waker_that_panics_when_its_batch_is_durable_leaves_both_appends_acknowledged() {
    let ((a, b, woken), dev, cfg) = two_appends_with_a_panicking_waker(2);
    assert!(woken >= 2, "the other appender was not woken when its batch was durable");
    assert_eq!(a, Ok(Lsn(1)));
    assert_eq!(b, Ok(Lsn(2)));
    let (wal, got) = reopen(&dev, &cfg);
    let lsns: Vec<Lsn> = got.iter().map(|(l, _)| *l).collect();
    assert_eq!(lsns, [Lsn(1), Lsn(2)]);
    assert_eq!(got[1].1, b"second");
    assert_eq!(wal.append_blocking(b"after").unwrap(), Lsn(3));
}
