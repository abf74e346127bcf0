//! HTTP/1.1 toward members, spoken by vipgate itself.
//!
//! A member connection is a socket and two buffers, driven by the client
//! task whose request it carries: the request head is written from the
//! request's fields in one go (its body after it, as the client sends
//! it), the response head is parsed where it was read, its header values
//! sharing that memory, and the body is read from the socket as the
//! client takes it, with no channel, task or extra copy between. What
//! hyper's client did here cost a task hand-off per request (a channel
//! for the request, another for the answer, one for the body) and half a
//! dozen allocations; upgrades (WebSocket) still go through hyper, in
//! `tunnel`.
//!
//! - [`head`]: the request head written, the response head read, and how
//!   the body is framed (RFC 9112).
//! - [`chunked`]: the chunked coding both ways.

mod chunked;
mod head;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::poll_read_buf;

use self::chunked::{encode_size, Chunked, Step, LAST_CHUNK};
use self::head::RequestFraming;
use self::head::{encode_request, head_end, parse_response, request_framing, Framing, HeadError};
use super::request_body::RequestBody;
use crate::snat::SourceLease;
use crate::streams::Back;

/// An error on the way to or from a member, with its causes.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The longest response head accepted from a member: 64 KiB.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Room made in the read buffer before a read of a head or of a body of
/// unknown length: 8 KiB (what one idle connection keeps).
const READ_ROOM: usize = 8 * 1024;

/// The most room made for one read of a body of known length: 64 KiB.
const BODY_READ_ROOM: usize = 64 * 1024;

/// Buffers grown past this by a large message are let go when their
/// connection goes idle: 64 KiB.
const KEPT_BUFFER: usize = 64 * 1024;

/// An open connection to a member.
pub(crate) struct MemberConnection {
    stream: Back,
    /// Bytes read from the member and not yet handed on.
    read: BytesMut,
    /// The request bytes being written (kept for its capacity).
    write: Vec<u8>,
    /// The SNAT source, held as long as the connection lives.
    _lease: SourceLease,
}

/// Why an exchange failed.
pub(crate) enum Failure {
    /// The member cannot have acted on the request (nothing reached it, or
    /// it closed the connection without a word before an idempotent
    /// request without a body): the request, untouched, can go again.
    /// (Boxed: failures are rare, and the success path's result stays
    /// small.)
    Unsent(Box<Request<RequestBody>>, io::Error),
    /// Anything else: the request is gone.
    Failed(BoxError),
}

/// How far the request has gone out.
struct Sending {
    framing: RequestFraming,
    /// Of `write`, the bytes already written.
    written: usize,
    wrote_any: bool,
    flushed: bool,
    /// A frame was taken from the client's body: it cannot be sent again.
    took_body: bool,
    body_done: bool,
}

/// What went wrong, before it is known whether the request can go again.
enum Problem {
    Io { error: io::Error, answered: bool },
    Closed { answered: bool },
    Head(HeadError),
    ClientBody(BoxError),
}

impl MemberConnection {
    pub(crate) fn new(stream: Back, lease: SourceLease) -> MemberConnection {
        MemberConnection {
            stream,
            read: BytesMut::new(),
            write: Vec::new(),
            _lease: lease,
        }
    }

    /// Whether an idle connection is still open. Nothing may arrive on an
    /// idle connection: an end, an error or a stray byte all mean the
    /// member is done with it. (No system call when nothing arrived: the
    /// socket is not readable.)
    pub(crate) fn poll_idle_open(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        Pin::new(&mut self.stream)
            .poll_read(cx, &mut ReadBuf::new(&mut probe))
            .is_pending()
    }

    /// Sends `request` and reads the response head; the body follows as
    /// the response's body is read, and hands the connection back.
    /// `reused`: the connection carried requests before (one the member
    /// closed meanwhile may fail a request that then can go again).
    pub(crate) async fn exchange(
        mut self,
        request: Request<RequestBody>,
        reused: bool,
    ) -> Result<Response<WireBody>, Failure> {
        let (parts, mut body) = request.into_parts();
        let has_body = !body.is_end_stream();
        let mut sending = Sending {
            framing: request_framing(&parts, has_body),
            written: 0,
            wrote_any: false,
            flushed: true,
            took_body: false,
            body_done: !has_body,
        };
        self.write.clear();
        encode_request(&parts, sending.framing, &mut self.write);
        let mut scanned = 0;
        let answered = poll_fn(|cx| {
            self.poll_exchange(cx, &mut body, &mut sending, &mut scanned, &parts.method)
        })
        .await;
        let head = match answered {
            Ok(head) => head,
            Err(problem) => return Err(failure(problem, &sending, reused, parts, body)),
        };
        // A member may answer before the whole request reached it (an
        // echo, an early refusal): the rest goes on while the answer
        // streams.
        let upload =
            (!sending.body_done || !self.write.is_empty()).then_some(Upload { body, sending });
        let mut response = Response::new(WireBody::new(self, head.framing, head.reusable, upload));
        *response.status_mut() = head.status;
        // The member's version is its hop's business: to the client
        // vipgate speaks its own (an HTTP/1.0 member's close-delimited
        // body still goes to an HTTP/1.1 client chunked, on a connection
        // kept open).
        *response.version_mut() = Version::HTTP_11;
        *response.headers_mut() = head.headers;
        Ok(response)
    }

