//! The client's request body on its way to the member, marking its own
//! errors so that a malformed chunked body is blamed on the client (400)
//! and not on the member (502).

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

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
