//! Portable pump: read into a buffer, write it out. Used where splice(2) is
//! not available or `zero_copy = false`.
//!
//! The buffer is leased from a per-thread spare list after the source turns
//! readable and given back once its bytes are written, so an idle connection
//! holds none and a busy one allocates nothing per read.

use std::io;
use std::sync::atomic::AtomicU64;

use tokio::net::TcpStream;

use super::{add_bytes, finish, Activity, PumpError, SparePool};

/// Size of one transfer buffer.
const BUFFER_SIZE: usize = 64 * 1024;

/// Spare buffers kept per worker thread.
const SPARE_BUFFERS: usize = 32;

thread_local! {
    static SPARE: SparePool<Box<[u8]>> = const { SparePool::new(SPARE_BUFFERS) };
}

pub(super) async fn pump(
    source: &TcpStream,
    sink: &TcpStream,
    activity: &Activity,
    bytes: &AtomicU64,
) -> Result<(), PumpError> {
    loop {
        source.readable().await.map_err(PumpError::Read)?;
        let mut buffer = Lease::take();
        loop {
            let read = match source.try_read(&mut buffer.0) {
                Ok(0) => return finish(sink),
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(PumpError::Read(error)),
            };
            let mut written = 0;
            while written < read {
                sink.writable().await.map_err(PumpError::Write)?;
                match sink.try_write(&buffer.0[written..read]) {
                    Ok(count) => written += count,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) => return Err(PumpError::Write(error)),
                }
            }
            add_bytes(bytes, read);
            activity.touch();
        }
    }
}

/// A buffer borrowed from this thread's spares, returned on drop.
struct Lease(Box<[u8]>);

impl Lease {
    fn take() -> Lease {
        Lease(
            SPARE
                .with(SparePool::take)
                .unwrap_or_else(|| vec![0; BUFFER_SIZE].into_boxed_slice()),
        )
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.0);
        let _ = SPARE.try_with(|spare| spare.give_back(buffer));
    }
}
