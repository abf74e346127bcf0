//! The two legs of a connection as one type each, TLS or not, so the code
//! above them (the HTTP layer, the ClientHello forwarder) is written once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The client side of a connection: the socket itself, or the TLS stream
/// vipgate terminates on it.
pub(crate) enum Front {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// The member side of a connection: the socket, or TLS over it.
pub(crate) enum Back {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Front {
    pub(crate) fn socket(&self) -> &TcpStream {
        match self {
            Front::Plain(socket) => socket,
            Front::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Whether the client reached vipgate over TLS.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Front::Tls(_))
    }
}

impl Back {
    pub(crate) fn socket(&self) -> &TcpStream {
        match self {
            Back::Plain(socket) => socket,
            Back::Tls(tls) => tls.get_ref().0,
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
