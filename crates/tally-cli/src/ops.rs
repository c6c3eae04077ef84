//! `tally health`: a container HEALTHCHECK without curl.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

/// `tally health --url http://HOST:PORT/PATH`: exits 0 when the URL answers 200 within the
/// timeout. The container image has no curl; this is its HEALTHCHECK.
pub fn health(url: &str, timeout: Duration) -> anyhow::Result<ExitCode> {
    let rest = url.strip_prefix("http://").context("--url: only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!("--url: \"{url}\" is not a URL like http://127.0.0.1:9464/healthz");
    }
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("--url: cannot resolve {authority} (give HOST:PORT)"))?
        .next()
        .with_context(|| format!("--url: {authority} resolves to no address"))?;
    match probe(addr, authority, path, timeout) {
        Ok(200) => {
            println!("healthy: {url} answered 200");
            Ok(ExitCode::SUCCESS)
        }
        Ok(status) => {
            eprintln!("unhealthy: {url} answered {status}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn probe(addr: std::net::SocketAddr, host: &str, path: &str, timeout: Duration) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: tally-health\r\n\r\n")?;
    // The status line is all we need; it fits in the first read.
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let k = s.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split(' ')
        .nth(1)
        .and_then(|c| c.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {line:?}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn health_refuses_what_is_not_an_http_url() {
        for bad in ["https://127.0.0.1:1/healthz", "127.0.0.1:1", "http:///healthz", "http://127.0.0.1:1/a b"] {
            assert!(health(bad, Duration::from_millis(200)).is_err(), "{bad}");
        }
    }

    #[test]
    fn health_fails_when_nothing_listens() {
        // Bind then drop: the port is free and (almost surely) refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let code = health(&format!("http://127.0.0.1:{port}/healthz"), Duration::from_millis(500)).unwrap();
        assert_eq!(code, ExitCode::FAILURE);
    }
}
