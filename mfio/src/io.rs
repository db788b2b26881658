//! High-level operations at a byte position: `read_at`, `write_at`, `read_all`, `write_all`,
//! each in async form (owning its buffer) and in blocking form (borrowing it).
//!
//! The async forms take the buffer by value and give it back with the result, as tokio-uring
//! does: the future owns the packet and the buffer, so dropping it mid-I/O waits for the device
//! and leaking it leaks the buffer, and neither can free memory the device still writes. The
//! blocking forms borrow (`&mut [u8]`, `&[u8]`): they cannot return before the I/O is done.

use crate::backend::{block_on, IoBackend, PacketIo};
use crate::buf::{IoBuf, IoBufMut, RawBuf};
use crate::error::PartialError;
use crate::packet::{BufFor, Packet, Transfer};
use crate::perms::{FromDevice, PacketPerms, ToDevice};
use core::future::Future;
use core::marker::PhantomData;
use core::pin::Pin;
use core::task::{Context, Poll};

/// How an operation turns a packet's [`Transfer`] into its result.
pub trait Finish {
    /// The operation's result.
    type Output;
    /// Maps the outcome.
    fn finish(t: Transfer) -> Self::Output;
}

/// `*_at` semantics: a short transfer at the end of the device is `Ok(bytes done)`, like `pread`.
#[derive(Debug)]
pub enum At {}

/// `*_all` semantics: anything short of the whole buffer is an error.
#[derive(Debug)]
pub enum All {}

impl Finish for At {
    type Output = Result<usize, PartialError>;
    fn finish(t: Transfer) -> Self::Output {
        t.into_short_result()
    }
}

impl Finish for All {
    type Output = Result<(), PartialError>;
    fn finish(t: Transfer) -> Self::Output {
        t.into_result().map(|_| ())
    }
}

/// An I/O in flight that owns its packet and buffer; resolves to `(result, buffer)`.
///
/// The packet lives inside the future (on the stack when the future is), so an I/O costs no
/// heap allocation. Dropping the future before it resolves waits for the device to finish.
///
/// `A` is the address type the backend takes (`u64` byte offsets; [`Fua`](crate::Fua) for
/// writes that must be durable when they complete).
pub struct Io<'b, Bk, P: PacketPerms, B, M, A = u64> {
    packet: Packet<'b, P, B>,
    backend: &'b Bk,
    pos: A,
    submitted: bool,
    _mode: PhantomData<M>,
}

impl<'b, Bk, P, B, M, A> Io<'b, Bk, P, B, M, A>
where
    Bk: PacketIo<P, A> + IoBackend,
    P: PacketPerms,
    B: BufFor<P>,
    M: Finish,
    A: Copy,
{
    /// An I/O of `buf` at `pos` on `backend`, submitted when first polled.
    pub fn new(backend: &'b Bk, pos: A, buf: B) -> Self {
        Self { packet: Packet::new(buf), backend, pos, submitted: false, _mode: PhantomData }
    }
}

impl<Bk, P, B, M, A> Future for Io<'_, Bk, P, B, M, A>
where
    Bk: PacketIo<P, A> + IoBackend,
    P: PacketPerms,
    B: BufFor<P>,
    M: Finish,
    A: Copy,
{
    type Output = (M::Output, B);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `packet` is structurally pinned: it is never moved out of the future, and the
        // other fields are plain data that need no pinning.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: see above; `this` itself is pinned, so its `packet` field is too.
        let mut packet = unsafe { Pin::new_unchecked(&mut this.packet) };
        if !this.submitted {
            this.submitted = true;
            if let Err(error) = packet.as_mut().submit(this.backend, this.pos) {
                let t = Transfer { len: 0, done: 0, error: Some(error) };
                let buf = packet.take_buf().expect("a fresh packet holds its buffer");
                return Poll::Ready((M::finish(t), buf));
            }
        }
        match packet.poll_done(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(t) => {
                let buf = packet.take_buf().expect("Io polled after it completed");
                Poll::Ready((M::finish(t), buf))
            }
        }
    }
}

