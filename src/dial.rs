//! The one way to reach a member, for TCP and HTTP virtuals alike: take a
//! source (SNAT lease), connect within the connect timeout, write the PROXY
//! protocol header, start TLS when the pool re-encrypts, and time the whole
//! of it (`vipgate_member_connect_seconds`: TCP and TLS). A failure says
//! whose fault it was, and [`Attempts`] decides, for both kinds of virtual,
//! what that means: a member's fault is counted against it and the next
//! member is tried; an exhausted SNAT port set is not the member's fault;
//! running out of descriptors or memory here is nobody's member's fault,
//! and no other member would fare better.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::config::Keepalive;
use crate::pool::{MemberState, Pool};
use crate::snat::{SourceLease, SourceNat};
use crate::stats::Rejection;
use crate::streams::{tune, Back};
use crate::throttle::Throttle;

/// Source ports tried for one member before giving up on it: a port can be
/// busy (something else bound it) or still held toward this member by a
/// connection in TIME_WAIT.
const PORT_ATTEMPTS: usize = 8;

/// How a virtual reaches its members.
#[derive(Debug, Clone)]
pub struct Dialer {
    pub snat: SourceNat,
    /// Most time for the TCP connect, and again for the TLS handshake.
    pub connect_timeout: Duration,
    pub keepalive: Keepalive,
}

/// A connection to a member, ready for the client's bytes.
#[derive(Debug)]
pub struct Dialed {
    pub stream: Back,
    /// The source port, held as long as the connection.
    pub lease: SourceLease,
}

/// Why a member could not be reached, by whose fault.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The member refused, reset or did not answer in time.
    #[error("{0}")]
    Member(io::Error),
    /// The member's TLS handshake failed (re-encryption).
    #[error("TLS handshake with the member failed: {0}")]
    Tls(io::Error),
    /// No SNAT port toward this member was free.
    #[error("no SNAT port free toward the member")]
    SnatExhausted,
    /// This host is out of file descriptors, ports or memory.
    #[error("out of local resources: {0}")]
    LocalResources(io::Error),
}

impl DialError {
    /// Whether the member is to blame (and its failure counted).
    pub fn blames_member(&self) -> bool {
        matches!(self, DialError::Member(_) | DialError::Tls(_))
    }

    /// Sorts an I/O error of connecting: a shortage here, or the member's.
    fn of(error: io::Error) -> DialError {
        if is_local_shortage(&error) {
            DialError::LocalResources(error)
        } else {
            DialError::Member(error)
        }
    }
}

/// Errors that say this host ran short, not that the member failed.
pub fn is_local_shortage(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

impl Dialer {
    /// Connects to `member` of `pool`: a source from the SNAT, the connect
    /// within the timeout, `preamble` (a PROXY protocol header) written
    /// in clear, then TLS when the pool re-encrypts. On success the member
    /// counts the connection and its connect time.
    pub async fn dial(
        &self,
        pool: &Pool,
        member: &MemberState,
        preamble: Option<&[u8]>,
    ) -> Result<Dialed, DialError> {
        let address = member.address();
        let started = Instant::now();
        let (mut stream, lease) =
            match tokio::time::timeout(self.connect_timeout, self.open(address)).await {
                Ok(opened) => opened?,
                Err(_) => {
                    return Err(DialError::Member(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {:?}", self.connect_timeout),
                    )))
                }
            };
        tune(&stream, self.keepalive);
        if let Some(preamble) = preamble {
            stream
                .write_all(preamble)
                .await
                .map_err(DialError::Member)?;
        }
        let stream = match pool.member_tls() {
            None => Back::Plain(stream),
            Some(tls) => {
                let handshake = Box::pin(tls.connect(address, stream));
                match tokio::time::timeout(self.connect_timeout, handshake).await {
                    Ok(Ok(tls)) => Back::Tls(Box::new(tls)),
                    Ok(Err(error)) => return Err(DialError::Tls(error)),
                    Err(_) => {
                        return Err(DialError::Tls(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no TLS handshake within connect_timeout",
                        )))
                    }
                }
            }
        };
        member.record_connect_time(started.elapsed());
        member.record_connected();
        Ok(Dialed { stream, lease })
    }

    /// Connects to `address` from a source the SNAT gives, moving on to
    /// another source port when one is taken.
    async fn open(&self, address: SocketAddr) -> Result<(TcpStream, SourceLease), DialError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let source = self
                .snat
                .lease(address)
                .map_err(|_| DialError::SnatExhausted)?;
            let socket = match address {
                SocketAddr::V4(_) => TcpSocket::new_v4(),
                SocketAddr::V6(_) => TcpSocket::new_v6(),
            }
            .map_err(DialError::of)?;
            let result = match source.bind(&socket) {
                Ok(()) => socket.connect(address).await,
                Err(error) => Err(error),
            };
            match result {
                Ok(stream) => return Ok((stream, source)),
                // Dropping the lease gives the port back; the port set's
                // cursor has moved on, so the next lease is another port.
                Err(error) if attempt < PORT_ATTEMPTS && source.worth_another_port(&error) => {}
                Err(error) => return Err(DialError::of(error)),
            }
        }
    }
}

