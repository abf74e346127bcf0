//! A slow, lossy link between two veth ends, in user space (this kernel has
//! no netem): every frame that arrives on one end leaves by the other after
//! `delay`; IPv4 frames are dropped at random at the loss rate, all those
//! to or from a blackholed address are dropped, and on request the first
//! SYN of every TCP connection is dropped (its retransmission, a second
//! later, passes). ARP and IPv6 pass untouched, so only what the test
//! asks for is lost.
//!
//! The relay runs on a thread inside the namespace that holds both ends,
//! over two `AF_PACKET` sockets. Frames a veth hands over may carry a
//! TCP checksum left for the hardware to finish; the relay completes it,
//! as the frame it sends is checked on arrival.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::netns::Namespace;

/// Frames held for their delay at most; more are dropped (and counted).
const MAX_QUEUED: usize = 20_000;
/// Largest frame relayed (an Ethernet frame at MTU 1500).
const MAX_FRAME: usize = 1514;

/// What the test changes while the link runs, and what it counts.
#[derive(Debug, Default)]
pub struct LinkControl {
    /// Random loss of IPv4 frames, per million.
    loss_per_million: AtomicU32,
    /// Drop the first SYN of every TCP connection.
    first_syn_lost: AtomicBool,
    blackholed: Mutex<Option<Ipv4Addr>>,
    /// Frames relayed, and dropped (by loss, blackhole, first SYN, or a
    /// full queue).
    pub relayed: AtomicU64,
    pub dropped: AtomicU64,
}

impl LinkControl {
    /// Loses `percent` of IPv4 frames each way, at random.
    pub fn set_loss(&self, percent: f64) {
        self.loss_per_million
            .store((percent * 10_000.0) as u32, Relaxed);
    }

    /// Loses the first SYN of each new TCP connection (true) or not.
    pub fn lose_first_syns(&self, on: bool) {
        self.first_syn_lost.store(on, Relaxed);
    }

    /// Drops everything to or from `address` from now on.
    pub fn blackhole(&self, address: Ipv4Addr) {
        *self.blackholed.lock().unwrap() = Some(address);
    }
}

