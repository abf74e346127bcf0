//! Socket addresses as log lines write them.
//!
//! Every connection line carries two or three addresses (client, member,
//! SNAT source) and every HTTP request line two. The standard library's
//! `Display` for an IPv4 socket address honours width and padding, so it
//! renders into a scratch buffer and then writes each octet through the
//! formatting machinery: in a profile of an HTTP virtual the two addresses
//! of a request line cost more than the rest of the line's fields
//! together. [`Address`] writes the same text in one piece.

use std::fmt::{self, Write};
use std::net::SocketAddr;

use super::text::write_integer;

/// A socket address for a log field (`client = %Address(peer)`): the same
/// text as `SocketAddr`'s `Display` (`192.0.2.7:40123`,
/// `[2001:db8::7]:443`), written without padding support.
#[derive(Clone, Copy, Debug)]
pub struct Address(pub SocketAddr);

/// The longest IPv4 socket address: `255.255.255.255:65535`.
const LONGEST_V4: usize = 21;

impl fmt::Display for Address {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SocketAddr::V4(address) = self.0 else {
            // Rare on the data paths this is for; the library's text.
            return fmt::Display::fmt(&self.0, formatter);
        };
        let mut text = Text::default();
        for (index, octet) in address.ip().octets().into_iter().enumerate() {
            if index > 0 {
                text.write_char('.')?;
            }
            write_integer(&mut text, false, u64::from(octet))?;
        }
        text.write_char(':')?;
        write_integer(&mut text, false, u64::from(address.port()))?;
        formatter.write_str(text.as_str())
    }
}

/// An IPv4 socket address being written, on the stack.
#[derive(Default)]
struct Text {
    bytes: [u8; LONGEST_V4],
    length: usize,
}

impl Write for Text {
    fn write_str(&mut self, piece: &str) -> fmt::Result {
        // The longest address fits by construction; a mistake is an
        // error, not a panic.
        let end = self.length + piece.len();
        let slot = self.bytes.get_mut(self.length..end).ok_or(fmt::Error)?;
        slot.copy_from_slice(piece.as_bytes());
        self.length = end;
        Ok(())
    }
}

impl Text {
    fn as_str(&self) -> &str {
        // Only ASCII digits, dots and a colon were written.
        std::str::from_utf8(&self.bytes[..self.length]).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_the_standard_librarys() {
        let samples = [
            "0.0.0.0:0",
            "127.0.0.1:80",
            "10.20.30.40:9070",
            "192.0.2.7:40123",
            "255.255.255.255:65535",
            "1.0.10.100:10000",
            "[::1]:443",
            "[2001:db8::7]:9075",
            "[::ffff:192.0.2.1]:1",
        ];
        for sample in samples {
            let address: SocketAddr = sample.parse().unwrap();
            assert_eq!(Address(address).to_string(), address.to_string());
        }
        // Every octet value and a spread of ports.
        for value in 0..=255u8 {
            for port in [0u16, 9, 10, 99, 100, 999, 1000, 9999, 10000, 65535] {
                let address = SocketAddr::from(([value, 255 - value, value / 10, 7], port));
                assert_eq!(Address(address).to_string(), address.to_string());
            }
        }
    }
}
