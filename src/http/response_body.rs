//! The response body on its way back to the client: the member's answer
//! (read by `wire`, or by hyper's client for an upgrade the member did not
//! switch) or vipgate's own text, ending the request when it is dropped.
//! (The request body on its way to the member is `request_body`.)

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::client_io::InFlight;
use super::request_body::RequestBody;
use super::wire::{BoxError, WireBody};
use super::Connection;
use crate::pool::MemberSlot;

/// The hyper client handle of an upgrade request's connection, kept while
/// its answer's body streams.
pub(crate) type UpgradeSender = hyper::client::conn::http1::SendRequest<RequestBody>;

/// A member's answer body: read by vipgate's own HTTP/1.1 from the
/// connection that carries it, or, for an upgrade request the member did
/// not switch, through hyper's client (which holds the connection open
/// while the body streams).
pub(crate) enum AnswerBody {
    Wire(WireBody),
    Upgrade {
        body: Incoming,
        /// Keeps hyper's connection open until the body is done.
        _sender: UpgradeSender,
    },
}

/// A member response body: the member's, streamed as it comes, or
/// vipgate's own text. Dropping it ends the request: the member connection
/// goes back to its idle queue if the body was read to the end (otherwise
/// it closes), the member's request slot is freed, and the client
/// connection waits for its next request.
pub(crate) struct ResponseBody {
    content: Content,
    /// The request on its connection's books; ends when this drops.
    _request: InFlight,
    slot: Option<MemberSlot>,
    /// Where the member connection goes back when the body is done: the
    /// idle queue of the virtual the client connection belongs to (held
    /// through the client connection, whose count only its own worker
    /// touches, not the virtual's, which every worker's requests would),
    /// and the member's index.
    reuse: Option<(Arc<Connection>, usize)>,
}

enum Content {
    Member(AnswerBody),
    Text(Option<Bytes>),
}

impl ResponseBody {
    /// vipgate's own text.
    pub(crate) fn text(mut request: InFlight, text: Bytes) -> ResponseBody {
        request.sending();
        ResponseBody {
            content: Content::Text(Some(text)),
            _request: request,
            slot: None,
            reuse: None,
        }
    }

    /// The member's body, holding the member's request slot until done.
    pub(crate) fn member(
        mut request: InFlight,
        body: AnswerBody,
        slot: MemberSlot,
        reuse: (Arc<Connection>, usize),
    ) -> ResponseBody {
        request.sending();
        ResponseBody {
            content: Content::Member(body),
            _request: request,
            slot: Some(slot),
            reuse: Some(reuse),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().content {
            Content::Member(AnswerBody::Wire(body)) => Pin::new(body).poll_frame(cx),
            Content::Member(AnswerBody::Upgrade { body, .. }) => {
                Pin::new(body).poll_frame(cx).map_err(Into::into)
            }
            Content::Text(text) => Poll::Ready(text.take().map(|text| Ok(Frame::data(text)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.content {
            Content::Member(AnswerBody::Wire(body)) => body.is_end_stream(),
            Content::Member(AnswerBody::Upgrade { body, .. }) => body.is_end_stream(),
            Content::Text(text) => text.as_ref().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.content {
            Content::Member(AnswerBody::Wire(body)) => body.size_hint(),
            Content::Member(AnswerBody::Upgrade { body, .. }) => body.size_hint(),
            Content::Text(text) => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        let content = std::mem::replace(&mut self.content, Content::Text(None));
        if let (Some((connection, index)), Content::Member(AnswerBody::Wire(body))) =
            (self.reuse.take(), content)
        {
            if let Some(member_connection) = body.into_reusable() {
                connection.http.members.checkin(index, member_connection);
            }
        }
        self.slot = None;
    }
}
