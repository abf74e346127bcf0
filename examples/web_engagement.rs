//! Two simulated web-engagement servers for `config/gwe.toml`: GWE_Node1
//! on 127.0.0.31:9081 and GWE_Node2 on 127.0.0.32:9081 (or the
//! `ADDRESS=ROUTE` pairs given as arguments).
//!
//! ```text
//! cargo run --example web_engagement
//! cargo run --example web_engagement -- 127.0.0.31:9081=GWE_Node1 127.0.0.32:9081=GWE_Node2
//! ```

use std::net::SocketAddr;

#[tokio::main]
async fn main() {
    let mut servers: Vec<(SocketAddr, String)> = Vec::new();
    for argument in std::env::args().skip(1) {
        let parsed = argument
            .split_once('=')
            .and_then(|(address, route)| Some((address.parse().ok()?, route.to_string())));
        match parsed {
            Some(server) => servers.push(server),
            None => {
                eprintln!(
                    "expected ADDRESS=ROUTE such as 127.0.0.31:9081=GWE_Node1, got {argument:?}"
                );
                std::process::exit(2);
            }
        }
    }
    if servers.is_empty() {
        servers = vec![
            ("127.0.0.31:9081".parse().unwrap(), "GWE_Node1".into()),
            ("127.0.0.32:9081".parse().unwrap(), "GWE_Node2".into()),
        ];
    }
    for (address, route) in servers {
        match vipgate::demo::spawn_web_engagement(address, route.clone()).await {
            Ok(bound) => println!("{route} listening on {bound}"),
            Err(error) => {
                eprintln!("cannot listen on {address}: {error}");
                std::process::exit(1);
            }
        }
    }
    println!("Ctrl-C stops them.");
    let _ = tokio::signal::ctrl_c().await;
}
