//! TLS: reading the server name of a ClientHello for passthrough routing.

pub mod client_hello;
