//! The directory's side of an LDAP connection: kfsec connects, asks for StartTLS and runs TLS
//! itself, and gives the LDAP library one end of a local socket pair that carries the
//! directory's answers message by message, each checked by [`ber::message_len`] first.
//!
//! Invariants: no byte from the directory reaches the LDAP library (whose BER reader recurses
//! without a limit and buffers without a bound) unless it belongs to a whole message that
//! [`ber::message_len`] accepted; a message it refuses ends the connection (and so the login,
//! with an error) and is logged with the reason; the answer to StartTLS is read by kfsec alone,
//! and bytes that arrive after it before TLS starts (injected by whoever is on the path) end
//! the connection; TLS names the configured host and is verified with the connector's TLS
//! settings; the relay task ends when either side closes, and with the connection that owns it.

use bytes::BytesMut;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, StdStream};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::ber::{self, BerError};
use super::{ConnectorError, Settings, failure};

/// StartTLS's OID (RFC 4511 §4.14.1).
const START_TLS: &[u8] = b"1.3.6.1.4.1.1466.20037";

/// The StartTLS extended request as message 1: `SEQUENCE { 1, [APPLICATION 23] { [0] OID } }`.
fn start_tls_request() -> Vec<u8> {
    let oid = START_TLS.len() as u8;
    let mut request = vec![0x30, oid + 7, 0x02, 0x01, 0x01, 0x77, oid + 2, 0x80, oid];
    request.extend_from_slice(START_TLS);
    request
}

/// The result code of an answer to message 1 that is an `ExtendedResponse`.
fn extended_result(message: &[u8]) -> Option<u32> {
    let (id, (tag, op)) = ber::message_parts(message)?;
    if id != [1] || tag != 0x78 {
        return None;
    }
    match ber::children(op).next()? {
        (0x0a, code @ [_, ..]) if code.len() <= 4 => Some(code.iter().fold(0u32, |acc, &o| acc << 8 | u32::from(o))),
        _ => None,
    }
}

/// Why reading from the directory stopped.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("the connection was closed")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the directory sent a message kfsec does not read: {0}")]
    Refused(#[from] BerError),
}

/// Reads one whole, checked message from `io` (bytes of the next one stay in `buf`; taking a
/// message off its front copies nothing, so many small messages behind a large one cost no
/// more than their bytes).
async fn read_message(io: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut) -> Result<BytesMut, Stop> {
    loop {
        if let Some(len) = ber::message_len(buf)? {
            return Ok(buf.split_to(len));
        }
        if io.read_buf(buf).await? == 0 {
            return Err(Stop::Closed);
        }
    }
}

/// A connection to the directory as the LDAP library sees it, and the task relaying it
/// (abort it to close the connection).
pub(super) struct Relayed {
    pub(super) conn: LdapConnAsync,
    pub(super) ldap: Ldap,
    pub(super) relay: JoinHandle<()>,
}

