//! The one helper every integration test goes through: start vipgate
//! in-process from a TOML string, and start members on 127.0.0.x with ports
//! from the operating system.
#![allow(dead_code)] // each test file uses a different part of it

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod admin;
pub mod browser;
pub mod f5;
pub mod http_client;
pub mod lossy_link;
pub mod netns;
pub mod process;
pub mod tls_ca;

use vipgate::instance::Instance;
use vipgate::pool::MemberState;
use vipgate::server::{ConfigSource, Live};
use vipgate::stats::VirtualStats;

/// Upper bound for anything a test waits on, so a bug fails the test
/// instead of hanging it.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A vipgate running inside the test's runtime.
pub struct Vipgate {
    /// Where the admin endpoint listens, when the configuration has one.
    pub admin: Option<SocketAddr>,
    server_addrs: Vec<(String, SocketAddr)>,
    live: Live,
    reloads: Arc<vipgate::server::ReloadStats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// Starts vipgate with the configuration `toml`. Use `listen =
/// "127.0.0.100:0"` to have the OS pick the port; [`Vipgate::addr`] tells it.
pub async fn start(toml: &str) -> Vipgate {
    let plan = vipgate::config::parse(toml, "test config").unwrap_or_else(|e| panic!("{e}"));
    let instance = Instance::bind(plan, None).unwrap_or_else(|e| panic!("{e}"));
    run(instance)
}

/// Starts vipgate from the configuration file at `path`, which
/// `POST /reload` (and SIGHUP) read again.
pub async fn start_file(path: &std::path::Path) -> Vipgate {
    let (text, plan) = vipgate::config::load_with_text(path).unwrap_or_else(|e| panic!("{e}"));
    let source = ConfigSource {
        path: path.to_path_buf(),
        text,
        snat_share: None,
    };
    let instance = Instance::bind(plan, Some(source)).unwrap_or_else(|e| panic!("{e}"));
    run(instance)
}

fn run(server: Instance) -> Vipgate {
    let names: Vec<String> = server
        .live()
        .load()
        .plan()
        .virtuals
        .iter()
        .map(|v| v.name.clone())
        .collect();
    let server_addrs = names
        .into_iter()
        .map(|name| {
            let addr = server.local_addr(&name).unwrap();
            (name, addr)
        })
        .collect();
    let live = server.live();
    let reloads = server.control().reloads();
    let admin = server.admin_addr();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Vipgate {
        admin,
        server_addrs,
        live,
        reloads,
        stop: Some(stop),
        task,
    }
}

impl Vipgate {
    /// Where virtual `name` listens.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.server_addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no virtual {name}"))
    }

    pub fn virtual_stats(&self, name: &str) -> Arc<VirtualStats> {
        self.live.load().virtual_stats(name).unwrap().clone()
    }

    pub fn snapshot(&self) -> Arc<vipgate::server::Snapshot> {
        self.live.load_full()
    }

    /// The live state as `/status` and `/metrics` read it.
    pub fn status(&self) -> vipgate::status::Status {
        vipgate::status::Status::of(&self.live.load(), self.reloads.counts())
    }

    pub fn member(&self, address: SocketAddr) -> Arc<MemberState> {
        self.live.load().member(&address).unwrap().clone()
    }

    /// The health of the member at `address` in the first pool that lists
    /// it (health is judged per pool).
    pub fn health(&self, address: SocketAddr) -> vipgate::pool::Health {
        self.pool_health(None, address)
    }

    /// The health of the member at `address` in `pool` (or, with `None`,
    /// in the first pool that lists it).
    pub fn pool_health(&self, pool: Option<&str>, address: SocketAddr) -> vipgate::pool::Health {
        let snapshot = self.live.load();
        let health = snapshot
            .pools()
            .filter(|p| pool.is_none_or(|name| p.name() == name))
            .flat_map(|p| p.members())
            .find(|m| m.state.address() == address)
            .unwrap_or_else(|| panic!("no member {address} in {pool:?}"))
            .health
            .health();
        health
    }

    /// Starts the shutdown (as SIGTERM would) and returns the task that
    /// finishes when vipgate has stopped.
    pub fn begin_shutdown(&mut self) -> &mut JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        &mut self.task
    }
}

/// Starts a member on `ip` (port from the OS) answering each line `L` with
/// `"{tag} L"`: the same simulated proxy `vipgate demo` runs.
pub async fn tagged_member(ip: &str, tag: &str) -> SocketAddr {
    vipgate::demo::spawn_tagged_echo(format!("{ip}:0").parse().unwrap(), tag.to_string())
        .await
        .unwrap()
}

