//! The client side of a TLS-terminating virtual: a TCP socket and a rustls
//! server connection, driven through rustls' unbuffered API so that the
//! record buffers belong to vipgate.
//!
//! rustls' buffered connection keeps a 4 KiB read buffer for the life of
//! every connection; with tens of thousands of agents idle for hours that
//! was half of what an idle TLS connection cost. Here both record buffers
//! (bytes read but not yet decrypted, bytes encrypted but not yet sent)
//! are leased from a per-thread spare list only while bytes wait in them,
//! as the plain pump does: an idle connection holds none.
//!
//! Reads and writes keep to the order rustls asks for: whatever it has to
//! send (its handshake flight, session tickets, a key-update reply, an
//! alert) is queued before anything else is written, and sent before the
//! stream waits for the peer.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::proxy::SparePool;

/// Size of one leased record buffer, 66 KiB: four full TLS records (16 KiB
/// of plaintext and their overhead, 16,709 bytes at most on the wire), so
/// that a bulk transfer reads and writes four records per system call.
const RECORD_BUFFER: usize = 66 * 1024;

/// Plaintext per record: the TLS maximum, 16 KiB.
const MAX_RECORD: usize = 16 * 1024;

/// A handshake message may span records (a long client certificate
/// chain); while handshaking, the read buffer may grow to this, above the
/// 64 KiB rustls' own buffered connection allows.
const MAX_HANDSHAKE_BUFFER: usize = 2 * RECORD_BUFFER;

/// Plaintext accepted per write: four records.
const MAX_WRITE: usize = 4 * MAX_RECORD;

/// Spare record buffers kept per worker thread.
const SPARE_BUFFERS: usize = 32;

thread_local! {
    static SPARE: SparePool<Box<[u8]>> = const { SparePool::new(SPARE_BUFFERS) };
}

/// Bytes waiting in a buffer leased only while there are any.
#[derive(Default)]
struct Records {
    buffer: Option<Box<[u8]>>,
    /// Where the bytes not yet consumed start and end.
    start: usize,
    end: usize,
}

impl Records {
    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn filled_mut(&mut self) -> &mut [u8] {
        match &mut self.buffer {
            Some(buffer) => &mut buffer[self.start..self.end],
            None => &mut [],
        }
    }

