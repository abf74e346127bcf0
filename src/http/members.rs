//! Connections to the members of an HTTP virtual's pool, kept open between
//! requests and shared by the clients of the virtual on the same worker
//! thread.
//!
//! A member connection has no task of its own: the client task using it
//! drives it, while it sends the request, waits for the answer and streams
//! the body, so a request crosses no task (and no thread) on its way.
//! Per worker, each member has a bounded queue of idle connections. A
//! request takes the one used last (or opens one), and its response hands
//! it back once the body has been read to the end. The queue holds as
//! many as the worker needed at once (an HTTP/2 client alone may have
//! hundreds of requests in flight), up to [`IDLE_PER_MEMBER`]; a full
//! queue drops its oldest connection. One idle for longer than
//! [`MEMBER_IDLE_TIMEOUT`] is closed rather than risked, since the member
//! may be closing it at that very moment: taking the last used first lets
//! the ones a burst opened age out from the other end, and once a second
//! a worker sweeps the queues of members it no longer sends requests to.

use std::collections::VecDeque;
use std::io;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use hyper::{Request, Response};
use tokio::time::Instant;

use super::request_body::RequestBody;
use super::response_body::AnswerBody;
use super::wire::{BoxError, Failure, MemberConnection};
use super::HttpVirtual;
use crate::dial::{DialError, Dialed};
use crate::pool::MemberState;
use crate::sync::lock;

/// Idle connections kept per member and worker thread: at most 1024. The
/// queue grows only as far as the requests in flight at once took it.
pub const IDLE_PER_MEMBER: usize = 1024;

/// An idle member connection older than this is closed instead of used:
/// 15 s, below the keep-alive timeout of common application servers
/// (Tomcat's default is 20 s), so vipgate is the one that lets go.
pub const MEMBER_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

struct Idle<T> {
    link: T,
    since: Instant,
}

/// The idle connections to one member on one worker, oldest first.
///
/// Only that worker's thread ever takes the lock (the virtual is shared
/// between workers, hence a lock at all), so it is never contended and
/// closing a connection while holding it delays nobody.
struct IdleQueue<T>(Mutex<VecDeque<Idle<T>>>);

impl<T> Default for IdleQueue<T> {
    fn default() -> Self {
        IdleQueue(Mutex::new(VecDeque::new()))
    }
}

impl<T> IdleQueue<T> {
    /// The connection handed back last, closing every one too old to
    /// risk.
    fn take(&self) -> Option<T> {
        let mut idle = lock(&self.0);
        drop_expired(&mut idle, Instant::now());
        idle.pop_back().map(|newest| newest.link)
    }

    /// Keeps `link` (handed back at `now`), closing the connections too
    /// old to risk and, when full, the oldest.
    fn put(&self, link: T, now: Instant) {
        let mut idle = lock(&self.0);
        drop_expired(&mut idle, now);
        if idle.len() >= IDLE_PER_MEMBER {
            idle.pop_front();
        }
        idle.push_back(Idle { link, since: now });
    }

    /// Closes the connections too old to risk at `now`.
    fn sweep(&self, now: Instant) {
        drop_expired(&mut lock(&self.0), now);
    }

    fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

fn drop_expired<T>(idle: &mut VecDeque<Idle<T>>, now: Instant) {
    while idle
        .front()
        .is_some_and(|oldest| now - oldest.since >= MEMBER_IDLE_TIMEOUT)
    {
        idle.pop_front();
    }
}

/// How often a worker closes the expired idle connections of every member,
/// not only of those it sends requests to: 1 s.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// One worker's idle connections to each member of the pool, by index.
struct WorkerIdle<T> {
    members: Box<[IdleQueue<T>]>,
    /// When the queues were last swept: a member that gets no more
    /// requests (persistence sends them all elsewhere, say) would
    /// otherwise keep what a burst opened, each holding a descriptor
    /// even after the member closed its side.
    swept: Mutex<Instant>,
}

impl<T> WorkerIdle<T> {
    fn new(members: usize) -> WorkerIdle<T> {
        WorkerIdle {
            members: (0..members).map(|_| IdleQueue::default()).collect(),
            swept: Mutex::new(Instant::now()),
        }
    }

    /// Keeps `link` for member `index`, and now and then sweeps every
    /// member's queue.
    fn put(&self, index: usize, link: T) {
        let now = Instant::now();
        if let Some(queue) = self.members.get(index) {
            queue.put(link, now);
        }
        {
            let mut swept = lock(&self.swept);
            if now - *swept < SWEEP_INTERVAL {
                return;
            }
            *swept = now;
        }
        for queue in &self.members {
            queue.sweep(now);
        }
    }
}

/// The idle connections of one virtual, by worker, then by member index
/// in its pool.
pub(crate) struct MemberConnections {
    idle: Box<[WorkerIdle<MemberConnection>]>,
}

impl std::fmt::Debug for MemberConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: Vec<usize> = self
            .idle
            .iter()
            .map(|worker| worker.members.iter().map(IdleQueue::len).sum())
            .collect();
        f.debug_struct("MemberConnections")
            .field("idle", &idle)
            .finish()
    }
}