/// Starts a member on `ip` that sends back every byte it receives and
/// half-closes when the client does.
pub async fn echo_member(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.into_split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    addr
}

/// An address on `ip` where nothing listens: connecting is refused.
pub async fn refusing_address(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    listener.local_addr().unwrap()
}

/// A client connection that speaks lines.
pub struct LineClient {
    reader: BufReader<TcpStream>,
}

impl LineClient {
    /// Whether a client that vipgate refuses (closes or resets at once) is
    /// refused: the reset can arrive before the connect completes, or on
    /// the first question.
    pub async fn is_refused(addr: SocketAddr, question: &str) -> bool {
        match LineClient::try_connect(addr).await {
            None => true,
            Some(mut client) => client.ask(question).await.is_none(),
        }
    }

    /// Connects, or `None` when vipgate turned the client away (a reset)
    /// so fast that the reset reached the client before its connect was
    /// seen to complete.
    pub async fn try_connect(addr: SocketAddr) -> Option<LineClient> {
        LineClient::connected(TcpStream::connect(addr)).await
    }

    /// A client once `connecting` completes, or `None` if it was reset.
    async fn connected(
        connecting: impl std::future::Future<Output = std::io::Result<TcpStream>>,
    ) -> Option<LineClient> {
        match tokio::time::timeout(PATIENCE, connecting)
            .await
            .expect("connect in time")
        {
            Err(error) => {
                assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
                None
            }
            Ok(stream) => Some(LineClient {
                reader: BufReader::new(stream),
            }),
        }
    }

    /// [`try_connect`](Self::try_connect) from `source` (an address of
    /// this host, port from the OS), as a client at that address would.
    pub async fn try_connect_from(
        source: std::net::IpAddr,
        addr: SocketAddr,
    ) -> Option<LineClient> {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        LineClient::connected(socket.connect(addr)).await
    }

    pub async fn connect(addr: SocketAddr) -> LineClient {
        let stream = tokio::time::timeout(PATIENCE, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        LineClient {
            reader: BufReader::new(stream),
        }
    }

    /// The client's own address.
    pub fn local_addr(&self) -> SocketAddr {
        self.reader.get_ref().local_addr().unwrap()
    }

    /// Sends `line` and returns the answer, or `None` if the connection
    /// closed or failed instead.
    pub async fn ask(&mut self, line: &str) -> Option<String> {
        self.reader
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await
            .ok()?;
        let mut answer = String::new();
        match tokio::time::timeout(PATIENCE, self.reader.read_line(&mut answer))
            .await
            .expect("an answer or a close in time")
        {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(answer.trim_end().to_string()),
        }
    }

    /// Waits until the server closes the connection; true if it did
    /// within [`PATIENCE`].
    pub async fn closed_by_server(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(PATIENCE, self.reader.read_to_end(&mut rest)).await,
            Ok(Ok(_)) | Ok(Err(_))
        )
    }
}

/// Asks one line over a new connection; the tag of the member that
/// answered, or `None` if vipgate closed the connection.
pub async fn tag_of_answer(addr: SocketAddr) -> Option<String> {
    let answer = LineClient::try_connect(addr).await?.ask("hello").await?;
    Some(answer.split(' ').next().unwrap_or_default().to_string())
}

/// Waits for `condition` (blocking, from a plain thread), up to
/// `patience`; how long it took.
pub fn waited(what: &str, patience: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let started = std::time::Instant::now();
    eventually_blocking(what, patience, || condition().then_some(()));
    started.elapsed()
}

