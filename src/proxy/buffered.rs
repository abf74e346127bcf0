//! Portable carrier: bytes wait in a user-space buffer between read and
//! write. Used where splice(2) is not available or `zero_copy = false`.
//!
//! The buffer is leased from a per-thread spare list once the source has
//! bytes and given back when they are all written, so an idle connection
//! holds none and a busy one allocates nothing per read.

use std::io::{self, Read, Write};

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::{Carrier, SparePool};

/// Size of one transfer buffer.
const BUFFER_SIZE: usize = 64 * 1024;

/// Spare buffers kept per worker thread.
const SPARE_BUFFERS: usize = 32;

thread_local! {
    static SPARE: SparePool<Box<[u8]>> = const { SparePool::new(SPARE_BUFFERS) };
}

/// A transfer buffer borrowed from this thread's spares; goes back on drop.
pub(super) struct Leased(Box<[u8]>);

impl Leased {
    pub(super) fn take() -> Leased {
        Leased(
            SPARE
                .with(SparePool::take)
                .unwrap_or_else(|| vec![0; BUFFER_SIZE].into_boxed_slice()),
        )
    }
}

impl std::ops::Deref for Leased {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for Leased {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl Drop for Leased {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.0);
        let _ = SPARE.try_with(|spare| spare.give_back(bytes));
    }
}

/// A leased buffer and the part of it not yet written.
pub(super) struct Buffer {
    bytes: Leased,
    written: usize,
    filled: usize,
}

impl Buffer {
    /// The bytes read but not yet written.
    pub(super) fn pending_bytes(&self) -> &[u8] {
        &self.bytes[self.written..self.filled]
    }
}

impl Carrier for Buffer {
    fn take() -> io::Result<Buffer> {
        Ok(Buffer {
            bytes: Leased::take(),
            written: 0,
            filled: 0,
        })
    }

    fn pending(&self) -> usize {
        self.filled - self.written
    }

    fn capacity(&self) -> usize {
        self.bytes.len()
    }

    /// A read that leaves room in the buffer took everything the socket
    /// had, so its read readiness is cleared right away: the next poll
    /// waits for new bytes instead of paying a system call to hear "would
    /// block" (tokio's own `poll_read` does the same).
    fn fill(&mut self, source: &TcpStream) -> io::Result<usize> {
        let bytes = &mut self.bytes;
        let read = short_clears_readiness(source, Interest::READABLE, bytes.len(), || {
            recv(source, bytes)
        })?;
        (self.written, self.filled) = (0, read);
        Ok(read)
    }

    /// A short write means the send buffer is full: likewise cleared.
    fn drain(&mut self, sink: &TcpStream) -> io::Result<usize> {
        let pending = &self.bytes[self.written..self.filled];
        let written = short_clears_readiness(sink, Interest::WRITABLE, pending.len(), || {
            send(sink, pending)
        })?;
        self.written += written;
        Ok(written)
    }
}

/// Runs `io` (a read or write of up to `asked` bytes) under the socket's
/// readiness; when it moves fewer bytes than asked (but some), clears the
/// readiness it was run under, as a "would block" would.
///
/// Done inside `try_io` so that the readiness cleared is the one observed
/// before the call: an event that arrives meanwhile carries a newer tick
/// and survives, so no wake-up is lost.
fn short_clears_readiness(
    socket: &TcpStream,
    interest: Interest,
    asked: usize,
    mut io: impl FnMut() -> io::Result<usize>,
) -> io::Result<usize> {
    let mut short = None;
    let result = socket.try_io(interest, || {
        let moved = io()?;
        if moved > 0 && moved < asked {
            short = Some(moved);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(moved)
    });
    match short {
        Some(moved) => Ok(moved),
        None => result,
    }
}

fn recv(socket: &TcpStream, buffer: &mut [u8]) -> io::Result<usize> {
    (&*SockRef::from(socket)).read(buffer)
}

fn send(socket: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    (&*SockRef::from(socket)).write(bytes)
}
