//! TLS: ending it for a virtual ([`terminate`]), and reading the server
//! name of a ClientHello for passthrough routing ([`client_hello`]).

pub mod client_hello;
pub mod terminate;

pub use terminate::{Terminator, TlsError};
