//! A connection's watch on a stop signal (a shutdown, a drain, a member
//! going down): a future that resolves once its [`CancellationToken`] is
//! cancelled, and costs no lock and no atomic write on the other wakes of
//! its task.
//!
//! Why not `token.cancelled()`: its poll takes the token's mutex (to read
//! the flag) and the notifier's waiter-list mutex (to refresh the waker)
//! every time, and a connection's task polls it on every wake: each read,
//! each request. Those tokens are shared by every connection of the process
//! or of a member, on every worker, so those were two locks per wake shared
//! by all connections, bouncing between cores; `is_cancelled` was the
//! costliest single user-space symbol of an HTTP virtual under load.
//!
//! Here the token's own future is polled with a waker of this watch's
//! making, once, and again only after that waker fired; on the other polls
//! the watch reads one flag of its own. The task's waker is handed to the
//! firing side through an [`AtomicWaker`], which clones it only when it
//! changed.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The two steps of a shutdown, as the accept loops and every connection
/// see them; one name for each everywhere. Cloning costs two reference
/// counts.
#[derive(Clone, Debug, Default)]
pub(crate) struct Shutdown {
    /// The first step: accept no more clients; an HTTP connection finishes
    /// the request in flight, then closes; TCP connections go on.
    pub draining: CancellationToken,
    /// The second: the drain is over (`settings.drain_timeout`), every
    /// connection closes now. Also the parent of each member's retirement
    /// and reset signals.
    pub closing: CancellationToken,
    /// A child of `closing`, fired alone when a binary upgrade's successor
    /// takes the plain TCP connections over: their pumps stop, flush and
    /// hand their sockets on (see [`crate::virtual_server::hand_over`]).
    pub handing_over: CancellationToken,
}

/// A stop signal in two trees: `all` reaches every connection; `plain`
/// only the plain TCP ones (plain or TLS passthrough on both sides), which
/// a binary upgrade moves to the new process. Each member's retirement
/// and reset signals are such a pair, so a hand-over wakes only the
/// connections that can move, while a retirement or reset still reaches
/// every one. `plain` is a child of the `all` one above it.
#[derive(Clone, Debug, Default)]
pub struct StopTokens {
    pub all: CancellationToken,
    pub plain: CancellationToken,
}

impl StopTokens {
    /// The roots: `closing` and `handing_over` (its child).
    pub fn root() -> StopTokens {
        let all = CancellationToken::new();
        let plain = all.child_token();
        StopTokens { all, plain }
    }

    /// A pair below this one in both trees.
    pub fn child(&self) -> StopTokens {
        StopTokens {
            all: self.all.child_token(),
            plain: self.plain.child_token(),
        }
    }

    /// Fires both.
    pub fn cancel(&self) {
        self.all.cancel();
        self.plain.cancel();
    }

    /// The token a connection listens to: `plain` if it can move to a
    /// successor, `all` otherwise.
    pub fn for_connection(&self, movable: bool) -> CancellationToken {
        if movable {
            self.plain.clone()
        } else {
            self.all.clone()
        }
    }
}

pin_project_lite::pin_project! {
    /// Resolves once `token` is cancelled (at once if it already is).
    ///
    /// 8 bytes more than the token's own future in the connection's task,
    /// and 48 on the heap: an idle connection's size counts.
    pub struct StopSignal {
        #[pin]
        cancelled: WaitForCancellationFutureOwned,
        fired: Arc<Fired>,
    }
}

/// Shared between the watch and the token's notifier.
struct Fired {
    /// The token's future may be ready: poll it again. Set at first, so
    /// that the first poll registers with the token.
    flag: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Fired {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // The flag before the wake: the task, once woken, must see it.
        self.flag.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl StopSignal {
    /// Watches `token`.
    pub fn new(token: CancellationToken) -> StopSignal {
        StopSignal {
            cancelled: token.cancelled_owned(),
            fired: Arc::new(Fired {
                flag: AtomicBool::new(true),
                task: AtomicWaker::new(),
            }),
        }
    }
}

impl StopSignal {
    /// A waker for the task that polls this watch: another thread that
    /// wants the task to look at something (a request to leave) wakes it
    /// through here, without a waker of its own in every connection.
    pub fn waker(&self) -> Waker {
        Waker::from(Arc::clone(&self.fired))
    }
}

impl Future for StopSignal {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        // Registered before the flag is read, so a firing in between wakes
        // this task again rather than being lost. Unchanged (the usual
        // case: a task keeps its waker), it is two uncontended atomic
        // operations on this connection's own cache line.
        this.fired.task.register(cx.waker());
        if !this.fired.flag.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        this.fired.flag.store(false, Ordering::Relaxed);
        let waker = Waker::from(Arc::clone(this.fired));
        this.cancelled.poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its wakes.
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Counter>, Waker) {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        (Arc::clone(&counter), Waker::from(counter))
    }

    #[test]
    fn resolves_at_once_for_a_cancelled_token() {
        let token = CancellationToken::new();
        token.cancel();
        let (_, waker) = counter();
        let mut signal = Box::pin(StopSignal::new(token));
        assert!(signal
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready());
    }

    #[test]
    fn wakes_the_task_and_resolves_when_cancelled() {
        let token = CancellationToken::new();
        let (wakes, waker) = counter();
        let mut signal = Box::pin(StopSignal::new(token.child_token()));
        let mut cx = Context::from_waker(&waker);
        for _ in 0..3 {
            assert!(signal.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        // A parent's cancellation reaches the child token the watch holds.
        token.cancel();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(signal.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn wakes_the_latest_task_waker() {
        let token = CancellationToken::new();
        let (first, first_waker) = counter();
        let (second, second_waker) = counter();
        let mut signal = Box::pin(StopSignal::new(token.clone()));
        assert!(signal
            .as_mut()
            .poll(&mut Context::from_waker(&first_waker))
            .is_pending());
        assert!(signal
            .as_mut()
            .poll(&mut Context::from_waker(&second_waker))
            .is_pending());
        token.cancel();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert!(signal
            .as_mut()
            .poll(&mut Context::from_waker(&second_waker))
            .is_ready());
    }

    #[tokio::test]
    async fn a_task_waiting_on_it_ends_when_cancelled_from_another_thread() {
        let token = CancellationToken::new();
        let waiting = tokio::spawn(StopSignal::new(token.clone()));
        tokio::task::yield_now().await;
        std::thread::spawn(move || token.cancel()).join().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the watch resolved")
            .unwrap();
    }
}
