//! Connections to the members of an HTTP virtual's pool, kept open between
//! requests and shared by the clients of the virtual on the same worker
//! thread.
//!
//! Per worker, each member has a bounded queue of idle connections (a
//! member connection is driven by a task on the worker that opened it, so
//! a request from another worker would wake it across threads). A
//! request takes one (or opens one), and its response hands it back once
//! the body has been read to the end. A full queue drops its oldest
//! connection; one idle for longer than [`MEMBER_IDLE_TIMEOUT`] is closed
//! when next seen rather than risked, since the member may be closing it at
//! that very moment.

use std::io;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::body::RequestBody;
use super::HttpVirtual;
use crate::dial::{DialError, Dialed};
use crate::pool::MemberState;
use crate::snat::SourceLease;
use crate::streams::Back;

/// Idle connections kept per member: 64.
pub const IDLE_PER_MEMBER: usize = 64;

/// An idle member connection older than this is closed instead of used:
/// 15 s, below the keep-alive timeout of common application servers
/// (Tomcat's default is 20 s), so vipgate is the one that lets go.
pub const MEMBER_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection to a member, ready for a request.
pub(crate) type Sender = SendRequest<RequestBody>;

/// A freshly opened member connection: the handle requests go through, the
/// connection itself (to be driven by a task) and the SNAT source it holds.
pub(crate) type Opened = (Sender, Connection<TokioIo<Back>, RequestBody>, SourceLease);

struct Idle {
    sender: Sender,
    since: Instant,
}

/// The idle connections of one virtual, by worker, then by member index
/// in its pool.
pub(crate) struct MemberConnections {
    idle: Box<[Box<[ArrayQueue<Idle>]>]>,
}

impl std::fmt::Debug for MemberConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: Vec<usize> = self
            .idle
            .iter()
            .map(|worker| worker.iter().map(ArrayQueue::len).sum())
            .collect();
        f.debug_struct("MemberConnections")
            .field("idle", &idle)
            .finish()
    }
}

/// What became of a request sent to one member.
pub(crate) enum Sent {
    /// The member answered; the connection goes back to the idle queue
    /// when the body is done.
    Answered(Response<Incoming>, Sender),
    /// No connection could be opened: the request, untouched, for the next
    /// member, and whose fault it was.
    Unreachable(Request<RequestBody>, DialError),
    /// The connection failed once the request was on its way.
    Failed(hyper::Error),
    /// No answer within the virtual's idle timeout.
    TimedOut,
}

impl MemberConnections {
    pub(crate) fn new(workers: usize, members: usize) -> MemberConnections {
        MemberConnections {
            idle: (0..workers.max(1))
                .map(|_| {
                    (0..members)
                        .map(|_| ArrayQueue::new(IDLE_PER_MEMBER))
                        .collect()
                })
                .collect(),
        }
    }

    /// The idle queue of member `index` on the calling worker.
    fn queue(&self, index: usize) -> Option<&ArrayQueue<Idle>> {
        self.idle[crate::workers::current() % self.idle.len()].get(index)
    }

    fn checkout(&self, index: usize) -> Option<Sender> {
        let queue = self.queue(index)?;
        while let Some(idle) = queue.pop() {
            if !idle.sender.is_closed() && idle.since.elapsed() < MEMBER_IDLE_TIMEOUT {
                return Some(idle.sender);
            }
        }
        None
    }

    /// Takes back a connection whose response was read to the end.
    pub(crate) fn checkin(&self, index: usize, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if let Some(queue) = self.queue(index) {
            // A full queue gives up its oldest connection, which closes.
            let _ = queue.force_push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

impl HttpVirtual {
    /// Sends `request` to the member at `index` over an idle connection, or
    /// a new one. A request that a stale idle connection could not take
    /// (closed by the member just before) is sent again on another.
    pub(crate) async fn send(&self, index: usize, mut request: Request<RequestBody>) -> Sent {
        let Some(member) = self.pool.members().get(index) else {
            return Sent::Unreachable(
                request,
                DialError::Member(io::Error::other("no such member")),
            );
        };
        loop {
            let (mut sender, reused) = match self.members.checkout(index) {
                Some(sender) => (sender, true),
                None => match dial(self, &member.state).await {
                    Ok((sender, connection, lease)) => {
                        tokio::spawn(async move {
                            // The source port stays taken while the
                            // connection lives.
                            let _lease = lease;
                            let _ = connection.await;
                        });
                        (sender, false)
                    }
                    Err(error) => return Sent::Unreachable(request, error),
                },
            };
            let answer = sender.try_send_request(request);
            match tokio::time::timeout(self.idle_timeout, answer).await {
                Err(_) => return Sent::TimedOut,
                Ok(Ok(response)) => return Sent::Answered(response, sender),
                Ok(Err(mut error)) => match error.take_message() {
                    Some(unsent) if reused => request = unsent,
                    Some(unsent) => {
                        return Sent::Unreachable(
                            unsent,
                            DialError::Member(io::Error::other(error.into_error())),
                        )
                    }
                    None => return Sent::Failed(error.into_error()),
                },
            }
        }
    }
}

/// Opens a connection to `member` the way the virtual opens any (the
/// dial path: its SNAT, connect timeout, its pool's TLS), ready for HTTP.
pub(crate) async fn dial(http: &HttpVirtual, member: &MemberState) -> Result<Opened, DialError> {
    let Dialed { stream, lease } = http.dialer.dial(&http.pool, member, None).await?;
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        // Setting up a client connection does no I/O yet.
        .map_err(|error| DialError::Member(io::Error::other(error)))?;
    Ok((sender, connection, lease))
}
