//! The heads of an exchange with a member: the request head written as
//! HTTP/1.1, and the response head read back, with how its body is
//! framed and whether the connection can carry another request after it
//! (RFC 9112 sections 6 and 9.3).

use std::fmt;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode, Version};

use crate::http::headers::connection_lists;

/// The most header fields a member's response head may have: 100.
const MAX_HEADERS: usize = 100;

/// How a request body goes to the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body.
    None,
    /// The client gave a `Content-Length`: the body goes as it comes.
    Length,
    /// Length unknown (a chunked or HTTP/2 client body): chunked.
    Chunked,
}

/// How the body of a member's response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (an answer to HEAD; 204; 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the member closes the connection.
    UntilClose,
}

/// A member's response head as read.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection can carry another request once the body is read.
    pub reusable: bool,
}

/// A response head vipgate will not pass on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeadError(pub(crate) String);

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed response head: {}", self.0)
    }
}

impl std::error::Error for HeadError {}

/// How the request in `parts` frames a body, `has_body` telling whether
/// one is coming at all.
pub(crate) fn request_framing(parts: &Parts, has_body: bool) -> RequestFraming {
    if parts.headers.contains_key(header::CONTENT_LENGTH) {
        RequestFraming::Length
    } else if has_body {
        RequestFraming::Chunked
    } else {
        RequestFraming::None
    }
}

/// Appends the HTTP/1.1 head of the request in `parts` to `out`.
pub(crate) fn encode_request(parts: &Parts, framing: RequestFraming, out: &mut Vec<u8>) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |target| target.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if framing == RequestFraming::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Where the head at the start of `buffer` ends (after its empty line),
/// if it is all there. `scanned` carries how far earlier calls looked, so
/// a head arriving in pieces is scanned once.
pub(crate) fn head_end(buffer: &[u8], scanned: &mut usize) -> Option<usize> {
    let from = scanned.saturating_sub(3).min(buffer.len());
    let found = buffer[from..]
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|at| from + at + 4);
    *scanned = buffer.len();
    found
}

/// Parses the complete response head in `head` (from [`head_end`]): the
/// header values share `head`'s memory. `method` is the request's.
pub(crate) fn parse_response(head: &Bytes, method: &Method) -> Result<ResponseHead, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError("incomplete".into())),
        Err(error) => return Err(HeadError(error.to_string())),
    }
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| HeadError("no valid status code".into()))?;
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for field in response.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| HeadError(format!("field name {:?}", field.name)))?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(field.value))
            .map_err(|_| HeadError(format!("value of {name}")))?;
        headers.append(name, value);
    }
    let (framing, delimited) = framing(&headers, status, method)?;
    let reusable = delimited && version == Version::HTTP_11 && !connection_lists(&headers, "close");
    Ok(ResponseHead {
        status,
        headers,
        framing,
        reusable,
    })
}