/// The running relay; stops when dropped.
pub struct LossyLink {
    pub control: Arc<LinkControl>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LossyLink {
    /// Relays between the interfaces `one` and `other` of `namespace`
    /// (both up, no address), each frame after `delay`; `seed` makes the
    /// random losses of a run repeatable.
    pub fn start(
        namespace: &Namespace,
        one: &str,
        other: &str,
        delay: Duration,
        seed: u64,
    ) -> LossyLink {
        let control = Arc::new(LinkControl::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (one, other) = (one.to_string(), other.to_string());
        let (ready, opened) = std::sync::mpsc::channel();
        let thread = namespace.spawn_in({
            let control = Arc::clone(&control);
            let stop = Arc::clone(&stop);
            move || {
                let ends = [packet_socket(&one), packet_socket(&other)];
                ready.send(()).unwrap();
                relay(&ends, delay, seed, &control, &stop);
            }
        });
        opened
            .recv_timeout(Duration::from_secs(5))
            .expect("the relay opened both ends");
        LossyLink {
            control,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for LossyLink {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A raw packet socket bound to `interface`, all protocols, non-blocking.
fn packet_socket(interface: &str) -> OwnedFd {
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            i32::from(all),
        )
    };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a new descriptor we own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(interface).unwrap();
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index != 0, "no interface {interface}");
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = all;
    address.sll_ifindex = index as i32;
    // SAFETY: address is a sockaddr_ll of the size given.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            std::ptr::addr_of!(address).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(
        bound,
        0,
        "bind to {interface}: {}",
        std::io::Error::last_os_error()
    );
    socket
}

/// A frame waiting for its delay: due time, the end it leaves by, bytes.
type Queued = (Instant, usize, Vec<u8>);

fn relay(
    ends: &[OwnedFd; 2],
    delay: Duration,
    seed: u64,
    control: &LinkControl,
    stop: &AtomicBool,
) {
    let mut random = seed | 1;
    let mut queue: VecDeque<Queued> = VecDeque::new();
    // Source address and port of SYNs already dropped once.
    let mut syns_seen: VecDeque<(u32, u16)> = VecDeque::new();
    let mut buffer = [0u8; 2048];
    while !stop.load(Relaxed) {
        let now = Instant::now();
        while queue.front().is_some_and(|(due, _, _)| *due <= now) {
            let (_, out, frame) = queue.pop_front().unwrap();
            // SAFETY: sends from a live buffer on a bound socket.
            unsafe { libc::send(ends[out].as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            control.relayed.fetch_add(1, Relaxed);
        }
        let wait = queue
            .front()
            .map_or(Duration::from_millis(10), |(due, _, _)| {
                due.saturating_duration_since(now)
            })
            .min(Duration::from_millis(10));
        let mut polls = ends.each_ref().map(|end| libc::pollfd {
            fd: end.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: polls is an array of two pollfd.
        unsafe { libc::poll(polls.as_mut_ptr(), 2, wait.as_millis().max(1) as i32) };
        for (from, end) in ends.iter().enumerate() {
            while let Some(length) = receive(end, &mut buffer) {
                let frame = &mut buffer[..length];
                if length > MAX_FRAME
                    || queue.len() >= MAX_QUEUED
                    || lost(frame, control, &mut random, &mut syns_seen)
                {
                    control.dropped.fetch_add(1, Relaxed);
                    continue;
                }
                complete_tcp_checksum(frame);
                queue.push_back((Instant::now() + delay, 1 - from, frame.to_vec()));
            }
        }
    }
}

/// One frame that arrived on `end` (not one it sent), or `None`.
fn receive(end: &OwnedFd, buffer: &mut [u8]) -> Option<usize> {
    loop {
        // SAFETY: sockaddr_ll is plain data.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_length = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: buffer and from are live and of the sizes given.
        let length = unsafe {
            libc::recvfrom(
                end.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::addr_of_mut!(from).cast(),
                &mut from_length,
            )
        };
        if length < 0 {
            return None;
        }
        if from.sll_pkttype != libc::PACKET_OUTGOING {
            return Some(length as usize);
        }
    }
}

/// Whether the link loses `frame`: a blackholed address, a first SYN, or
/// the dice (IPv4 only).
fn lost(
    frame: &[u8],
    control: &LinkControl,
    random: &mut u64,
    syns_seen: &mut VecDeque<(u32, u16)>,
) -> bool {
    let Some(ip) = ipv4(frame) else {
        return false;
    };
    let source = u32::from_be_bytes(ip[12..16].try_into().unwrap());
    let destination = u32::from_be_bytes(ip[16..20].try_into().unwrap());
    if let Some(black) = *control.blackholed.lock().unwrap() {
        let black = u32::from(black);
        if source == black || destination == black {
            return true;
        }
    }
    if control.first_syn_lost.load(Relaxed) {
        if let Some((port, true)) =
            tcp(ip).map(|tcp| (u16::from_be_bytes([tcp[0], tcp[1]]), tcp[13] & 0x12 == 0x02))
        {
            if !syns_seen.contains(&(source, port)) {
                if syns_seen.len() == 256 {
                    syns_seen.pop_front();
                }
                syns_seen.push_back((source, port));
                return true;
            }
        }
    }
    // xorshift64: enough for dice, repeatable from the seed.
    *random ^= *random << 13;
    *random ^= *random >> 7;
    *random ^= *random << 17;
    (*random % 1_000_000) < u64::from(control.loss_per_million.load(Relaxed))
}

/// The IPv4 packet in an Ethernet frame, if it is one.
fn ipv4(frame: &[u8]) -> Option<&[u8]> {
    let ip = frame.get(14..)?;
    (frame.get(12..14)? == [0x08, 0x00] && ip.len() >= 20 && ip[0] >> 4 == 4).then_some(ip)
}

/// The TCP segment in an IPv4 packet, if it carries one.
fn tcp(ip: &[u8]) -> Option<&[u8]> {
    let header = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let segment = ip.get(header..total.min(ip.len()))?;
    (ip[9] == 6 && segment.len() >= 20).then_some(segment)
}

/// Writes the full TCP checksum of an IPv4 frame (a veth may hand the
/// frame over with only the pseudo-header's sum in it).
fn complete_tcp_checksum(frame: &mut [u8]) {
    let Some(ip) = ipv4(frame) else {
        return;
    };
    let Some(segment) = tcp(ip) else {
        return;
    };
    let start = 14 + usize::from(ip[0] & 0x0f) * 4;
    let end = start + segment.len();
    let addresses: [u8; 8] = ip[12..20].try_into().unwrap();
    frame[start + 16..start + 18].fill(0);
    // The one's-complement sum of the pseudo-header and the segment.
    let mut sum: u32 = 0;
    for bytes in [
        &addresses[..],
        &[0, 6],
        &((end - start) as u16).to_be_bytes(),
        &frame[start..end],
    ] {
        for pair in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[start + 16..start + 18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}
