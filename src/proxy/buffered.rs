//! Portable transfer: read into a buffer, write it out. Used where
//! splice(2) is not available or `zero_copy = false`.
//!
//! The buffer is leased from a per-thread spare list once the source has
//! bytes and given back when they are all written, so an idle connection
//! holds none and a busy one allocates nothing per read.

use std::io;
use std::task::{ready, Context, Poll};

use tokio::net::TcpStream;

use super::{Progress, PumpError, SparePool};

/// Size of one transfer buffer.
const BUFFER_SIZE: usize = 64 * 1024;

/// Spare buffers kept per worker thread.
const SPARE_BUFFERS: usize = 32;

thread_local! {
    static SPARE: SparePool<Box<[u8]>> = const { SparePool::new(SPARE_BUFFERS) };
}

/// One direction's buffered state: while bytes are in flight, the leased
/// buffer and the part of it not yet written.
#[derive(Default)]
pub(super) struct BufferedTransfer {
    in_flight: Option<InFlight>,
}

struct InFlight {
    buffer: Lease,
    written: usize,
    filled: usize,
}

impl BufferedTransfer {
    /// Moves bytes from `source` to `sink` until the source ends
    /// (`Ready(Ok)`) or either side would block.
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        source: &TcpStream,
        sink: &TcpStream,
        progress: &mut Progress,
    ) -> Poll<Result<(), PumpError>> {
        loop {
            let drained = self
                .in_flight
                .as_ref()
                .is_none_or(|in_flight| in_flight.written == in_flight.filled);
            if drained {
                if source
                    .poll_read_ready(cx)
                    .map_err(PumpError::Read)?
                    .is_pending()
                {
                    // Waiting with nothing in flight: hold no buffer.
                    self.in_flight = None;
                    return Poll::Pending;
                }
                let in_flight = self.in_flight.get_or_insert_with(|| InFlight {
                    buffer: Lease::take(),
                    written: 0,
                    filled: 0,
                });
                match source.try_read(&mut in_flight.buffer.0) {
                    Ok(0) => {
                        self.in_flight = None;
                        return Poll::Ready(Ok(()));
                    }
                    Ok(read) => (in_flight.written, in_flight.filled) = (0, read),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        self.in_flight = None;
                        continue;
                    }
                    Err(error) => return Poll::Ready(Err(PumpError::Read(error))),
                }
            }
            let Some(in_flight) = self.in_flight.as_mut() else {
                continue;
            };
            ready!(sink.poll_write_ready(cx)).map_err(PumpError::Write)?;
            match sink.try_write(&in_flight.buffer.0[in_flight.written..in_flight.filled]) {
                Ok(count) => {
                    in_flight.written += count;
                    progress.moved(count);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(PumpError::Write(error))),
            }
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
