//! A raw HTTP/1.1 client: requests are written as bytes, so tests send exactly what a
//! browser, a network's server or an attacker would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A server's two listeners.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// The public listener: clicks, pixel, postbacks, health.
    pub addr: SocketAddr,
    /// The admin listener: `/metrics`, health, `/admin/`.
    pub admin: SocketAddr,
}

impl Client {
    pub fn get(&self, target: &str) -> Resp {
        Conn::open(self.addr).send(&format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n"))
    }

    pub fn send(&self, raw: &str) -> Resp {
        Conn::open(self.addr).send(raw)
    }

    /// `/metrics` from the admin listener, as text.
    pub fn metrics(&self) -> String {
        let r = Conn::open(self.admin).send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    }

    /// A request to the admin listener; `token` goes in `Authorization: Bearer`.
    pub fn admin(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Resp {
        self.admin_with(method, path, token, &[("Content-Type", "application/json")], body)
    }

    /// [`Client::admin`] with the given headers (a content type among them, if any).
    pub fn admin_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Resp {
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let headers: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        Conn::open(self.admin).send(&format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    }
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The click ID in a redirect's `cid=` parameter.
    pub fn click_id(&self) -> String {
        let loc = self.header("location").expect("no Location");
        let start = loc.find("cid=").expect("no cid= in Location") + 4;
        loc[start..start + 26].to_owned()
    }
}

/// A keep-alive HTTP/1.1 connection.
#[derive(Debug)]
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn { reader: BufReader::new(s) }
    }

    /// Wraps a stream the caller has configured (timeouts, or a connect that may fail).
    pub fn from_stream(s: TcpStream) -> Conn {
        Conn { reader: BufReader::new(s) }
    }

    pub fn send(&mut self, raw: &str) -> Resp {
        self.try_send(raw.as_bytes()).unwrap()
    }

    pub fn try_send(&mut self, raw: &[u8]) -> std::io::Result<Resp> {
        self.reader.get_mut().write_all(raw)?;
        let head_only = raw.starts_with(b"HEAD ");
        self.read_response(head_only)
    }

    fn read_response(&mut self, head_only: bool) -> std::io::Result<Resp> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end_matches(['\r', '\n']);
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; if head_only { 0 } else { len }];
        self.reader.read_exact(&mut body)?;
        Ok(Resp { status, headers, body })
    }
}

/// Fires `n` clicks per thread over keep-alive connections; returns the click IDs whose 302
/// was received. Stops a thread at its first failure (e.g. the server was killed).
pub fn click_storm(addr: SocketAddr, threads: usize, n: usize, tag: &str) -> Vec<String> {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let tag = tag.to_owned();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let Ok(s) = TcpStream::connect(addr) else { return got };
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let mut conn = Conn { reader: BufReader::new(s) };
                for i in 0..n {
                    let req = format!(
                        "GET /c/demo?sub1={tag}-{t}-{i} HTTP/1.1\r\nHost: t\r\nUser-Agent: Mozilla/5.0 test\r\n\r\n"
                    );
                    match conn.try_send(req.as_bytes()) {
                        Ok(r) if r.status == 302 => got.push(r.click_id()),
                        _ => break,
                    }
                }
                got
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
}
