//! Running under a service manager (systemd `Type=notify`): telling it when
//! vipgate is ready, reloading and stopping, what it is doing (`STATUS=`),
//! and that it is alive (the watchdog). Without `NOTIFY_SOCKET` every call
//! here does nothing.
//!
//! The watchdog is a task on vipgate's own runtime, not a thread of its
//! own: when the runtime hangs, the pings stop and systemd restarts the
//! service.

use std::time::Duration;

use sd_notify::NotifyState;

/// How often `STATUS=` is refreshed while serving.
const STATUS_PERIOD: Duration = Duration::from_secs(5);

/// The service manager's end, when there is one.
#[derive(Debug, Clone, Copy)]
pub struct ServiceManager {
    present: bool,
}

impl ServiceManager {
    /// The manager named by `NOTIFY_SOCKET`, if set.
    pub fn from_environment() -> ServiceManager {
        ServiceManager {
            present: std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    /// One that tells nothing: a process a successor replaced (binary
    /// upgrade) must not tell systemd it is stopping.
    pub fn silent() -> ServiceManager {
        ServiceManager { present: false }
    }

    /// This process is the service's main process now (a successor after
    /// a binary upgrade; the unit needs `NotifyAccess=all`).
    pub fn main_process(&self) {
        self.send(&[NotifyState::MainPid(std::process::id())]);
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.present {
            return;
        }
        if let Err(error) = sd_notify::notify(states) {
            tracing::warn!(%error, "cannot notify the service manager");
        }
    }

    /// Every listener is bound and the admin endpoint is up.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A reload starts; [`ready`](Self::ready) must follow.
    pub fn reloading(&self) {
        let mut states = vec![NotifyState::Reloading, NotifyState::Status("reloading")];
        // systemd 253 and later want the time of the reload with it.
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        self.send(&states);
    }

    /// The drain starts.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// The watchdog period systemd asked for (`WatchdogSec=`), if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.present
            .then(sd_notify::watchdog_enabled)
            .flatten()
            .filter(|period| !period.is_zero())
    }

    /// Pings the watchdog at half its period and refreshes `STATUS=` with
    /// `status()` when it changes, until dropped. Runs on the caller's
    /// runtime, so a hung runtime stops the pings.
    pub async fn keep_alive(self, status: impl Fn() -> String) {
        if !self.present {
            return std::future::pending().await;
        }
        let watchdog = self.watchdog();
        let tick = watchdog.map_or(STATUS_PERIOD, |period| (period / 2).min(STATUS_PERIOD));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_status = String::new();
        let mut since_status = Duration::MAX;
        loop {
            interval.tick().await;
            if watchdog.is_some() {
                self.send(&[NotifyState::Watchdog]);
            }
            since_status = since_status.saturating_add(tick);
            if since_status >= STATUS_PERIOD {
                since_status = Duration::ZERO;
                let now = status();
                if now != last_status {
                    self.status(&now);
                    last_status = now;
                }
            }
        }
    }
}