/// Connects to the directory (StartTLS and TLS as configured) and starts the relay.
pub(super) async fn open(s: &Settings) -> Result<Relayed, ConnectorError> {
    let host = &s.host;
    let unreachable = |e: &dyn std::fmt::Display| ConnectorError::Unreachable(format!("{host}: {e}"));
    let port = s.url.port().unwrap_or(if s.tls.is_some() { 636 } else { 389 });
    let tcp = match s.url.host() {
        Some(url::Host::Domain(name)) => TcpStream::connect((name, port)).await,
        Some(url::Host::Ipv4(ip)) => TcpStream::connect((ip, port)).await,
        Some(url::Host::Ipv6(ip)) => TcpStream::connect((ip, port)).await,
        None => return Err(unreachable(&"no host")),
    };
    let mut tcp = tcp.map_err(|e| unreachable(&e))?;
    tcp.set_nodelay(true).map_err(|e| unreachable(&e))?;

    let Some(tls) = &s.tls else {
        return pair(s, tcp).await;
    };
    if s.start_tls {
        tcp.write_all(&start_tls_request()).await.map_err(|e| unreachable(&e))?;
        let mut buf = BytesMut::new();
        let answer = read_message(&mut tcp, &mut buf).await.map_err(|e| unreachable(&e))?;
        if !buf.is_empty() {
            return Err(unreachable(
                &"bytes arrived after the answer to StartTLS, before TLS started; refused",
            ));
        }
        match extended_result(&answer) {
            Some(0) => {}
            Some(rc) => return Err(unreachable(&format!("StartTLS was refused: result {rc}"))),
            None => return Err(unreachable(&"the answer to StartTLS is not an ExtendedResponse")),
        }
    }
    let name = ServerName::try_from(host.clone())
        .map_err(|e| ConnectorError::Unreachable(format!("{host} is not a valid TLS server name: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| ConnectorError::Unreachable(format!("TLS with {host} failed: {e}")))?;
    pair(s, stream).await
}

/// Gives the LDAP library one end of a socket pair and relays between the other and
/// `directory`.
async fn pair<S>(s: &Settings, directory: S) -> Result<Relayed, ConnectorError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let local = || {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        Ok::<_, std::io::Error>((tokio::net::UnixStream::from_std(ours)?, theirs))
    };
    let (ours, theirs) = local().map_err(|e| ConnectorError::Unreachable(format!("a local socket pair: {e}")))?;
    let settings = LdapConnSettings::new().set_std_stream(StdStream::Unix(theirs));
    let (conn, ldap) = LdapConnAsync::with_settings(settings, "ldapi://kfsec-relay")
        .await
        .map_err(|e| failure(&s.host, e).0)?;
    let relay = tokio::spawn(relay(directory, ours, s.id.clone(), s.host.clone()));
    Ok(Relayed { conn, ldap, relay })
}

/// Copies the library's requests to the directory as they are, and the directory's answers to
/// the library once each whole message is checked; ends when either side closes.
async fn relay<S>(directory: S, local: tokio::net::UnixStream, id: String, host: String)
where
    S: AsyncRead + AsyncWrite + Send,
{
    let (mut from_directory, mut to_directory) = tokio::io::split(directory);
    let (mut from_library, mut to_library) = local.into_split();
    let requests = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from_library.read(&mut buf).await?;
            if n == 0 {
                return to_directory.shutdown().await;
            }
            to_directory.write_all(&buf[..n]).await?;
            to_directory.flush().await?;
        }
    };
    let answers = async {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        loop {
            let message = read_message(&mut from_directory, &mut buf).await?;
            to_library.write_all(&message).await?;
        }
    };
    tokio::select! {
        r = requests => if let Err(e) = r {
            tracing::debug!(connector = %id, host, "ldap: sending to the directory failed: {e}");
        },
        r = answers => match r {
            Ok(()) | Err(Stop::Closed) => {}
            Err(Stop::Io(e)) => tracing::debug!(connector = %id, host, "ldap: reading from the directory failed: {e}"),
            Err(e @ Stop::Refused(_)) => tracing::warn!(connector = %id, host, "ldap: {e}; the connection is closed"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::ldap::ber::tests::tlv;

    #[test]
    fn the_start_tls_request_is_one_ldap_message() {
        let request = start_tls_request();
        assert_eq!(ber::message_len(&request), Ok(Some(request.len())));
        let (id, (tag, op)) = ber::message_parts(&request).unwrap();
        assert_eq!((id, tag), (&[1u8][..], 0x77));
        assert_eq!(ber::children(op).collect::<Vec<_>>(), [(0x80, START_TLS)]);
    }

    #[test]
    fn only_an_extended_response_to_message_one_answers_start_tls() {
        let result = |code: &[u8]| tlv(0x0a, code);
        let answer = |id: u8, tag: u8, code: &[u8]| {
            let op = tlv(tag, &[result(code), tlv(0x04, b""), tlv(0x04, b"")].concat());
            tlv(0x30, &[tlv(0x02, &[id]), op].concat())
        };
        assert_eq!(extended_result(&answer(1, 0x78, &[0])), Some(0));
        assert_eq!(extended_result(&answer(1, 0x78, &[2])), Some(2));
        assert_eq!(extended_result(&answer(1, 0x78, &[0, 0, 0, 52])), Some(52));
        // A notice of disconnection (message 0), another operation, a malformed code.
        assert_eq!(extended_result(&answer(0, 0x78, &[52])), None);
        assert_eq!(extended_result(&answer(1, 0x61, &[0])), None);
        assert_eq!(extended_result(&answer(1, 0x78, &[])), None);
        assert_eq!(extended_result(&answer(1, 0x78, &[1, 0, 0, 0, 0])), None);
    }
}