/// Reads at byte positions, async and blocking. Implemented for every backend that can read.
pub trait ReadAt: PacketIo<FromDevice, u64> + IoBackend + Sized {
    /// Reads into `buf` at `pos`. Resolves to the bytes read (fewer only at the end of the
    /// device) or the first error with the good prefix, and gives `buf` back.
    fn read_at<B: IoBufMut>(&self, pos: u64, buf: B) -> Io<'_, Self, FromDevice, B, At> {
        Io::new(self, pos, buf)
    }

    /// Reads exactly `buf.len()` bytes at `pos`, or fails with the good prefix.
    fn read_all<B: IoBufMut>(&self, pos: u64, buf: B) -> Io<'_, Self, FromDevice, B, All> {
        Io::new(self, pos, buf)
    }

    /// Blocking [`read_at`](Self::read_at) into a borrowed buffer (zero copy where possible).
    fn read_at_blocking(&self, pos: u64, buf: &mut [u8]) -> Result<usize, PartialError> {
        // SAFETY: the packet lives inside this call's future, which `block_on` drives to
        // completion (or drops, waiting for every segment) before we return; `buf` is borrowed
        // mutably for the whole call.
        let raw = unsafe { RawBuf::new(buf.as_mut_ptr(), buf.len()) };
        block_on(self, Io::<_, FromDevice, _, At>::new(self, pos, raw)).0
    }

    /// Blocking [`read_all`](Self::read_all) into a borrowed buffer.
    fn read_all_blocking(&self, pos: u64, buf: &mut [u8]) -> Result<(), PartialError> {
        // SAFETY: as in `read_at_blocking`.
        let raw = unsafe { RawBuf::new(buf.as_mut_ptr(), buf.len()) };
        block_on(self, Io::<_, FromDevice, _, All>::new(self, pos, raw)).0
    }
}

impl<T: PacketIo<FromDevice, u64> + IoBackend> ReadAt for T {}

/// Writes at byte positions, async and blocking. Implemented for every backend that can write.
pub trait WriteAt: PacketIo<ToDevice, u64> + IoBackend + Sized {
    /// Writes `buf` at `pos`. Resolves to the bytes written (fewer only at the end of the
    /// device) or the first error with the good prefix, and gives `buf` back.
    fn write_at<B: IoBuf>(&self, pos: u64, buf: B) -> Io<'_, Self, ToDevice, B, At> {
        Io::new(self, pos, buf)
    }

    /// Writes all of `buf` at `pos`, or fails with the good prefix.
    fn write_all<B: IoBuf>(&self, pos: u64, buf: B) -> Io<'_, Self, ToDevice, B, All> {
        Io::new(self, pos, buf)
    }

    /// Blocking [`write_at`](Self::write_at) from a borrowed buffer (zero copy where possible).
    fn write_at_blocking(&self, pos: u64, buf: &[u8]) -> Result<usize, PartialError> {
        // SAFETY: as in `read_at_blocking`; a ToDevice packet only reads the memory.
        let raw = unsafe { RawBuf::new(buf.as_ptr() as *mut u8, buf.len()) };
        block_on(self, Io::<_, ToDevice, _, At>::new(self, pos, raw)).0
    }

    /// Blocking [`write_all`](Self::write_all) from a borrowed buffer.
    fn write_all_blocking(&self, pos: u64, buf: &[u8]) -> Result<(), PartialError> {
        // SAFETY: as in `write_at_blocking`.
        let raw = unsafe { RawBuf::new(buf.as_ptr() as *mut u8, buf.len()) };
        block_on(self, Io::<_, ToDevice, _, All>::new(self, pos, raw)).0
    }
}

impl<T: PacketIo<ToDevice, u64> + IoBackend> WriteAt for T {}

/// A command without data (flush, trim, write zeroes...), carried by an empty packet.
///
/// On first poll `dispatch` receives the packet's (empty) view; it may split it with
/// `split_at(0)` into as many views as it issues device commands, and hands each to the
/// backend. Resolves to the first error, if any. No heap allocation.
pub struct CommandIo<'b, Bk, F> {
    packet: Packet<'b, ToDevice, [u8; 0]>,
    backend: &'b Bk,
    dispatch: Option<F>,
}

/// Runs `dispatch` against `backend` as one packet; see [`CommandIo`].
pub fn command<Bk, F>(backend: &Bk, dispatch: F) -> CommandIo<'_, Bk, F>
where
    Bk: IoBackend,
    F: FnOnce(&Bk, crate::PacketView<ToDevice>),
{
    CommandIo { packet: Packet::new([]), backend, dispatch: Some(dispatch) }
}

impl<Bk, F> Future for CommandIo<'_, Bk, F>
where
    Bk: IoBackend,
    F: FnOnce(&Bk, crate::PacketView<ToDevice>),
{
    type Output = Result<(), crate::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `packet` is structurally pinned (never moved out); the other fields are
        // plain data or references.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: see above.
        let mut packet = unsafe { Pin::new_unchecked(&mut this.packet) };
        if let Some(dispatch) = this.dispatch.take() {
            let backend = this.backend;
            match packet.as_mut().start(Some(backend)) {
                Ok(view) => dispatch(backend, view),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        packet.poll_done(cx).map(|t| t.error.map_or(Ok(()), Err))
    }
}
