//! TLS: ending it for a virtual ([`terminate`]), starting it again toward
//! members ([`reencrypt`]), and reading the server name of a ClientHello
//! for passthrough routing ([`client_hello`]).

pub mod client_hello;
pub mod reencrypt;
pub mod terminate;

pub use reencrypt::MemberTls;
pub use terminate::{Terminator, TlsError};
