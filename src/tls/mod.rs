//! TLS: ending it for a virtual ([`terminate`]; the stream in [`server`])
//! with session tickets a pair shares ([`tickets`]), starting it again
//! toward members ([`reencrypt`]), and reading the server name of a
//! ClientHello for passthrough routing ([`client_hello`]); rustls' own
//! warnings about a client, attributed to it (`alerts`).

pub(crate) mod alerts;
pub mod client_hello;
pub mod reencrypt;
pub mod server;
pub mod terminate;
pub mod tickets;

pub use reencrypt::MemberTls;
pub use server::ServerStream;
pub use terminate::{Terminator, TlsError};
