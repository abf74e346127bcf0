//! Binary upgrade: `kill -USR2 <pid>` or `vipgate upgrade` (`POST
//! /upgrade`) starts the binary now found at the path this process was
//! started from, with the same arguments, and hands it what it needs to
//! take over without a client noticing:
//!
//! 1. The old process makes a Unix socket only its user may open (0600,
//!    in `$RUNTIME_DIRECTORY`, else `/run/vipgate`, else the temporary
//!    folder) and starts the new binary with `VIPGATE_UPGRADE_FROM` naming
//!    it.
//! 2. The new process connects and receives, over `SCM_RIGHTS`, every
//!    listening socket (the same sockets: no client in an accept queue is
//!    lost, none is refused) and the admin endpoint's, and the state it
//!    carries (probe verdicts, member health, operator decisions).
//! 3. It loads and checks its configuration; if it cannot serve it, it
//!    says why over the socket and exits, and the old process serves on as
//!    if nothing happened. Otherwise it serves, says `ready`, and tells
//!    systemd it is the main process now.
//! 4. The old process stops accepting and sends, over the same socket in
//!    batches of a hundred, every established connection that can move
//!    (two bare sockets: plain TCP, TLS passthrough), each with where it
//!    stands; the new process goes on with each (see
//!    [`crate::virtual_server::hand_over`]). What cannot move (TLS ended
//!    here, HTTP) drains in the old process until it ends or
//!    `settings.upgrade_drain_timeout`.
//!
//! One old process at most: another upgrade asked for while one is under
//! way is refused with a message; once the successor serves, this process
//! accepts no further upgrade, and the successor accepts one only once
//! this process has exited.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sendfd::{RecvWithFd, SendWithFd};
use serde::{Deserialize, Serialize};

use crate::proxy::InFlight;
use crate::server::{CarriedState, Control, Inherited, InheritedListener};
use crate::virtual_server::hand_over::{HandOver, MovedConnection, Moving, GATHER_LIMIT};

/// The environment variable that names the socket to take over from.
pub const FROM: &str = "VIPGATE_UPGRADE_FROM";

/// How long the new process may take to connect, and then to serve.
const PATIENCE: Duration = Duration::from_secs(60);

/// File descriptors sent in one message (the kernel takes at most 253).
const FDS_PER_MESSAGE: usize = 200;

/// The most the carried state may take on the wire.
const MAX_STATE: u32 = 64 << 20;

/// Why an upgrade did not happen; the old process serves on.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("an upgrade is already under way")]
    Busy,
    #[error("this process has handed over to a successor already; upgrade that one")]
    Replaced,
    #[error("this process is stopping; start vipgate again instead")]
    Stopping,
    #[error("the previous vipgate (process {0}) still drains its connections; one old process at a time: wait until it exits, or stop it (kill -TERM {0})")]
    PredecessorDraining(u32),
    #[error("cannot prepare the upgrade: {0}")]
    Prepare(String),
    #[error("cannot start {binary}: {error}")]
    Start {
        binary: PathBuf,
        error: std::io::Error,
    },
    #[error("the new process exited ({0}) before it took over; its log says why")]
    Exited(std::process::ExitStatus),
    #[error("the new process refused to take over: {0}")]
    Refused(String),
    #[error("the new process did not take over within {PATIENCE:?}; it was stopped")]
    TimedOut,
    #[error("the exchange with the new process failed: {0}")]
    Exchange(String),
}

/// The binary and arguments this process was started with, read at
/// start: after a package upgrade `/proc/self/exe` names a deleted file,
/// while the path names the new binary.
static STARTED_AS: OnceLock<(PathBuf, Vec<std::ffi::OsString>)> = OnceLock::new();

/// Remembers how this process was started; call it first thing in `main`'s
/// `run`.
pub fn remember_how_started() {
    let binary = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("vipgate"));
    let arguments = std::env::args_os().skip(1).collect();
    let _ = STARTED_AS.set((binary, arguments));
}

