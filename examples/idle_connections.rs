//! Holds thousands of idle proxied connections, the way agent desktops sit
//! on a configuration-server proxy, for the memory benchmark in
//! `benches/compare.sh`.
//!
//! ```text
//! idle_connections serve ADDR           a member that echoes and holds every connection
//! idle_connections hold TARGET COUNT    open COUNT connections to TARGET, exchange one
//!                                       line on each, print "ready", then hold them
//!                                       until killed
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Connections opened at once; more would overflow listen backlogs.
const CONCURRENT_CONNECTS: usize = 200;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") if args.len() == 3 => serve(parse(&args[2])).await,
        Some("hold") if args.len() == 4 => {
            let count = args[3].parse().unwrap_or_else(|_| usage());
            hold(parse(&args[2]), count).await
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: idle_connections serve ADDR | hold TARGET COUNT");
    std::process::exit(2)
}

fn parse(address: &str) -> SocketAddr {
    address.parse().unwrap_or_else(|_| usage())
}

async fn serve(address: SocketAddr) {
    let listener = TcpListener::bind(address).await.expect("bind");
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(async move {
            let mut buffer = [0; 64];
            while let Ok(read) = stream.read(&mut buffer).await {
                if read == 0 || stream.write_all(&buffer[..read]).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn hold(target: SocketAddr, count: usize) {
    let permits = Arc::new(Semaphore::new(CONCURRENT_CONNECTS));
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let permits = permits.clone();
            tokio::spawn(async move {
                let _permit = permits.acquire().await.unwrap();
                let mut stream = TcpStream::connect(target).await?;
                stream.write_all(b"hello\n").await?;
                let mut answer = [0; 6];
                stream.read_exact(&mut answer).await?;
                Ok::<_, std::io::Error>(stream)
            })
        })
        .collect();
    let mut held = Vec::with_capacity(count);
    for task in tasks {
        match task.await.expect("task") {
            Ok(stream) => held.push(stream),
            Err(error) => {
                eprintln!("connection {} failed: {error}", held.len());
                std::process::exit(1);
            }
        }
    }
    println!("ready {}", held.len());
    std::future::pending::<()>().await;
}
