//! Connections to one directory: a few reused connections bound as the service account (for
//! searches), and short-lived ones for users' binds.
//!
//! Invariants: at most `size` service connections exist, and a caller waits for one at most the
//! connector's timeout (connecting and the service bind included) — so a dead directory answers
//! with an error in bounded time and cannot pile up connections; a connection goes back to the
//! pool only after a search that read its whole answer (a timed-out or cut-short one is closed);
//! a user's bind never happens on a pooled connection; idle connections older than
//! [`MAX_IDLE`] or closed by the server are not reused.

use std::time::Duration;

use ldap3::{Ldap, Scope};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};

use super::decode::{Entry, decode_entry};
use super::relay::{self, Relayed};
use super::{ConnectorError, Settings, failure};

/// How long an idle service connection is reused (directories close idle ones).
pub const MAX_IDLE: Duration = Duration::from_secs(60);

/// One connection: the library's handle, the task driving its side of the socket pair and
/// the task relaying it to the directory (both ended on drop).
pub(super) struct Conn {
    ldap: Ldap,
    driver: JoinHandle<()>,
    relay: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
        self.relay.abort();
    }
}

impl Conn {
    async fn open(s: &Settings) -> Result<Self, ConnectorError> {
        let Relayed { conn, ldap, relay } = relay::open(s).await?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!("ldap connection ended: {e}");
            }
        });
        Ok(Self { ldap, driver, relay })
    }

    /// The library's handle.
    pub(super) fn ldap(&mut self) -> &mut Ldap {
        &mut self.ldap
    }

    /// Unbinds (briefly) and closes.
    pub(super) async fn close(mut self) {
        let _ = timeout(Duration::from_millis(200), self.ldap.unbind()).await;
    }
}

/// Whether so little of a deadline is left that opening a connection is pointless (a caller
/// that waited for a slot until its deadline must not add one more connection).
fn too_late(deadline: Instant) -> bool {
    deadline.saturating_duration_since(Instant::now()) < Duration::from_millis(50)
}

/// The connections of one connector.
pub(super) struct Pool {
    size: usize,
    slots: Semaphore,
    binds: Semaphore,
    idle: parking_lot::Mutex<Vec<(Conn, Instant)>>,
}

/// A service connection on loan; [`Lease::release`] returns it, dropping closes it.
pub(super) struct Lease<'a> {
    conn: Conn,
    pool: &'a Pool,
    reused: bool,
    _permit: SemaphorePermit<'a>,
}

impl Lease<'_> {
    /// The library's handle.
    pub(super) fn ldap(&mut self) -> &mut Ldap {
        self.conn.ldap()
    }

    /// Whether the connection came from the pool (it may have been closed meanwhile).
    pub(super) fn reused(&self) -> bool {
        self.reused
    }

    /// Returns the connection to the pool.
    pub(super) fn release(self) {
        self.pool.idle.lock().push((self.conn, Instant::now()));
    }
}

/// A connection for one user's bind, counted against the concurrent-bind limit.
pub(super) struct UserConn<'a> {
    conn: Conn,
    _permit: SemaphorePermit<'a>,
}

impl UserConn<'_> {
    /// The library's handle.
    pub(super) fn ldap(&mut self) -> &mut Ldap {
        self.conn.ldap()
    }

    /// Unbinds and closes.
    pub(super) async fn close(self) {
        self.conn.close().await;
    }
}

