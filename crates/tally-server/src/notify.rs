//! systemd's readiness protocol (`Type=notify`, sd_notify(3)): one datagram per state change
//! to the unix socket named by `$NOTIFY_SOCKET`. A few lines on std, where a crate would add
//! a dependency for the same `sendto`.
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd, or not as `Type=notify`) it does
//! nothing. A failure to notify is logged, never fatal: the service works either way, and
//! systemd's start timeout reports a readiness that never arrived.

use std::ffi::OsStr;
use std::io;
use std::os::unix::net::UnixDatagram;

/// The service is up: its listeners are bound and its log (or worker) is open.
pub fn ready() {
    send("READY=1");
}

/// The service has begun to stop (draining).
pub fn stopping() {
    send("STOPPING=1");
}

fn send(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = send_to(&socket, state) {
        tracing::warn!(error = %e, socket = %socket.to_string_lossy(), state, "cannot notify systemd");
    }
}

/// Sends `state` to `socket`: a path, or with a leading `@` a name in Linux's abstract
/// namespace.
pub fn send_to(socket: &OsStr, state: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    let bytes = socket.as_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        Some(name) => abstract_send(&sock, name, state.as_bytes())?,
        None if bytes.starts_with(b"/") => sock.send_to(state.as_bytes(), socket)?,
        None => return Err(io::Error::new(io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is neither a path nor @name")),
    };
    if sent != state.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short datagram"));
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn abstract_send(sock: &UnixDatagram, name: &[u8], msg: &[u8]) -> io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    sock.send_to_addr(msg, &std::os::unix::net::SocketAddr::from_abstract_name(name)?)
}

#[cfg(not(target_os = "linux"))]
fn abstract_send(_: &UnixDatagram, _: &[u8], _: &[u8]) -> io::Result<usize> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "abstract unix sockets are Linux-only"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).expect("a datagram");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_socket_path() {
        let dir = std::env::temp_dir().join(format!("tally-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).expect("bind");
        send_to(path.as_os_str(), "READY=1").expect("send");
        assert_eq!(recv(&sock), "READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_name() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("tally-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let sock = UnixDatagram::bind_addr(&addr).expect("bind");
        send_to(OsStr::new(&format!("@{name}")), "STOPPING=1").expect("send");
        assert_eq!(recv(&sock), "STOPPING=1");
    }

    #[test]
    fn refuses_a_relative_name() {
        assert!(send_to(OsStr::new("notify.sock"), "READY=1").is_err());
    }
}