/// The body's framing (RFC 9112 6.3), and whether the connection's next
/// response can be told from it.
fn framing(
    headers: &HeaderMap,
    status: StatusCode,
    method: &Method,
) -> Result<(Framing, bool), HeadError> {
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, true));
    }
    let lengths = headers.get_all(header::CONTENT_LENGTH);
    if let Some(coding) = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
    {
        let last = coding
            .to_str()
            .ok()
            .and_then(|codings| codings.rsplit(',').next())
            .map(str::trim);
        return Ok(match last {
            // A length beside a chunked coding is ignored, and the
            // connection not trusted with another request.
            Some(last) if last.eq_ignore_ascii_case("chunked") => {
                (Framing::Chunked, lengths.iter().next().is_none())
            }
            _ => (Framing::UntilClose, false),
        });
    }
    let mut length = None;
    for value in lengths {
        let values = value
            .to_str()
            .map_err(|_| HeadError("Content-Length is not a number".into()))?;
        for text in values.split(',') {
            let text = text.trim();
            let parsed: u64 = (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse().ok())
                .flatten()
                .ok_or_else(|| HeadError(format!("Content-Length {text:?}")))?;
            if length.is_some_and(|length| length != parsed) {
                return Err(HeadError("differing Content-Length values".into()));
            }
            length = Some(parsed);
        }
    }
    Ok(match length {
        Some(length) => (Framing::Length(length), true),
        None => (Framing::UntilClose, false),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(text: &str, method: Method) -> Result<ResponseHead, HeadError> {
        let mut scanned = 0;
        let end = head_end(text.as_bytes(), &mut scanned).expect("a whole head");
        parse_response(&Bytes::copy_from_slice(&text.as_bytes()[..end]), &method)
    }

    #[test]
    fn the_request_head_is_http_1_1_with_its_fields() {
        let (mut parts, ()) = http::Request::post("http://h/a/b?c=d")
            .header("host", "gwe.example")
            .header("x-two", "1")
            .header("x-two", "2")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = Vec::new();
        encode_request(&parts, RequestFraming::Chunked, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a/b?c=d HTTP/1.1\r\nhost: gwe.example\r\nx-two: 1\r\nx-two: 2\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
        parts.uri = http::Uri::from_static("*");
        parts.method = Method::OPTIONS;
        parts.headers.clear();
        let mut out = Vec::new();
        encode_request(&parts, RequestFraming::None, &mut out);
        assert_eq!(out, b"OPTIONS * HTTP/1.1\r\n\r\n");
        assert_eq!(request_framing(&parts, false), RequestFraming::None);
        assert_eq!(request_framing(&parts, true), RequestFraming::Chunked);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(request_framing(&parts, true), RequestFraming::Length);
    }

    #[test]
    fn the_head_ends_at_its_empty_line_however_it_arrives() {
        let text = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody";
        for cut in 1..text.len() {
            let mut scanned = 0;
            let first = head_end(&text[..cut], &mut scanned);
            let end = first.or_else(|| head_end(text, &mut scanned));
            assert_eq!(end, Some(text.len() - 4), "cut at {cut}");
        }
    }

    #[test]
    fn bodies_are_framed_as_rfc_9112_says() {
        let ok = |fields: &str| format!("HTTP/1.1 200 OK\r\n{fields}\r\n");
        let framing_of = |text: &str, method: Method| {
            let head = parse(text, method).unwrap();
            (head.framing, head.reusable)
        };
        assert_eq!(
            framing_of(&ok("Content-Length: 3\r\n"), Method::GET),
            (Framing::Length(3), true)
        );
        assert_eq!(
            framing_of(&ok("Content-Length: 3, 3\r\n"), Method::GET),
            (Framing::Length(3), true)
        );
        assert_eq!(
            framing_of(&ok("Transfer-Encoding: gzip, chunked\r\n"), Method::GET),
            (Framing::Chunked, true)
        );
        assert_eq!(
            framing_of(
                &ok("Transfer-Encoding: chunked\r\nContent-Length: 9\r\n"),
                Method::GET
            ),
            (Framing::Chunked, false)
        );
        assert_eq!(
            framing_of(&ok("Transfer-Encoding: gzip\r\n"), Method::GET),
            (Framing::UntilClose, false)
        );
        assert_eq!(
            framing_of(&ok(""), Method::GET),
            (Framing::UntilClose, false)
        );
        assert_eq!(
            framing_of(&ok("Content-Length: 3\r\n"), Method::HEAD),
            (Framing::Empty, true)
        );
        assert_eq!(
            framing_of("HTTP/1.1 204 No Content\r\n\r\n", Method::GET),
            (Framing::Empty, true)
        );
        assert_eq!(
            framing_of("HTTP/1.1 304 Not Modified\r\n\r\n", Method::GET),
            (Framing::Empty, true)
        );
        assert_eq!(
            framing_of(
                &ok("Content-Length: 3\r\nConnection: Keep-Alive, close\r\n"),
                Method::GET
            ),
            (Framing::Length(3), false)
        );
        assert_eq!(
            framing_of("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", Method::GET),
            (Framing::Length(3), false),
            "HTTP/1.0: closed after"
        );
        for bad in [
            "Content-Length: 3, 4\r\n",
            "Content-Length: -1\r\n",
            "Content-Length: +3\r\n",
            "Content-Length: 99999999999999999999\r\n",
        ] {
            assert!(parse(&ok(bad), Method::GET).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_share_the_head_and_bad_heads_are_refused() {
        let head = parse(
            "HTTP/1.1 201 Created\r\nX-A: one\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
            Method::GET,
        )
        .unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(head.headers["x-a"], "one");
        for bad in [
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(parse(bad, Method::GET).is_err(), "{bad}");
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        assert!(parse(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), Method::GET).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn the_response_parser_never_panics(text in "(HTTP/1.1 200 OK\r\n)?[ -~\r\n]{0,300}", cut in 0usize..300) {
            let bytes = text.as_bytes();
            let mut scanned = 0;
            let _ = head_end(&bytes[..cut.min(bytes.len())], &mut scanned);
            if let Some(end) = head_end(bytes, &mut scanned) {
                let _ = parse_response(&Bytes::copy_from_slice(&bytes[..end]), &Method::GET);
            }
            let _ = parse_response(&Bytes::copy_from_slice(bytes), &Method::GET);
        }
    }
}