impl Pool {
    /// A pool of at most `size` service connections and `binds` concurrent user binds.
    pub(super) fn new(size: usize, binds: usize) -> Self {
        Self {
            size,
            slots: Semaphore::new(size),
            binds: Semaphore::new(binds),
            idle: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// The most recently returned idle connection still fit for use; every stale or closed
    /// one is dropped on the way (closing it and ending its relay).
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock();
        idle.retain_mut(|(conn, since)| since.elapsed() < MAX_IDLE && !conn.ldap.is_closed());
        idle.pop().map(|(conn, _)| conn)
    }

    /// A service-bound connection: a pooled one, or a new one bound as `bindDN` (anonymously
    /// without one), all within the connector's timeout.
    pub(super) async fn service(&self, s: &Settings) -> Result<Lease<'_>, ConnectorError> {
        let deadline = Instant::now() + s.timeout;
        let permit = match timeout_at(deadline, self.slots.acquire()).await {
            Err(_) => {
                tracing::warn!(connector = %s.id, "ldap: all {} directory connections stayed busy for {:?}", self.size, s.timeout);
                return Err(ConnectorError::Timeout);
            }
            Ok(Err(_)) => return Err(ConnectorError::Unreachable("the connection pool is closed".into())),
            Ok(Ok(p)) => p,
        };
        if let Some(conn) = self.take_idle() {
            return Ok(Lease {
                conn,
                pool: self,
                reused: true,
                _permit: permit,
            });
        }
        if too_late(deadline) {
            return Err(ConnectorError::Timeout);
        }
        let mut conn = timeout_at(deadline, Conn::open(s))
            .await
            .map_err(|_| ConnectorError::Timeout)??;
        let result = match timeout_at(deadline, conn.ldap().simple_bind(&s.bind_dn, &s.bind_pw)).await {
            Err(_) => return Err(ConnectorError::Timeout),
            Ok(Err(e)) => return Err(failure(&s.host, e).0),
            Ok(Ok(r)) => r,
        };
        match result.rc {
            0 => Ok(Lease {
                conn,
                pool: self,
                reused: false,
                _permit: permit,
            }),
            49 => Err(ConnectorError::Misconfigured(format!(
                "{}: the service account bind (bindDN {:?}) was refused: invalid credentials",
                s.host, s.bind_dn
            ))),
            rc => Err(ConnectorError::Upstream(format!(
                "{}: the service account bind (bindDN {:?}) failed: result {rc}: {}",
                s.host,
                s.bind_dn,
                super::clip(&result.text)
            ))),
        }
    }

    /// A new, unbound connection for a user's bind, within the connector's timeout.
    pub(super) async fn user(&self, s: &Settings) -> Result<UserConn<'_>, ConnectorError> {
        let deadline = Instant::now() + s.timeout;
        let permit = match timeout_at(deadline, self.binds.acquire()).await {
            Err(_) => return Err(ConnectorError::Timeout),
            Ok(Err(_)) => return Err(ConnectorError::Unreachable("the connection pool is closed".into())),
            Ok(Ok(p)) => p,
        };
        if too_late(deadline) {
            return Err(ConnectorError::Timeout);
        }
        let conn = timeout_at(deadline, Conn::open(s))
            .await
            .map_err(|_| ConnectorError::Timeout)??;
        Ok(UserConn { conn, _permit: permit })
    }
}

/// What a search found: at most `cap` entries; `more` when there were others (the connection
/// must then be closed, its answer was not read to the end); the result code.
pub(super) struct Searched {
    pub(super) entries: Vec<Entry>,
    pub(super) more: bool,
    pub(super) rc: u32,
}

/// One search on `ldap`, reading at most `cap` entries (referrals and intermediate messages
/// skipped).
pub(super) async fn search(
    ldap: &mut Ldap,
    host: &str,
    base: &str,
    scope: Scope,
    filter: &str,
    attrs: &[&str],
    cap: usize,
) -> Result<Searched, (ConnectorError, bool)> {
    let mut stream = ldap
        .streaming_search(base, scope, filter, attrs.to_vec())
        .await
        .map_err(|e| failure(host, e))?;
    let mut entries = Vec::new();
    loop {
        let item = match stream.next().await {
            Ok(item) => item,
            Err(e) => {
                let _ = stream.finish().await;
                return Err(failure(host, e));
            }
        };
        let Some(item) = item else { break };
        if item.is_ref() || item.is_intermediate() {
            continue;
        }
        if entries.len() == cap {
            let _ = stream.finish().await;
            return Ok(Searched {
                entries,
                more: true,
                rc: 0,
            });
        }
        match decode_entry(item.0) {
            Ok(e) => entries.push(e),
            Err(why) => {
                let _ = stream.finish().await;
                return Err((
                    ConnectorError::Upstream(format!("{host}: malformed search result entry: {why}")),
                    false,
                ));
            }
        }
    }
    let result = stream.finish().await;
    Ok(Searched {
        entries,
        more: false,
        rc: result.rc,
    })
}