    fn poll_exchange(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut RequestBody,
        sending: &mut Sending,
        scanned: &mut usize,
        method: &Method,
    ) -> Poll<Result<head::ResponseHead, Problem>> {
        if let Err(problem) = self.poll_upload(cx, body, sending) {
            return Poll::Ready(Err(problem));
        }
        self.poll_head(cx, scanned, method)
    }

    /// Moves the request on as far as it goes now: `true` once all of it
    /// is written.
    fn poll_upload(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut RequestBody,
        sending: &mut Sending,
    ) -> Result<bool, Problem> {
        loop {
            if let Err(error) = self.poll_send(cx, sending) {
                return Err(Problem::Io {
                    error,
                    answered: !self.read.is_empty(),
                });
            }
            if sending.written < self.write.len() || !sending.flushed {
                return Ok(false);
            }
            if sending.body_done {
                return Ok(true);
            }
            // All written: the client's body may have more.
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    sending.took_body = true;
                    if let Ok(data) = frame.into_data() {
                        self.queue_body(&data, sending.framing);
                    }
                }
                Poll::Ready(Some(Err(error))) => return Err(Problem::ClientBody(Box::new(error))),
                Poll::Ready(None) => {
                    sending.took_body = true;
                    sending.body_done = true;
                    if sending.framing == RequestFraming::Chunked {
                        self.write.extend_from_slice(LAST_CHUNK);
                    }
                }
                Poll::Pending => return Ok(false),
            }
        }
    }

    /// Writes what is queued, as far as the socket takes it now.
    fn poll_send(&mut self, cx: &mut Context<'_>, sending: &mut Sending) -> io::Result<()> {
        while sending.written < self.write.len() {
            let unsent = &self.write[sending.written..];
            match Pin::new(&mut self.stream).poll_write(cx, unsent) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(written)) => {
                    sending.written += written;
                    sending.wrote_any = true;
                    sending.flushed = false;
                }
                Poll::Ready(Err(error)) => return Err(error),
                Poll::Pending => return Ok(()),
            }
        }
        if !sending.flushed {
            // TLS holds records until flushed; a socket flushes at once.
            match Pin::new(&mut self.stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => sending.flushed = true,
                Poll::Ready(Err(error)) => return Err(error),
                Poll::Pending => return Ok(()),
            }
        }
        self.write.clear();
        sending.written = 0;
        Ok(())
    }

    fn queue_body(&mut self, data: &Bytes, framing: RequestFraming) {
        if data.is_empty() {
            return;
        }
        if framing == RequestFraming::Chunked {
            encode_size(data.len(), &mut self.write);
            self.write.extend_from_slice(data);
            self.write.extend_from_slice(b"\r\n");
        } else {
            self.write.extend_from_slice(data);
        }
    }

    /// Reads until a final response head is complete; informational ones
    /// (`100 Continue`, `103 Early Hints`) are passed over.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        scanned: &mut usize,
        method: &Method,
    ) -> Poll<Result<head::ResponseHead, Problem>> {
        let mut answered = false;
        loop {
            if let Some(end) = head_end(&self.read, scanned) {
                let head = self.read.split_to(end).freeze();
                *scanned = 0;
                let parsed = parse_response(&head, method).map_err(Problem::Head)?;
                if parsed.status.is_informational()
                    && parsed.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    answered = true;
                    continue;
                }
                return Poll::Ready(Ok(parsed));
            }
            if self.read.len() >= MAX_RESPONSE_HEAD {
                return Poll::Ready(Err(Problem::Head(HeadError(
                    "over 64 KiB without an end".into(),
                ))));
            }
            match ready!(self.poll_fill(cx, READ_ROOM)) {
                Ok(0) => {
                    return Poll::Ready(Err(Problem::Closed {
                        answered: answered || !self.read.is_empty(),
                    }))
                }
                Ok(_) => {}
                Err(error) => {
                    return Poll::Ready(Err(Problem::Io {
                        error,
                        answered: answered || !self.read.is_empty(),
                    }))
                }
            }
        }
    }

    /// Reads what the member sent into the buffer, with at least `room`
    /// free for it: `Ok(0)` at the end of the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<io::Result<usize>> {
        self.read.reserve(room);
        poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read)
    }

    /// Gives back memory a large message grew, before idling.
    fn trim(&mut self) {
        if self.write.capacity() > KEPT_BUFFER {
            self.write = Vec::new();
        }
        if self.read.capacity() > KEPT_BUFFER {
            self.read = BytesMut::new();
        }
    }
}