/// Polls `condition` every 10 ms until it holds; panics after
/// [`PATIENCE`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`eventually`] for tests on plain threads (child processes, namespaces):
/// the value `attempt` gives, once it gives one, tried every 20 ms for up to
/// `patience`; fails the test naming `what` otherwise.
pub fn eventually_blocking<T>(
    what: &str,
    patience: Duration,
    mut attempt: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + patience;
    loop {
        if let Some(value) = attempt() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The health checker's probes of `target` (any port) and how many
/// attempts each has made.
fn probe_attempts(vipgate: &Vipgate, target: std::net::IpAddr) -> Vec<(String, u64)> {
    let snapshot = vipgate.snapshot();
    snapshot
        .health()
        .probes()
        .filter(|(key, _)| key.target.ip() == target)
        .map(|(key, status)| (key.target_text(), status.attempts()))
        .collect()
}

/// Waits until every probe of `target` (any port) has made `rounds` more
/// attempts: to show that something does *not* happen (a member stays
/// up), count the probe rounds that could have changed it instead of
/// sleeping and hoping they ran.
pub async fn probe_rounds(vipgate: &Vipgate, target: std::net::IpAddr, rounds: u64) {
    let start = probe_attempts(vipgate, target);
    assert!(!start.is_empty(), "no probe watches {target}");
    eventually(&format!("{rounds} more probe rounds on {target}"), || {
        probe_attempts(vipgate, target)
            .iter()
            .zip(&start)
            .all(|((_, now), (_, then))| *now >= then + rounds)
    })
    .await;
}

/// Waits until the probe of `target` (this port) has `health` itself,
/// whatever the rules that combine it with others make of the member.
pub async fn wait_probe_health(
    vipgate: &Vipgate,
    target: SocketAddr,
    health: vipgate::pool::Health,
) {
    eventually(
        &format!("the probe of {target} is {}", health.as_str()),
        || {
            let snapshot = vipgate.snapshot();
            let found = snapshot
                .health()
                .probes()
                .find(|(key, _)| key.target == target)
                .map(|(_, status)| status.verdict().0);
            found == Some(health)
        },
    )
    .await;
}

/// A one-pool, one-virtual configuration over `members`, with extra lines
/// for the virtual.
pub fn config(members: &[SocketAddr], virtual_extra: &str) -> String {
    let members: Vec<String> = members
        .iter()
        .map(|m| format!("{{ address = \"{m}\" }}"))
        .collect();
    format!(
        "[pools.p]\nmembers = [ {} ]\n\n[virtuals.vs]\nlisten = \"127.0.0.100:0\"\npool = \"p\"\n{virtual_extra}\n",
        members.join(", ")
    )
}

/// A tagged member whose port can be closed (connections refused) and
/// opened again on the same address, to play a proxy that dies and
/// recovers. Connections already open stay open.
pub struct SwitchablePort {
    pub addr: SocketAddr,
    tag: String,
    task: Option<JoinHandle<()>>,
}

impl SwitchablePort {
    pub async fn open(ip: &str, tag: &str) -> SwitchablePort {
        SwitchablePort::open_at(&format!("{ip}:0"), tag).await
    }

    /// Like [`open`](Self::open), on a fixed address.
    pub async fn open_at(address: &str, tag: &str) -> SwitchablePort {
        let listener = TcpListener::bind(address)
            .await
            .unwrap_or_else(|e| panic!("cannot listen on {address}: {e}"));
        let addr = listener.local_addr().unwrap();
        SwitchablePort {
            addr,
            tag: tag.to_string(),
            task: Some(tokio::spawn(vipgate::demo::serve_tagged_echo(
                listener,
                tag.to_string(),
            ))),
        }
    }

    /// Stops listening: new connections are refused.
    pub async fn close(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same address.
    pub async fn reopen(&mut self) {
        self.close().await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(error) if tokio::time::Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => panic!("cannot listen on {} again: {error}", self.addr),
            }
        };
        self.task = Some(tokio::spawn(vipgate::demo::serve_tagged_echo(
            listener,
            self.tag.clone(),
        )));
    }
}

/// Waits until the member at `address` has `health` in vipgate (in the
/// first pool that lists it).
pub async fn wait_health(vipgate: &Vipgate, address: SocketAddr, health: vipgate::pool::Health) {
    wait_pool_health(vipgate, None, address, health).await;
}

/// Waits until the member at `address` has `health` in `pool`.
pub async fn wait_pool_health(
    vipgate: &Vipgate,
    pool: Option<&str>,
    address: SocketAddr,
    health: vipgate::pool::Health,
) {
    eventually(
        &format!("member {address} is {} in {pool:?}", health.as_str()),
        || vipgate.pool_health(pool, address) == health,
    )
    .await;
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so
/// connecting to it hangs until the connect timeout.
pub async fn silent_address(ip: &str) -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(
            &format!("{ip}:0")
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(stream) => fillers.push(stream),
            Err(_) => return (listener, fillers, addr),
        }
    }
    panic!("could not fill the accept queue of {addr}");
}

/// Raises this process's open-file limit to its hard limit.
pub fn raise_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct we pass.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}