/// What the old process sends, besides the sockets themselves.
#[derive(Debug, Serialize, Deserialize)]
struct Handoff {
    /// The old process.
    pid: u32,
    /// Each virtual's bound address and how many of the sockets it owns,
    /// in the order they are sent.
    listeners: Vec<(String, SocketAddr, usize)>,
    /// Whether the admin endpoint's socket is sent last.
    admin: bool,
    state: CarriedState,
}

/// The old process's side: starts successors, one at a time.
#[derive(Debug)]
pub struct Upgrader {
    control: Arc<Control>,
    /// A copy of the admin endpoint's listening socket.
    admin: Option<std::net::TcpListener>,
    /// Held while an upgrade is under way.
    busy: tokio::sync::Mutex<()>,
    /// The process this one took over from (binary upgrade), while it may
    /// still drain.
    predecessor: Option<u32>,
}

impl Upgrader {
    pub fn new(
        control: Arc<Control>,
        admin: Option<std::net::TcpListener>,
        predecessor: Option<u32>,
    ) -> Upgrader {
        Upgrader {
            control,
            admin,
            predecessor,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// Starts the binary at the path this process came from and hands over
    /// to it. On success, this process drains (see the module doc); on
    /// failure nothing changed.
    pub async fn upgrade(&self) -> Result<UpgradeReport, UpgradeError> {
        let _busy = self.busy.try_lock().map_err(|_| UpgradeError::Busy)?;
        if self.control.replaced() {
            return Err(UpgradeError::Replaced);
        }
        if self.control.draining() {
            return Err(UpgradeError::Stopping);
        }
        if let Some(pid) = self.predecessor.filter(|pid| still_runs(*pid)) {
            return Err(UpgradeError::PredecessorDraining(pid));
        }
        let (reloads_held, listeners) = self
            .control
            .hold_listening_sockets()
            .await
            .map_err(|e| UpgradeError::Prepare(e.to_string()))?;
        let admin = match &self.admin {
            Some(socket) => Some(
                socket
                    .try_clone()
                    .map_err(|e| UpgradeError::Prepare(e.to_string()))?,
            ),
            None => None,
        };
        let state = self.control.carried_state();
        let result = tokio::task::spawn_blocking(move || hand_over(listeners, admin, state))
            .await
            .map_err(|e| UpgradeError::Exchange(e.to_string()))?;
        let (successor_pid, stream) = match result {
            Ok(taken) => taken,
            Err(error) => {
                tracing::error!(%error, "binary upgrade failed; this process serves on");
                return Err(error);
            }
        };
        tracing::info!(
            successor = successor_pid,
            "binary upgrade: the new process serves; this one stops accepting and hands its TCP connections over"
        );
        // The server stops accepting from here (`Control::when_replaced`),
        // and its drain waits for the connections to be sent.
        self.control.set_replaced();
        // A reload that waited now finds this process replaced: refused.
        drop(reloads_held);
        let started = Instant::now();
        let hand_over = self.control.start_moving_connections();
        let sending = Arc::clone(&hand_over);
        let sent = tokio::task::spawn_blocking(move || send_connections(&stream, &sending)).await;
        // Whatever comes later, or waits still after a failure, is closed.
        hand_over.close();
        self.control.connections_moved();
        let took = started.elapsed();
        let connections_moved = match sent {
            Ok(Ok(count)) => count,
            Ok(Err(error)) => {
                tracing::error!(%error, "binary upgrade: sending the connections failed; the rest were closed");
                0
            }
            Err(error) => {
                tracing::error!(%error, "binary upgrade: sending the connections failed");
                0
            }
        };
        tracing::info!(
            successor = successor_pid,
            connections_moved,
            took_ms = took.as_millis() as u64,
            "binary upgrade: TCP connections handed over; the rest (TLS ended here, HTTP) drain here"
        );
        Ok(UpgradeReport {
            successor_pid,
            connections_moved,
            took_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// What an upgrade did.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UpgradeReport {
    /// The new process.
    pub successor_pid: u32,
    /// Established connections it took over.
    pub connections_moved: usize,
    /// From the successor's "ready" to its last connection sent, in
    /// milliseconds.
    pub took_ms: u64,
}

/// One batch of established connections on the wire; their sockets go in
/// the same order (client, then member, for each).
#[derive(Debug, Serialize, Deserialize)]
struct Batch {
    connections: Vec<MovedConnection>,
    /// The last message: nothing more comes.
    end: bool,
}

/// Sends the movable connections as they come, in batches, then the end.
/// Returns how many were sent. A connection not sent (the successor went
/// away) is closed.
fn send_connections(stream: &UnixStream, hand_over: &HandOver) -> std::io::Result<usize> {
    let deadline = Instant::now() + GATHER_LIMIT;
    let mut sent = 0;
    while let Some(batch) = hand_over.next_batch(FDS_PER_MESSAGE / 2, deadline) {
        // Per connection: client, member, then both ends of each pipe of
        // bytes in flight (to the member first), as the description says.
        let mut fds: Vec<RawFd> = Vec::with_capacity(batch.len() * 2);
        for moving in &batch {
            fds.extend([moving.client.as_raw_fd(), moving.member.as_raw_fd()]);
            for in_flight in moving.to_member.iter().chain(&moving.to_client) {
                fds.extend(in_flight.descriptors().map(AsRawFd::as_raw_fd));
            }
        }
        let message = Batch {
            connections: batch.iter().map(|m| m.connection.clone()).collect(),
            end: false,
        };
        send(stream, &message, &fds)?;
        sent += batch.len();
        // Dropped here: the successor holds its own copies.
    }
    send(
        stream,
        &Batch {
            connections: Vec::new(),
            end: true,
        },
        &[],
    )?;
    Ok(sent)
}

/// Whether process `pid` still runs (and is not a zombie of ours: it is
/// not our child).
fn still_runs(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with signal 0 sends nothing; it only checks that the
    // process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Where the hand-over socket goes.
fn socket_path() -> PathBuf {
    let folder = std::env::var_os("RUNTIME_DIRECTORY")
        .map(PathBuf::from)
        .filter(|dir| dir.is_dir())
        .or_else(|| Some(PathBuf::from("/run/vipgate")).filter(|dir| dir.is_dir()))
        .unwrap_or_else(std::env::temp_dir);
    folder.join(format!("vipgate-upgrade-{}.sock", std::process::id()))
}

/// The blocking part of the old side: socket, successor, exchange.
fn hand_over(
    listeners: Vec<InheritedListener>,
    admin: Option<std::net::TcpListener>,
    state: CarriedState,
) -> Result<(u32, UnixStream), UpgradeError> {
    let path = socket_path();
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| {
        UpgradeError::Prepare(format!("cannot make the socket {}: {e}", path.display()))
    })?;
    // Removed whatever happens next.
    let _remove = RemoveOnDrop(path.clone());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| UpgradeError::Prepare(e.to_string()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| UpgradeError::Prepare(e.to_string()))?;
    let (binary, arguments) = STARTED_AS
        .get()
        .cloned()
        .unwrap_or_else(|| (PathBuf::from("vipgate"), Vec::new()));
    let mut child = Command::new(&binary)
        .args(&arguments)
        .env(FROM, &path)
        // The watchdog pid is this process's; the successor pings as the
        // main process it becomes.
        .env_remove("WATCHDOG_PID")
        .spawn()
        .map_err(|error| UpgradeError::Start {
            binary: binary.clone(),
            error,
        })?;
    let outcome = exchange(&listener, &mut child, listeners, admin, state);
    if outcome.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    } else {
        // Reaped by a thread of its own if it ever ends while this process
        // still runs; it outlives this process otherwise.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
    }
    outcome
}

fn exchange(
    listener: &UnixListener,
    child: &mut Child,
    listeners: Vec<InheritedListener>,
    admin: Option<std::net::TcpListener>,
    state: CarriedState,
) -> Result<(u32, UnixStream), UpgradeError> {
    let started = Instant::now();
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(UpgradeError::Exchange(error.to_string())),
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(UpgradeError::Exited(status));
        }
        if started.elapsed() > PATIENCE {
            return Err(UpgradeError::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let failed = |e: std::io::Error| UpgradeError::Exchange(e.to_string());
    stream.set_nonblocking(false).map_err(failed)?;
    stream.set_read_timeout(Some(PATIENCE)).map_err(failed)?;
    let mut fds: Vec<RawFd> = Vec::new();
    let mut described = Vec::new();
    for listener in &listeners {
        fds.extend(listener.sockets.iter().map(AsRawFd::as_raw_fd));
        described.push((
            listener.virtual_name.clone(),
            listener.address,
            listener.sockets.len(),
        ));
    }
    fds.extend(admin.iter().map(AsRawFd::as_raw_fd));
    let handoff = Handoff {
        pid: std::process::id(),
        listeners: described,
        admin: admin.is_some(),
        state,
    };
    send(&stream, &handoff, &fds).map_err(failed)?;
    // The successor's word: "ready", or why it will not.
    let mut line = String::new();
    let read = BufReader::new(&stream).read_line(&mut line);
    match (read, line.trim_end()) {
        (Ok(_), "ready") => Ok((child.id(), stream)),
        (Ok(_), said) if said.starts_with("refused: ") => {
            let _ = child.wait();
            Err(UpgradeError::Refused(said["refused: ".len()..].to_string()))
        }
        (Ok(_), _) => match child.wait() {
            Ok(status) => Err(UpgradeError::Exited(status)),
            Err(error) => Err(UpgradeError::Exchange(error.to_string())),
        },
        (Err(error), _) if error.kind() == std::io::ErrorKind::WouldBlock => {
            Err(UpgradeError::TimedOut)
        }
        (Err(error), _) => Err(UpgradeError::Exchange(error.to_string())),
    }
}

/// Sends the sockets (in messages of at most [`FDS_PER_MESSAGE`]), then
/// the length-prefixed description.
fn send(stream: &UnixStream, message: &impl Serialize, fds: &[RawFd]) -> std::io::Result<()> {
    let chunks: Vec<&[RawFd]> = if fds.is_empty() {
        vec![&[]]
    } else {
        fds.chunks(FDS_PER_MESSAGE).collect()
    };
    let count = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
    for (index, chunk) in chunks.iter().enumerate() {
        // One byte per message carries its sockets; the first says how
        // many messages there are.
        let header = if index == 0 {
            count.to_be_bytes()
        } else {
            [0; 4]
        };
        let sent = stream.send_with_fd(&header, chunk)?;
        if sent != header.len() {
            return Err(std::io::Error::other("a short write of the socket message"));
        }
    }
    let body = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    let length = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    let mut writer = stream;
    writer.write_all(&length.to_be_bytes())?;
    writer.write_all(&body)
}

/// The new process's side of the exchange, after [`inherit`].
#[derive(Debug)]
pub struct Successor {
    stream: UnixStream,
}

impl Successor {
    /// Tells the old process this one serves; it then stops accepting and
    /// sends its established TCP connections, which [`take_connections`]
    /// receives.
    ///
    /// [`take_connections`]: Self::take_connections
    pub fn ready(&mut self) -> std::io::Result<()> {
        self.stream.write_all(b"ready\n")
    }

    /// Receives the old process's established connections, batch by
    /// batch, handing each batch to `adopt`, until the old process says
    /// that was all. Blocks. Returns how many came.
    pub fn take_connections(self, mut adopt: impl FnMut(Vec<Moving>)) -> std::io::Result<usize> {
        let mut taken = 0;
        loop {
            let (batch, fds): (Batch, _) = receive(&self.stream)?;
            if batch.end {
                return Ok(taken);
            }
            let expected: usize = batch
                .connections
                .iter()
                .map(|c| {
                    2 + 2 * usize::from(c.pending_to_member > 0)
                        + 2 * usize::from(c.pending_to_client > 0)
                })
                .sum();
            if fds.len() != expected {
                return Err(std::io::Error::other(
                    "a batch of connections with the wrong number of descriptors",
                ));
            }
            let mut fds = fds.into_iter();
            let mut moving = Vec::with_capacity(batch.connections.len());
            for connection in batch.connections {
                let mut next = || {
                    fds.next()
                        .ok_or_else(|| std::io::Error::other("a descriptor is missing"))
                };
                let client = std::net::TcpStream::from(next()?);
                let member = std::net::TcpStream::from(next()?);
                let mut in_flight = |pending: usize| -> std::io::Result<Option<InFlight>> {
                    if pending == 0 {
                        return Ok(None);
                    }
                    let read = next()?;
                    Ok(Some(InFlight::received(read, next()?, pending)))
                };
                let to_member = in_flight(connection.pending_to_member)?;
                let to_client = in_flight(connection.pending_to_client)?;
                moving.push(Moving {
                    connection,
                    client,
                    member,
                    to_member,
                    to_client,
                });
            }
            taken += moving.len();
            adopt(moving);
        }
    }

    /// Tells the old process why this one will not take over; it serves
    /// on.
    pub fn refuse(mut self, why: &str) {
        // One line: the configuration's problems, each after the other.
        let line = why
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(self.stream, "refused: {line}");
    }
}

/// Connects to the old process at `path` and takes what it hands over:
/// the listening sockets and carried state, and the admin endpoint's
/// socket.
pub fn inherit(
    path: &std::path::Path,
) -> std::io::Result<(Inherited, Option<std::net::TcpListener>, Successor)> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    let (handoff, fds): (Handoff, _) = receive(&stream)?;
    let mut sockets = fds.into_iter().map(std::net::TcpListener::from);
    let mut listeners = Vec::new();
    for (virtual_name, address, count) in handoff.listeners {
        let taken: Vec<_> = sockets.by_ref().take(count).collect();
        if taken.len() != count {
            return Err(std::io::Error::other("fewer sockets than described"));
        }
        listeners.push(InheritedListener {
            virtual_name,
            address,
            sockets: taken,
        });
    }
    let admin = if handoff.admin { sockets.next() } else { None };
    let inherited = Inherited {
        listeners,
        state: handoff.state,
        predecessor: Some(handoff.pid),
    };
    Ok((inherited, admin, Successor { stream }))
}

/// Receives the sockets (as [`send`] sends them), then the description.
fn receive<T: serde::de::DeserializeOwned>(
    stream: &UnixStream,
) -> std::io::Result<(T, Vec<OwnedFd>)> {
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut messages = 1u32;
    let mut received = 0u32;
    while received < messages {
        let mut header = [0u8; 4];
        let mut raw = [0 as RawFd; FDS_PER_MESSAGE];
        let (bytes, count) = stream.recv_with_fd(&mut header, &mut raw)?;
        for fd in &raw[..count] {
            // SAFETY: the kernel installed these descriptors in this
            // process for this message; nothing else owns them.
            let fd = unsafe { OwnedFd::from_raw_fd(*fd) };
            // Received without close-on-exec: a later successor must get
            // them only by hand-over, never by inheriting them.
            socket2::SockRef::from(&fd).set_cloexec(true)?;
            fds.push(fd);
        }
        if bytes == 0 && received == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if bytes != header.len() {
            return Err(std::io::Error::other("a short socket message"));
        }
        if received == 0 {
            messages = u32::from_be_bytes(header).max(1);
        }
        received += 1;
    }
    let mut reader = stream;
    let mut length = [0u8; 4];
    reader.read_exact(&mut length)?;
    let length = u32::from_be_bytes(length);
    if length > MAX_STATE {
        return Err(std::io::Error::other("a hand-over message is too large"));
    }
    let mut body = vec![0u8; length as usize];
    reader.read_exact(&mut body)?;
    let message = serde_json::from_slice(&body).map_err(std::io::Error::other)?;
    Ok((message, fds))
}

/// Removes a file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