/// What became of a request sent to one member.
pub(crate) enum Sent {
    /// The member answered; its connection goes back to the idle queue
    /// when the body is done.
    Answered(Response<AnswerBody>),
    /// No connection could be opened: the request, untouched, for the next
    /// member, and whose fault it was.
    Unreachable(Request<RequestBody>, DialError),
    /// The connection failed once the request was on its way (or the
    /// client's body did: see `ClientBodyError`).
    Failed(BoxError),
    /// No answer within the virtual's idle timeout.
    TimedOut,
}

impl MemberConnections {
    pub(crate) fn new(workers: usize, members: usize) -> MemberConnections {
        MemberConnections {
            idle: (0..workers.max(1))
                .map(|_| WorkerIdle::new(members))
                .collect(),
        }
    }

    /// The calling worker's idle connections.
    fn worker(&self) -> &WorkerIdle<MemberConnection> {
        &self.idle[crate::workers::current() % self.idle.len()]
    }

    /// An idle connection to member `index` that is still open: looked
    /// at first, so one the member closed meanwhile is seen closed.
    async fn checkout(&self, index: usize) -> Option<MemberConnection> {
        let queue = self.worker().members.get(index)?;
        while let Some(mut connection) = queue.take() {
            if std::future::poll_fn(|cx| Poll::Ready(connection.poll_idle_open(cx))).await {
                return Some(connection);
            }
        }
        None
    }

    /// Takes back a connection whose response was read to the end.
    pub(crate) fn checkin(&self, index: usize, connection: MemberConnection) {
        self.worker().put(index, connection);
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
            let (connection, reused) = match self.members.checkout(index).await {
                Some(connection) => (connection, true),
                None => match dial(self, &member.state).await {
                    Ok(connection) => (connection, false),
                    Err(error) => return Sent::Unreachable(request, error),
                },
            };
            // The exchange runs here, on the client's task: the request
            // crosses no task on its way.
            let exchange = connection.exchange(request, reused);
            match tokio::time::timeout(self.idle_timeout, exchange).await {
                Err(_) => return Sent::TimedOut,
                Ok(Ok(response)) => return Sent::Answered(response.map(AnswerBody::Wire)),
                // A kept connection the member had just closed: again, on
                // another.
                Ok(Err(Failure::Unsent(unsent, _))) if reused => request = *unsent,
                Ok(Err(Failure::Unsent(unsent, error))) => {
                    return Sent::Unreachable(*unsent, DialError::Member(error))
                }
                Ok(Err(Failure::Failed(error))) => return Sent::Failed(error),
            }
        }
    }
}

/// Opens a connection to `member` the way the virtual opens any (the
/// dial path: its SNAT, connect timeout, its pool's TLS), ready for HTTP.
async fn dial(http: &HttpVirtual, member: &MemberState) -> Result<MemberConnection, DialError> {
    let Dialed { stream, lease } = http.dialer.dial(&http.pool, member, None).await?;
    Ok(MemberConnection::new(stream, lease))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_last_handed_back_is_taken_first_and_old_ones_are_closed() {
        let queue = IdleQueue::default();
        queue.put(1, Instant::now());
        tokio::time::advance(MEMBER_IDLE_TIMEOUT / 2).await;
        queue.put(2, Instant::now());
        queue.put(3, Instant::now());
        assert_eq!(queue.take(), Some(3));
        // 1 has now been idle too long: handing 3 back closes it.
        tokio::time::advance(MEMBER_IDLE_TIMEOUT / 2).await;
        queue.put(3, Instant::now());
        assert_eq!(queue.len(), 2);
        tokio::time::advance(MEMBER_IDLE_TIMEOUT).await;
        assert_eq!(queue.take(), None, "all too old");
        assert_eq!(queue.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_closes_its_oldest() {
        let queue = IdleQueue::default();
        for link in 0..IDLE_PER_MEMBER + 2 {
            queue.put(link, Instant::now());
        }
        assert_eq!(queue.len(), IDLE_PER_MEMBER);
        let mut taken = Vec::new();
        while let Some(link) = queue.take() {
            taken.push(link);
        }
        assert_eq!(taken.last(), Some(&2), "0 and 1 were closed");
        assert_eq!(taken.first(), Some(&(IDLE_PER_MEMBER + 1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_gets_no_more_requests_has_its_old_connections_closed() {
        let worker = WorkerIdle::new(2);
        for link in 0..10 {
            worker.put(1, link);
        }
        tokio::time::advance(MEMBER_IDLE_TIMEOUT).await;
        // Requests now go only to member 0; its next hand-back sweeps
        // member 1's queue too.
        worker.put(0, 100);
        assert_eq!(worker.members[1].len(), 0);
        assert_eq!(worker.members[0].len(), 1);
        // And again once its interval has passed.
        worker.put(1, 7);
        tokio::time::advance(MEMBER_IDLE_TIMEOUT).await;
        worker.put(0, 101);
        assert_eq!(worker.members[1].len(), 0);
    }
}
