//! Holds thousands of idle proxied connections, the way agent desktops sit
//! on a configuration-server proxy, for the memory benchmark in
//! `benches/compare.sh`.
//!
//! ```text
//! idle_connections serve ADDR           a member that echoes and holds every connection
//! idle_connections hold TARGET COUNT    open COUNT connections to TARGET, exchange one
//!                                       line on each, print "ready", then hold them
//!                                       until killed
//! idle_connections hold TARGET COUNT CA.pem
//!                                       the same over TLS, trusting CA.pem, asking
//!                                       for the name vip.example
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
        Some("hold") if args.len() == 4 || args.len() == 5 => {
            let count = args[3].parse().unwrap_or_else(|_| usage());
            let tls = args.get(4).map(|ca| connector(ca));
            hold(parse(&args[2]), count, tls).await
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: idle_connections serve ADDR | hold TARGET COUNT [CA.pem]");
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

fn connector(ca: &str) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a CA certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A held connection, plain or TLS.
#[allow(dead_code)] // held only to keep it open
enum Held {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
) -> std::io::Result<()> {
    stream.write_all(b"hello\n").await?;
    let mut answer = [0; 6];
    stream.read_exact(&mut answer).await?;
    Ok(())
}

async fn hold(target: SocketAddr, count: usize, tls: Option<tokio_rustls::TlsConnector>) {
    let permits = Arc::new(Semaphore::new(CONCURRENT_CONNECTS));
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let permits = permits.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let _permit = permits.acquire().await.unwrap();
                let mut stream = TcpStream::connect(target).await?;
                match tls {
                    None => {
                        exchange(&mut stream).await?;
                        Ok::<_, std::io::Error>(Held::Plain(stream))
                    }
                    Some(tls) => {
                        let name = rustls_pki_types::ServerName::try_from("vip.example").unwrap();
                        let mut stream = tls.connect(name, stream).await?;
                        exchange(&mut stream).await?;
                        Ok(Held::Tls(Box::new(stream)))
                    }
                }
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
