//! The bodies vipgate passes on: the client's request body on its way to
//! the member (marking its own errors, so a malformed chunked body is
//! blamed on the client and not on the member), and the response body on
//! its way back (ending the request when it is dropped).

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::client_io::InFlight;
use super::members::MemberLink;
use super::Connection;
use crate::pool::MemberSlot;

/// A request's body as the member gets it: the client's, streamed.
#[derive(Debug)]
pub(crate) struct RequestBody(Incoming);

impl From<Incoming> for RequestBody {
    fn from(body: Incoming) -> RequestBody {
        RequestBody(body)
    }
}

/// The client's request body could not be read: cut short or malformed
/// (a chunk size such as `zz`). Its own type so that when the member
/// connection fails because of it, the client is blamed (400) and not the
/// member (502).
#[derive(Debug)]
pub(crate) struct ClientBodyError(hyper::Error);

impl fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the client's request body: {}", self.0)
    }
}

impl StdError for ClientBodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

impl ClientBodyError {
    /// Whether `error`, or any error it was caused by, is the client's
    /// body.
    pub(crate) fn caused(error: &(dyn StdError + 'static)) -> bool {
        let mut cause = Some(error);
        while let Some(error) = cause {
            if error.is::<ClientBodyError>() {
                return true;
            }
            cause = error.source();
        }
        false
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        Pin::new(&mut self.get_mut().0)
            .poll_frame(cx)
            .map_err(ClientBodyError)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// A response body: the member's, streamed as it comes, or vipgate's own
/// text. Dropping it ends the request: the member connection goes back to
/// its idle queue if the body was read to the end (otherwise it closes),
/// the member's request slot is freed, and the client connection waits
/// for its next request.
pub(crate) struct ResponseBody {
    content: Content,
    ended: bool,
    /// The request on its connection's books; ends when this drops.
    _request: InFlight,
    slot: Option<MemberSlot>,
    /// The member connection: driven while the body streams, and handed
    /// back when it is done (to the idle queue of the virtual the client
    /// connection belongs to: held through the client connection, whose
    /// count only its own worker touches, not the virtual's, which every
    /// worker's requests would).
    reuse: Option<(Arc<Connection>, usize, MemberLink)>,
}

enum Content {
    Member(Incoming),
    Text(Option<Bytes>),
}

impl ResponseBody {
    /// vipgate's own text.
    pub(crate) fn text(mut request: InFlight, text: Bytes) -> ResponseBody {
        request.sending();
        ResponseBody {
            content: Content::Text(Some(text)),
            ended: false,
            _request: request,
            slot: None,
            reuse: None,
        }
    }

    /// The member's answer; its connection goes back to the member's idle
    /// queue when the answer was read to the end.
    pub(crate) fn member(
        mut request: InFlight,
        body: Incoming,
        slot: MemberSlot,
        reuse: (Arc<Connection>, usize, MemberLink),
    ) -> ResponseBody {
        request.sending();
        ResponseBody {
            content: Content::Member(body),
            ended: false,
            _request: request,
            slot: Some(slot),
            reuse: Some(reuse),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        // The member connection moves the body's bytes: driven here, on
        // the client's task, as the client takes them.
        if let Some((_, _, link)) = &mut this.reuse {
            link.drive(cx);
        }
        let polled = match &mut this.content {
            Content::Member(body) => Pin::new(body).poll_frame(cx),
            Content::Text(text) => Poll::Ready(text.take().map(|text| Ok(Frame::data(text)))),
        };
        if let Poll::Ready(None) = polled {
            this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.content {
            Content::Member(body) => body.is_end_stream(),
            Content::Text(text) => text.as_ref().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.content {
            Content::Member(body) => body.size_hint(),
            Content::Text(text) => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some((connection, index, link)) = self.reuse.take() {
            if self.ended || self.is_end_stream() {
                connection.http.members.checkin(index, link);
            }
        }
        self.slot = None;
    }
}
