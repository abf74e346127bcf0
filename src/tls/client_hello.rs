//! Reads the server name (SNI) out of a TLS ClientHello without
//! terminating TLS, for routing passthrough connections.
//!
//! Works on the raw bytes a client has sent so far: says whether more are
//! needed, or what the name is. Bounded: a hello that does not fit in
//! [`MAX_HELLO`] bytes is refused, and no input can make it panic or
//! allocate beyond that.

/// Most bytes read while looking for a complete ClientHello: one full
/// record (16 KiB) plus headers and a second record's worth of header.
pub const MAX_HELLO: usize = 16 * 1024 + 64;

/// TLS record type of handshake messages.
const HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Extension type of server_name.
const SERVER_NAME: u16 = 0;

/// What the bytes so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello has begun but is not complete yet: read more.
    Incomplete,
    /// A complete ClientHello, with the server name it asks for, if any.
    Complete { server_name: Option<String> },
}

/// Why the bytes cannot be a ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("not a TLS handshake")]
    NotTls,
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error("ClientHello larger than {MAX_HELLO} bytes")]
    TooLarge,
}

/// Looks at the first bytes of a connection.
pub fn inspect(bytes: &[u8]) -> Result<Hello, HelloError> {
    if bytes.len() > MAX_HELLO {
        return Err(HelloError::TooLarge);
    }
    // The handshake message may be split over several records; gather the
    // fragments (bounded by MAX_HELLO) until it is whole.
    let mut message: Vec<u8> = Vec::new();
    let mut rest = bytes;
    loop {
        if rest.len() < 5 {
            return if bytes.is_empty() || rest.len() < 5 && plausible_start(bytes) {
                Ok(Hello::Incomplete)
            } else {
                Err(HelloError::NotTls)
            };
        }
        if rest[0] != HANDSHAKE || rest[1] != 3 {
            return Err(HelloError::NotTls);
        }
        let length = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if length == 0 || length > 16 * 1024 {
            return Err(HelloError::Malformed("record length"));
        }
        let Some(fragment) = rest.get(5..5 + length) else {
            return if 5 + length > MAX_HELLO {
                Err(HelloError::TooLarge)
            } else {
                Ok(Hello::Incomplete)
            };
        };
        message.extend_from_slice(fragment);
        rest = &rest[5 + length..];
        if message.len() >= 4 {
            if message[0] != CLIENT_HELLO {
                return Err(HelloError::Malformed(
                    "first handshake message is not a ClientHello",
                ));
            }
            let body_length = (usize::from(message[1]) << 16)
                | (usize::from(message[2]) << 8)
                | usize::from(message[3]);
            if 4 + body_length > MAX_HELLO {
                return Err(HelloError::TooLarge);
            }
            if message.len() >= 4 + body_length {
                let server_name = server_name(&message[4..4 + body_length])?;
                return Ok(Hello::Complete { server_name });
            }
        }
    }
}

/// Whether a short prefix could still be the start of a TLS handshake.
fn plausible_start(bytes: &[u8]) -> bool {
    bytes.first().is_none_or(|&b| b == HANDSHAKE) && bytes.get(1).is_none_or(|&b| b == 3)
}

/// A cursor over a byte slice that fails instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], HelloError> {
        if self.0.len() < count {
            return Err(HelloError::Malformed("truncated field"));
        }
        let (head, tail) = self.0.split_at(count);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<usize, HelloError> {
        Ok(usize::from(self.take(1)?[0]))
    }

    fn u16(&mut self) -> Result<usize, HelloError> {
        let bytes = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([bytes[0], bytes[1]])))
    }

    /// A field prefixed by its length in `width` bytes.
    fn vector(&mut self, width: usize) -> Result<&'a [u8], HelloError> {
        let length = if width == 1 { self.u8()? } else { self.u16()? };
        self.take(length)
    }
}

fn server_name(body: &[u8]) -> Result<Option<String>, HelloError> {
    let mut hello = Reader(body);
    hello.take(2 + 32)?; // legacy version, random
    hello.vector(1)?; // session id
    hello.vector(2)?; // cipher suites
    hello.vector(1)?; // compression methods
    if hello.0.is_empty() {
        return Ok(None); // no extensions at all
    }
    let mut extensions = Reader(hello.vector(2)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vector(2)?;
        if kind as u16 != SERVER_NAME {
            continue;
        }
        let mut list = Reader(Reader(data).vector(2)?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vector(2)?;
            if name_type == 0 {
                let name = std::str::from_utf8(name)
                    .map_err(|_| HelloError::Malformed("server name is not text"))?;
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(HelloError::Malformed("server name has invalid characters"));
                }
                return Ok(Some(name.to_ascii_lowercase()));
            }
        }
        return Ok(None);
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