/// What came of trying members for one client (or HTTP request): the
/// reselection policy of both kinds of virtual.
#[derive(Debug, Default)]
pub struct Attempts {
    snat_exhausted: bool,
}

/// Warnings about local shortages, at most one a second for the process.
static SHORTAGE_LOG: Throttle = Throttle::new();

impl Attempts {
    /// Takes `error` from dialing `member` for virtual `virtual_name`:
    /// counts and logs it, and says whether to give up at once (`Some`:
    /// no other member would fare better) or try the next member.
    pub fn failed(
        &mut self,
        member: &MemberState,
        virtual_name: &str,
        error: &DialError,
    ) -> Option<Rejection> {
        let address = member.address();
        match error {
            DialError::Member(_) | DialError::Tls(_) => {
                member.record_connect_failure();
                if let Some(suppressed) = member.failure_log().allow() {
                    tracing::warn!(virtual_server = %virtual_name, member = %address, %error, suppressed, "cannot connect to member, trying the next one");
                }
                None
            }
            DialError::SnatExhausted => {
                self.snat_exhausted = true;
                None
            }
            DialError::LocalResources(cause) => {
                if let Some(suppressed) = SHORTAGE_LOG.allow() {
                    tracing::warn!(virtual_server = %virtual_name, member = %address, error = %cause, suppressed, "out of local resources, refusing the client; raise the open-file limit (LimitNOFILE, ulimit -n) if this persists");
                }
                Some(Rejection::LocalResources)
            }
        }
    }

    /// Why the client is refused once no member is left to try.
    pub fn exhausted(&self) -> Rejection {
        if self.snat_exhausted {
            Rejection::SnatExhausted
        } else {
            Rejection::NoMember
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortages_here_are_nobody_s_member_fault() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EADDRNOTAVAIL,
        ] {
            let error = DialError::of(io::Error::from_raw_os_error(errno));
            assert!(matches!(error, DialError::LocalResources(_)), "{errno}");
            assert!(!error.blames_member());
        }
        let refused = DialError::of(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(refused.blames_member());
        assert!(!DialError::SnatExhausted.blames_member());
    }

    #[test]
    fn the_policy_tries_the_next_member_unless_the_host_is_short() {
        let member = MemberState::new("127.0.0.1:1".parse().unwrap(), &Default::default());
        let mut attempts = Attempts::default();
        let refused = DialError::Member(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(attempts.failed(&member, "v", &refused), None);
        assert_eq!(member.connect_failures(), 1);
        assert_eq!(attempts.exhausted(), Rejection::NoMember);
        assert_eq!(
            attempts.failed(&member, "v", &DialError::SnatExhausted),
            None
        );
        assert_eq!(attempts.exhausted(), Rejection::SnatExhausted);
        let short = DialError::LocalResources(io::Error::from_raw_os_error(libc::EMFILE));
        assert_eq!(
            attempts.failed(&member, "v", &short),
            Some(Rejection::LocalResources)
        );
        assert_eq!(
            member.connect_failures(),
            1,
            "only the member's own faults count"
        );
    }
}
