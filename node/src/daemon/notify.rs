//! systemd's readiness protocol (`Type=notify`): one datagram to
//! `$NOTIFY_SOCKET`. Done by hand: it is ten lines, not a dependency.

use std::os::unix::net::UnixDatagram;

/// Tells systemd `state` (e.g. `READY=1`, `STOPPING=1`); does nothing when
/// not started by systemd.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = UnixDatagram::unbound().and_then(|socket| {
        if let Some(abstract_name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
            socket.send_to_addr(state.as_bytes(), &addr)
        } else {
            socket.send_to(state.as_bytes(), &path)
        }
    });
    if let Err(error) = result {
        tracing::warn!(%error, state, "cannot notify systemd");
    }
}
