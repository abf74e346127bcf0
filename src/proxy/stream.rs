//! The pump when either side is not a plain socket (TLS that vipgate
//! terminates, or re-encrypts toward the member): ordinary async reads and writes through a buffer
//! per direction, with the same half-close, idle timeout and shutdown as
//! the socket pump.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{CloseReason, Outcome, PumpError, Side};

/// Buffer per direction. TLS records are at most 16 KiB.
const BUFFER_SIZE: usize = 16 * 1024;

/// Pumps bytes between `client` and `member` until the connection ends.
pub async fn run<C, M>(
    client: C,
    member: M,
    idle_timeout: Duration,
    shutdown: &CancellationToken,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    M: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let last_activity = AtomicU64::new(0);
    let (to_member, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut member_read, mut member_write) = tokio::io::split(member);
    let (reason, error) = {
        let up = copy(
            &mut client_read,
            &mut member_write,
            &to_member,
            &last_activity,
            started,
        );
        let down = copy(
            &mut member_read,
            &mut client_write,
            &to_client,
            &last_activity,
            started,
        );
        tokio::pin!(up, down);
        let idle = tokio::time::sleep(idle_timeout);
        let cancelled = shutdown.cancelled();
        tokio::pin!(idle, cancelled);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            if up_done && down_done {
                break (CloseReason::Finished, None);
            }
            tokio::select! {
                result = &mut up, if !up_done => match result {
                    Ok(()) => up_done = true,
                    Err(error) => break error.blame(Side::Client, Side::Member),
                },
                result = &mut down, if !down_done => match result {
                    Ok(()) => down_done = true,
                    Err(error) => break error.blame(Side::Member, Side::Client),
                },
                () = &mut idle => {
                    let last = started + Duration::from_millis(last_activity.load(Ordering::Relaxed));
                    if last.elapsed() >= idle_timeout {
                        break (CloseReason::IdleTimeout, None);
                    }
                    idle.as_mut().reset(last + idle_timeout);
                },
                () = &mut cancelled => break (CloseReason::Shutdown, None),
            }
        }
    };
    Outcome {
        bytes_to_member: to_member.into_inner(),
        bytes_to_client: to_client.into_inner(),
        reason,
        error,
    }
}

/// One direction: read, write, and pass the end on as a shutdown.
async fn copy<R, W>(
    reader: &mut R,
    writer: &mut W,
    bytes: &AtomicU64,
    last_activity: &AtomicU64,
    started: Instant,
) -> Result<(), PumpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; BUFFER_SIZE];
    loop {
        let read = match reader.read(&mut buffer).await {
            Ok(read) => read,
            // A TLS peer that closes the TCP connection without a
            // close_notify: most clients do; treat it as an end.
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(error) => return Err(PumpError::Read(error)),
        };
        if read == 0 {
            // A peer that already went away cannot take the FIN; the other
            // direction reports that.
            let _ = writer.shutdown().await;
            return Ok(());
        }
        writer
            .write_all(&buffer[..read])
            .await
            .map_err(PumpError::Write)?;
        bytes.fetch_add(read as u64, Ordering::Relaxed);
        last_activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}
