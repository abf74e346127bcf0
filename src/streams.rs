//! The two legs of a proxied connection as one type each, TLS or not, so
//! the code above them (the HTTP layer, the ClientHello forwarder, the
//! pump) is written once; and the socket options both legs get.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::Keepalive;

/// The client side of a connection: the socket itself, or the TLS stream
/// vipgate terminates on it.
pub enum Front {
    Plain(TcpStream),
    Tls(Box<crate::tls::ServerStream>),
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_tls() {
            "Front::Tls"
        } else {
            "Front::Plain"
        })
    }
}

impl std::fmt::Debug for Back {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Back::Plain(_) => "Back::Plain",
            Back::Tls(_) => "Back::Tls",
        })
    }
}

/// The member side of a connection: the socket, or TLS over it.
pub enum Back {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Front {
    pub fn socket(&self) -> &TcpStream {
        match self {
            Front::Plain(socket) => socket,
            Front::Tls(tls) => tls.socket(),
        }
    }

    /// Whether the client reached vipgate over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Front::Tls(_))
    }

    /// The application protocol agreed by ALPN in the TLS handshake
    /// (`h2`, `http/1.1`), if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Front::Plain(_) => None,
            Front::Tls(tls) => tls.alpn_protocol(),
        }
    }
}

impl Back {
    pub fn socket(&self) -> &TcpStream {
        match self {
            Back::Plain(socket) => socket,
            Back::Tls(tls) => tls.get_ref().0,
        }
    }
}

/// Socket options for both legs of a proxied connection.
pub fn tune(stream: &TcpStream, keepalive: Keepalive) {
    // Both legs carry interactive traffic: never hold a small write back.
    let _ = stream.set_nodelay(true);
    if let Keepalive::On {
        idle,
        interval,
        probes,
    } = keepalive
    {
        let params = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(interval)
            .with_retries(probes);
        let socket = SockRef::from(stream);
        if let Err(error) = socket.set_tcp_keepalive(&params) {
            tracing::debug!(%error, "cannot set TCP keepalive");
        }
        // Keepalive probes only go out on a quiet connection. One with
        // data the peer never acknowledges (its client moved to the other
        // node of a pair, and its reset went there too) would otherwise
        // retransmit for a quarter of an hour: give up as keepalive would.
        let give_up = idle + interval * probes;
        if let Err(error) = socket.set_tcp_user_timeout(Some(give_up)) {
            tracing::debug!(%error, "cannot set TCP_USER_TIMEOUT");
        }
    }
}

/// Forwards the tokio I/O traits to whichever variant is there.
macro_rules! either_io {
    ($type:ident) => {
        impl AsyncRead for $type {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $type::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
                    $type::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
                }
            }
        }

        impl AsyncWrite for $type {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $type::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
                    $type::Tls(stream) => Pin::new(stream).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $type::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
                    $type::Tls(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $type::Plain(stream) => stream.is_write_vectored(),
                    $type::Tls(stream) => stream.is_write_vectored(),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $type::Plain(stream) => Pin::new(stream).poll_flush(cx),
                    $type::Tls(stream) => Pin::new(stream).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $type::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
                    $type::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
                }
            }
        }
    };
}

either_io!(Front);
either_io!(Back);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn tune_sets_nodelay_and_the_configured_keepalive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tune(
            &stream,
            Keepalive::On {
                idle: Duration::from_secs(61),
                interval: Duration::from_secs(7),
                probes: 3,
            },
        );
        let socket = SockRef::from(&stream);
        assert!(socket.tcp_nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(61)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(7)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(61 + 7 * 3)),
            "unacknowledged data gives up as keepalive would"
        );

        let plain = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tune(&plain, Keepalive::Off);
        assert!(!SockRef::from(&plain).keepalive().unwrap());
    }
}
