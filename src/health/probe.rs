//! One probe of one target: a TCP connect (optionally send and expect), an
//! HTTP/1.0 GET (optionally over TLS) whose status and text are compared,
//! or an ICMP echo. Every read is bounded, so a misbehaving target can
//! only make a probe fail, never grow memory; the caller bounds the time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::icmp::{self, SocketKind};
use super::HealthError;
use crate::config::{MonitorPlan, Probe};
use crate::tls::MemberTls;

/// Most bytes read from a target while looking for `expect` or a status
/// line.
const MAX_RESPONSE: usize = 4096;

/// One monitor, ready to probe: its TLS client side and its ICMP socket
/// kinds are set up once, when the configuration is loaded.
#[derive(Debug)]
pub struct Prober {
    pub monitor: MonitorPlan,
    tls: Option<MemberTls>,
    /// ICMP socket kinds for IPv4 and IPv6 targets (`None`: no target of
    /// that family).
    icmp: (Option<SocketKind>, Option<SocketKind>),
    sequence: AtomicU16,
}

impl Prober {
    /// Prepares `monitor` for targets of the families in `families` (IPv4,
    /// IPv6). Fails when its TLS files cannot be read or ICMP cannot be
    /// sent.
    pub fn new(monitor: &MonitorPlan, families: (bool, bool)) -> Result<Prober, HealthError> {
        let mut prober = Prober {
            monitor: monitor.clone(),
            tls: None,
            icmp: (None, None),
            sequence: AtomicU16::new(0),
        };
        match &monitor.probe {
            Probe::Http { tls, .. } => {
                prober.tls = MemberTls::load(tls).map_err(|error| HealthError::Tls {
                    monitor: monitor.name.clone(),
                    error,
                })?;
            }
            Probe::Icmp => {
                let kind = |wanted: bool, ip: std::net::IpAddr| {
                    wanted
                        .then(|| icmp::socket_kind(ip))
                        .transpose()
                        .map_err(|error| HealthError::Icmp {
                            monitor: monitor.name.clone(),
                            error,
                        })
                };
                prober.icmp = (
                    kind(families.0, std::net::Ipv4Addr::LOCALHOST.into())?,
                    kind(families.1, std::net::Ipv6Addr::LOCALHOST.into())?,
                );
            }
            Probe::Tcp { .. } => {}
        }
        Ok(prober)
    }

    /// Runs one probe against `target`. `Err` carries a short reason for
    /// the log and the status page.
    pub async fn run(&self, target: SocketAddr) -> Result<(), String> {
        if let Probe::Icmp = self.monitor.probe {
            let kind = if target.is_ipv4() {
                self.icmp.0
            } else {
                self.icmp.1
            };
            let kind = kind.ok_or("no ICMP socket for this address family")?;
            let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
            return icmp::ping(kind, target.ip(), sequence).await;
        }
        let stream = TcpStream::connect(target)
            .await
            .map_err(|error| describe(&error))?;
        match (&self.monitor.probe, &self.tls) {
            (Probe::Tcp { send, expect }, _) => tcp(stream, send, expect).await,
            (Probe::Http { .. }, Some(tls)) => {
                let stream = tls
                    .connect(target, stream)
                    .await
                    .map_err(|e| format!("TLS handshake failed: {e}"))?;
                self.http(stream, target).await
            }
            (Probe::Http { .. }, None) => self.http(stream, target).await,
            (Probe::Icmp, _) => Ok(()),
        }
    }

    async fn http<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        target: SocketAddr,
    ) -> Result<(), String> {
        let Probe::Http {
            path,
            host,
            expect_status,
            expect,
            ..
        } = &self.monitor.probe
        else {
            return Ok(());
        };
        let host = if host.is_empty() {
            target.to_string()
        } else {
            host.clone()
        };
        let request = format!(
            "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: vipgate-monitor\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| describe(&e))?;
        let expect = expect.as_bytes();
        let response = read_until(&mut stream, |seen| {
            seen.contains(&b'\n') && contains(seen, expect)
        })
        .await?;
        let status = status_code(&response)
            .ok_or_else(|| "no HTTP status line in the response".to_string())?;
        if !expect_status.accepts(status) {
            return Err(format!("HTTP status {status}, expected {expect_status}"));
        }
        if !contains(&response, expect) {
            return Err(format!(
                "HTTP status {status}, but the response did not contain {:?}",
                String::from_utf8_lossy(expect)
            ));
        }
        Ok(())
    }
}

async fn tcp(mut stream: TcpStream, send: &str, expect: &str) -> Result<(), String> {
    if !send.is_empty() {
        stream
            .write_all(send.as_bytes())
            .await
            .map_err(|e| describe(&e))?;
    }
    if !expect.is_empty() {
        let response = read_until(&mut stream, |seen| contains(seen, expect.as_bytes())).await?;
        if !contains(&response, expect.as_bytes()) {
            return Err(format!("response did not contain {expect:?}"));
        }
    }
    Ok(())
}

/// Reads until `done` says so, the peer closes, or [`MAX_RESPONSE`] bytes.
async fn read_until<S: AsyncRead + Unpin>(
    stream: &mut S,
    done: impl Fn(&[u8]) -> bool,
) -> Result<Vec<u8>, String> {
    let mut seen = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while seen.len() < MAX_RESPONSE && !done(&seen) {
        let read = stream.read(&mut chunk).await.map_err(|e| describe(&e))?;
        if read == 0 {
            break;
        }
        seen.extend_from_slice(&chunk[..read.min(MAX_RESPONSE - seen.len())]);
    }
    Ok(seen)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

/// The status of an `HTTP/1.x NNN ...` line.
fn status_code(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts
        .next()
        .filter(|version| version.starts_with("HTTP/"))?;
    parts
        .next()?
        .parse()
        .ok()
        .filter(|status| (100..=599).contains(status))
}

fn describe(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_code(b"HTTP/1.0 503 Service Unavailable\r\nx"),
            Some(503)
        );
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 99999 x"), None);
        assert_eq!(status_code(b""), None);
    }

    #[test]
    fn contains_finds_substrings() {
        assert!(contains(b"hello world", b"o w"));
        assert!(!contains(b"hello", b"world"));
        assert!(contains(b"", b""));
    }
}
