//! Portable carrier: bytes wait in a user-space buffer between read and
//! write. Used where splice(2) is not available or `zero_copy = false`.
//!
//! The buffer is leased from a per-thread spare list once the source has
//! bytes and given back when they are all written, so an idle connection
//! holds none and a busy one allocates nothing per read.

use std::io;

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

    fn fill(&mut self, source: &TcpStream) -> io::Result<usize> {
        let read = source.try_read(&mut self.bytes)?;
        (self.written, self.filled) = (0, read);
        Ok(read)
    }

    fn drain(&mut self, sink: &TcpStream) -> io::Result<usize> {
        let written = sink.try_write(&self.bytes[self.written..self.filled])?;
        self.written += written;
        Ok(written)
    }
}