/// Whether the request can go again after `problem`, and the failure.
fn failure(
    problem: Problem,
    sending: &Sending,
    reused: bool,
    parts: Parts,
    body: RequestBody,
) -> Failure {
    let (error, answered) = match problem {
        Problem::Io { error, answered } => (error, answered),
        Problem::Closed { answered } => (
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the member closed the connection without answering",
            ),
            answered,
        ),
        Problem::Head(error) => return Failure::Failed(Box::new(error)),
        Problem::ClientBody(error) => return Failure::Failed(error),
    };
    // RFC 9110 9.2.2: only a request that never left, or an idempotent
    // one, is sent again by itself; and only a kept connection is
    // suspected of having been closed under it (a fresh one that fails
    // after the request went out is the member failing to answer).
    let replayable =
        !sending.wrote_any || (reused && !sending.took_body && parts.method.is_idempotent());
    if replayable && !answered {
        Failure::Unsent(Box::new(Request::from_parts(parts, body)), error)
    } else {
        Failure::Failed(Box::new(error))
    }
}

/// A member's response body, read from its connection as the client takes
/// it. Read to its end, it hands the connection back for the next request.
pub(crate) struct WireBody {
    connection: MemberConnection,
    remaining: Remaining,
    reusable: bool,
    /// The rest of the request, when the member answered before it had
    /// all of it.
    upload: Option<Upload>,
}

/// A request body still on its way while its answer streams back.
struct Upload {
    body: RequestBody,
    sending: Sending,
}

enum Remaining {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

impl WireBody {
    fn new(
        connection: MemberConnection,
        framing: Framing,
        reusable: bool,
        upload: Option<Upload>,
    ) -> WireBody {
        let remaining = match framing {
            Framing::Empty | Framing::Length(0) => Remaining::Done,
            Framing::Length(length) => Remaining::Length(length),
            Framing::Chunked => Remaining::Chunked(Chunked::default()),
            Framing::UntilClose => Remaining::UntilClose,
        };
        WireBody {
            connection,
            remaining,
            reusable,
            upload,
        }
    }

    /// The connection, if the body was read to its end and the member
    /// left it fit for another request.
    pub(crate) fn into_reusable(self) -> Option<MemberConnection> {
        let WireBody {
            mut connection,
            remaining,
            reusable,
            upload,
        } = self;
        // A request not wholly sent leaves the connection mid-message.
        let done = matches!(remaining, Remaining::Done) && upload.is_none();
        (reusable && done && connection.read.is_empty()).then(|| {
            connection.trim();
            connection
        })
    }

    /// The body cannot go on: it ends here, and its connection with it.
    fn give_up(&mut self) {
        self.remaining = Remaining::Done;
        self.reusable = false;
    }

    /// Hands on what the buffer holds of the body; `None` when more must
    /// be read first.
    fn next_frame(&mut self) -> Option<Result<Option<Bytes>, BoxError>> {
        let read = &mut self.connection.read;
        loop {
            match &mut self.remaining {
                Remaining::Done => return Some(Ok(None)),
                Remaining::Length(left) => {
                    if read.is_empty() {
                        return None;
                    }
                    // Bounded by the buffer's length, so it fits a usize.
                    let take = (*left).min(read.len() as u64) as usize;
                    *left -= take as u64;
                    if *left == 0 {
                        self.remaining = Remaining::Done;
                    }
                    return Some(Ok(Some(read.split_to(take).freeze())));
                }
                Remaining::Chunked(decoder) => match decoder.step(read) {
                    Err(error) => return Some(Err(Box::new(error))),
                    Ok(Step::Framing(length)) => read.advance(length),
                    Ok(Step::Data(length)) => {
                        return Some(Ok(Some(read.split_to(length).freeze())))
                    }
                    Ok(Step::End(length)) => {
                        read.advance(length);
                        self.remaining = Remaining::Done;
                    }
                    Ok(Step::More) => return None,
                },
                Remaining::UntilClose => {
                    return (!read.is_empty()).then(|| Ok(Some(read.split().freeze())));
                }
            }
        }
    }
}

impl Body for WireBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(upload) = &mut this.upload {
            match this
                .connection
                .poll_upload(cx, &mut upload.body, &mut upload.sending)
            {
                Ok(false) => {}
                Ok(true) => this.upload = None,
                // The member stopped taking the request (or the client's
                // body broke): the answer may still come; the connection
                // is not used again.
                Err(_) => {
                    this.upload = None;
                    this.reusable = false;
                }
            }
        }
        loop {
            match this.next_frame() {
                Some(Ok(Some(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Some(Ok(None)) => return Poll::Ready(None),
                Some(Err(error)) => {
                    this.give_up();
                    return Poll::Ready(Some(Err(error)));
                }
                None => {}
            }
            let room = match this.remaining {
                Remaining::Length(left) => usize::try_from(left)
                    .map_or(BODY_READ_ROOM, |left| left.clamp(READ_ROOM, BODY_READ_ROOM)),
                _ => READ_ROOM,
            };
            match ready!(this.connection.poll_fill(cx, room)) {
                Ok(0) => {
                    let complete = matches!(this.remaining, Remaining::UntilClose);
                    this.give_up();
                    if !complete {
                        return Poll::Ready(Some(Err(Box::new(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the member closed the connection before the end of the body",
                        )))));
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    this.give_up();
                    return Poll::Ready(Some(Err(Box::new(error))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.remaining, Remaining::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Remaining::Done => SizeHint::with_exact(0),
            Remaining::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}