    /// The free space after the bytes held, leasing a buffer first if
    /// none is held, and moving the bytes to the front when they sit at
    /// the end.
    fn free_mut(&mut self) -> &mut [u8] {
        let buffer = self.buffer.get_or_insert_with(|| {
            SPARE
                .with(SparePool::take)
                .unwrap_or_else(|| vec![0; RECORD_BUFFER].into_boxed_slice())
        });
        if self.start > 0 && self.end == buffer.len() {
            buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut buffer[self.end..]
    }

    /// Makes room for `more` bytes after those held (a record or
    /// handshake message longer than the leased buffer).
    fn grow_for(&mut self, more: usize) {
        let held = self.end - self.start;
        let mut bigger = vec![0; held + more].into_boxed_slice();
        bigger[..held].copy_from_slice(self.filled_mut());
        self.start = 0;
        self.end = held;
        self.buffer = Some(bigger);
    }

    fn capacity(&self) -> usize {
        self.buffer
            .as_ref()
            .map_or(RECORD_BUFFER, |buffer| buffer.len())
    }

    fn added(&mut self, count: usize) {
        self.end += count;
    }

    /// Drops `count` bytes from the front; gives the buffer back once it
    /// is empty.
    fn consume(&mut self, count: usize) {
        self.start += count.min(self.end - self.start);
        if self.is_empty() {
            self.start = 0;
            self.end = 0;
            if let Some(buffer) = self.buffer.take() {
                if buffer.len() == RECORD_BUFFER {
                    let _ = SPARE.try_with(|spare| spare.give_back(buffer));
                }
            }
        }
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        self.start = self.end;
        self.consume(0);
    }
}

/// A TLS connection vipgate ends as the server, over a TCP socket.
pub struct ServerStream {
    socket: TcpStream,
    connection: UnbufferedServerConnection,
    /// TLS records read from the socket and not yet processed.
    incoming: Records,
    /// TLS records to send, in order.
    outgoing: Records,
    /// Decrypted bytes the reader had no room for (a record larger than
    /// its buffer, or found while writing); allocated only then.
    plaintext: Vec<u8>,
    plaintext_start: usize,
    /// The peer's stream ended: close_notify, or the socket's end.
    read_ended: bool,
    /// A close_notify was queued: nothing more may be written.
    write_closed: bool,
}

/// What one turn of rustls' state machine left to do.
enum Next {
    /// Turn again: it produced something (records to send).
    Again,
    /// It decrypted plaintext (into the reader's buffer, and what did not
    /// fit into `plaintext`).
    Plaintext,
    /// It needs bytes from the peer.
    Input,
    /// Application data may be written: the turn wrote what it was given.
    Wrote(usize),
    /// Both sides sent close_notify: nothing more can be written.
    Closed,
}

/// What a turn may write once application data can be written.
#[derive(Clone, Copy)]
enum Write<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

impl ServerStream {
    /// Runs the handshake on `socket` as the server configured by `config`.
    pub async fn accept(
        socket: TcpStream,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<ServerStream> {
        let connection = UnbufferedServerConnection::new(config).map_err(invalid_data)?;
        let mut stream = ServerStream {
            socket,
            connection,
            incoming: Records::default(),
            outgoing: Records::default(),
            plaintext: Vec::new(),
            plaintext_start: 0,
            read_ended: false,
            write_closed: false,
        };
        poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    /// The TCP socket under the TLS.
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// The application protocol agreed by ALPN, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.connection.alpn_protocol()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.turn(Write::Nothing, None)? {
                Next::Again | Next::Plaintext => continue,
                Next::Wrote(_) | Next::Closed if !self.connection.is_handshaking() => {
                    return self.poll_send(cx);
                }
                _ => {
                    // The peer answers only what it has received.
                    ready!(self.poll_send(cx))?;
                    if !ready!(self.poll_receive(cx))? {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the client closed the connection during the handshake",
                        )));
                    }
                }
            }
        }
    }

    /// One turn of rustls' state machine over the records read so far:
    /// plaintext goes to `reader` (when given, and while it has room) and
    /// otherwise to `plaintext`, records to send to `outgoing`, and once
    /// application data may be written, `write` is encrypted.
    fn turn(&mut self, write: Write<'_>, mut reader: Option<&mut ReadBuf<'_>>) -> io::Result<Next> {
        let status = self
            .connection
            .process_tls_records(self.incoming.filled_mut());
        let discard = status.discard;
        let next = match status.state {
            Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                while let Some(record) = traffic.next_record() {
                    let mut payload = record.map_err(invalid_data)?.payload;
                    // Straight into the reader's buffer: nothing kept, no
                    // copy in between, unless it has no room left.
                    if let Some(reader) = reader.as_deref_mut() {
                        if self.plaintext.is_empty() {
                            let fits = payload.len().min(reader.remaining());
                            reader.put_slice(&payload[..fits]);
                            payload = &payload[fits..];
                        }
                    }
                    self.plaintext.extend_from_slice(payload);
                }
                Next::Plaintext
            }
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                loop {
                    match encode.encode(self.outgoing.free_mut()) {
                        Ok(written) => break self.outgoing.added(written),
                        Err(EncodeError::InsufficientSize(size)) => {
                            self.outgoing.grow_for(size.required_size)
                        }
                        Err(error) => return Err(invalid_data(error)),
                    }
                }
                Next::Again
            }
            // Sent in order with the rest of `outgoing`, before the stream
            // next waits on the peer.
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                transmit.done();
                Next::Again
            }
            Ok(ConnectionState::BlockedHandshake) => Next::Input,
            Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                let mut taken = 0;
                match write {
                    Write::Nothing => {}
                    Write::Data(data) => {
                        // One record per chunk, as many as the buffer
                        // holds: one system call sends them all.
                        for chunk in data.chunks(MAX_RECORD) {
                            match encrypted(&mut self.outgoing, taken == 0, |free| {
                                traffic.encrypt(chunk, free)
                            })? {
                                true => taken += chunk.len(),
                                false => break,
                            }
                        }
                    }
                    Write::CloseNotify => {
                        encrypted(&mut self.outgoing, true, |free| {
                            traffic.queue_close_notify(free)
                        })?;
                    }
                }
                Next::Wrote(taken)
            }
            Ok(ConnectionState::PeerClosed) => {
                self.read_ended = true;
                Next::Again
            }
            Ok(ConnectionState::Closed) => {
                self.read_ended = true;
                Next::Closed
            }
            Ok(_) => {
                return Err(invalid_data(
                    "unexpected TLS state (early data is not accepted)",
                ));
            }
            Err(error) => {
                self.incoming.consume(discard);
                self.send_alert();
                return Err(invalid_data(error));
            }
        };
        self.incoming.consume(discard);
        Ok(next)
    }

    /// After a fatal error, sends the alert rustls queued for it if the
    /// socket takes it now; the connection closes either way.
    fn send_alert(&mut self) {
        let status = self.connection.process_tls_records(&mut []);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
            if let Ok(written) = encode.encode(self.outgoing.free_mut()) {
                self.outgoing.added(written);
            }
        }
        let _ = self.socket.try_write(self.outgoing.filled_mut());
    }

    /// Writes out every queued record.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.outgoing.is_empty() {
            ready!(self.socket.poll_write_ready(cx))?;
            match self.socket.try_write(self.outgoing.filled_mut()) {
                Ok(written) => self.outgoing.consume(written),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads what the socket has into `incoming`: `Ready(Ok(false))` at its
    /// end. Holds no buffer while it waits.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            ready!(self.socket.poll_read_ready(cx))?;
            if self.incoming.free_mut().is_empty() {
                // A handshake message longer than a record; after the
                // handshake a record always fits.
                let capacity = self.incoming.capacity();
                if !self.connection.is_handshaking() || capacity >= MAX_HANDSHAKE_BUFFER {
                    return Poll::Ready(Err(invalid_data("TLS message too large")));
                }
                self.incoming.grow_for(MAX_HANDSHAKE_BUFFER - capacity);
            }
            match self.socket.try_read(self.incoming.free_mut()) {
                Ok(0) => {
                    self.incoming.consume(0);
                    return Poll::Ready(Ok(false));
                }
                Ok(count) => {
                    self.incoming.added(count);
                    return Poll::Ready(Ok(true));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.incoming.consume(0);
                }
                Err(error) => {
                    self.incoming.consume(0);
                    return Poll::Ready(Err(error));
                }
            }
        }
    }

    /// Moves waiting plaintext into `buf`; whether there was any.
    fn take_plaintext(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let waiting = &self.plaintext[self.plaintext_start..];
        if waiting.is_empty() {
            return false;
        }
        let count = waiting.len().min(buf.remaining());
        buf.put_slice(&waiting[..count]);
        self.plaintext_start += count;
        if self.plaintext_start == self.plaintext.len() {
            // Give the memory back: an idle connection holds none.
            self.plaintext = Vec::new();
            self.plaintext_start = 0;
        }
        true
    }

    /// Turns the state machine until it has written `write`.
    fn poll_write_traffic(
        &mut self,
        cx: &mut Context<'_>,
        write: Write<'_>,
    ) -> Poll<io::Result<usize>> {
        // Bounded: at most one batch of records waits to be sent.
        ready!(self.poll_send(cx))?;
        loop {
            match self.turn(write, None)? {
                Next::Wrote(taken) => return Poll::Ready(Ok(taken)),
                Next::Again => continue,
                // Found while writing: the reader, on this same task, may
                // be waiting on the socket for it.
                Next::Plaintext => cx.waker().wake_by_ref(),
                Next::Input => {
                    return Poll::Ready(Err(invalid_data("the TLS handshake is not complete")))
                }
                Next::Closed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.take_plaintext(buf) || this.read_ended {
                return Poll::Ready(Ok(()));
            }
            let filled = buf.filled().len();
            match this.turn(Write::Nothing, Some(buf))? {
                // An empty record (TLS allows them) is not the end.
                Next::Plaintext if buf.filled().len() > filled => return Poll::Ready(Ok(())),
                Next::Again | Next::Plaintext => continue,
                Next::Input | Next::Wrote(_) | Next::Closed => {
                    // What rustls queued (a key-update reply, tickets) goes
                    // out before waiting on the peer; a full socket does
                    // not stop reading, its readiness wakes this task.
                    if let Poll::Ready(Err(error)) = this.poll_send(cx) {
                        return Poll::Ready(Err(error));
                    }
                    if !ready!(this.poll_receive(cx))? {
                        // The socket's end without close_notify: most
                        // clients close that way; the stream ends.
                        this.read_ended = true;
                    }
                }
            }
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        let taken = ready!(this.poll_write_traffic(cx, Write::Data(data)))?;
        // Sent now if the socket takes it, otherwise by the next write,
        // flush or read.
        if let Poll::Ready(Err(error)) = this.poll_send(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            match ready!(this.poll_write_traffic(cx, Write::CloseNotify)) {
                // Both sides already closed: no close_notify to send.
                Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {}
                result => {
                    result?;
                }
            }
            this.write_closed = true;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.socket).poll_shutdown(cx)
    }
}

/// Encrypts with `encrypt` into the free part of `outgoing`: whether it
/// fit. When it does not and `must` is set, the buffer grows until it does.
fn encrypted(
    outgoing: &mut Records,
    must: bool,
    mut encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<bool> {
    loop {
        match encrypt(outgoing.free_mut()) {
            Ok(count) => {
                outgoing.added(count);
                return Ok(true);
            }
            Err(EncryptError::InsufficientSize(size)) if must => {
                outgoing.grow_for(size.required_size)
            }
            Err(EncryptError::InsufficientSize(_)) => return Ok(false),
            Err(error) => return Err(invalid_data(error)),
        }
    }
}

fn invalid_data(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server config for `vip.example` (a self-signed, test-only
    /// certificate) and a client that trusts it.
    fn configs(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (Arc<rustls::ServerConfig>, tokio_rustls::TlsConnector) {
        let certified = rcgen::generate_simple_self_signed(vec!["vip.example".into()]).unwrap();
        let cert = certified.cert.der().clone();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (
            Arc::new(server),
            tokio_rustls::TlsConnector::from(Arc::new(client)),
        )
    }

    /// A handshaken pair: vipgate's side and a tokio-rustls client.
    async fn pair(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (ServerStream, tokio_rustls::client::TlsStream<TcpStream>) {
        let (server_config, connector) = configs(versions);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let socket = TcpStream::connect(address).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("vip.example").unwrap();
            connector.connect(name, socket).await.unwrap()
        });
        let (socket, _) = listener.accept().await.unwrap();
        let server = ServerStream::accept(socket, server_config).await.unwrap();
        (server, client.await.unwrap())
    }

    fn holds_nothing(stream: &ServerStream) -> bool {
        stream.incoming.buffer.is_none()
            && stream.outgoing.buffer.is_none()
            && stream.plaintext.capacity() == 0
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer() {
        for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12]] {
            let (mut server, mut client) = pair(versions).await;
            client.write_all(b"hello\n").await.unwrap();
            let mut line = [0u8; 6];
            server.read_exact(&mut line).await.unwrap();
            assert_eq!(&line, b"hello\n");
            server.write_all(b"world\n").await.unwrap();
            server.flush().await.unwrap();
            client.read_exact(&mut line).await.unwrap();
            assert_eq!(&line, b"world\n");
            assert!(holds_nothing(&server), "an idle stream holds a buffer");
        }
    }

    /// A megabyte each way, read through a small buffer (so decrypted
    /// records wait for the reader), arrives whole and in order.
    #[tokio::test]
    async fn bulk_both_ways_arrives_intact_through_a_small_reader() {
        let (server, client) = pair(&[&rustls::version::TLS13]).await;
        let length = 1 << 20;
        let payload: Vec<u8> = (0..length).map(|index| (index % 251) as u8).collect();
        let (mut server_read, mut server_write) = tokio::io::split(server);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let sent = payload.clone();
        let client_sends = tokio::spawn(async move {
            client_write.write_all(&sent).await.unwrap();
            client_write.shutdown().await.unwrap();
        });
        let sent = payload.clone();
        let server_sends = tokio::spawn(async move {
            server_write.write_all(&sent).await.unwrap();
            server_write.shutdown().await.unwrap();
        });
        let mut received = Vec::new();
        let mut small = [0u8; 100];
        loop {
            let count = server_read.read(&mut small).await.unwrap();
            if count == 0 {
                break;
            }
            received.extend_from_slice(&small[..count]);
        }
        assert!(received == payload, "the server received other bytes");
        let mut received = Vec::new();
        client_read.read_to_end(&mut received).await.unwrap();
        assert!(received == payload, "the client received other bytes");
        client_sends.await.unwrap();
        server_sends.await.unwrap();
    }

    /// close_notify from the client ends the server's reading, not its
    /// writing: the half-close a request-then-shutdown client relies on.
    #[tokio::test]
    async fn a_client_close_notify_is_a_half_close() {
        let (mut server, mut client) = pair(&[&rustls::version::TLS13]).await;
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut request = Vec::new();
        server.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"request");
        server.write_all(b"answer").await.unwrap();
        server.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer");
    }

    #[tokio::test]
    async fn garbage_instead_of_a_hello_fails_the_handshake() {
        let (server_config, _) = configs(&[&rustls::version::TLS13]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let error = ServerStream::accept(socket, server_config.clone())
            .await
            .err()
            .expect("a handshake with garbage");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        // A client that leaves mid-handshake.
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        drop(client);
        let error = ServerStream::accept(socket, server_config)
            .await
            .err()
            .expect("a handshake with nobody");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
    }
}
