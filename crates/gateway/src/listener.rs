//! The TLS accept loop (after kanidm's): rustls handshake with a timeout, HTTP/1.1 and HTTP/2 on
//! one port with upgrades, the peer address attached to every request, graceful shutdown that
//! lets in-flight requests finish.
//!
//! Invariants: TLS ≥ 1.2 (the `ServerConfig` comes from `kfsec-pki`); request headers are bounded
//! (oversized → 431); a stalled client cannot hold a handshake or header read open forever.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use kfsec_idp::ClientAddr;
use kfsec_types::Identity;

/// The identity of a verified TLS client certificate, attached to each request of its
/// connection.
#[derive(Debug, Clone)]
pub struct ClientCertIdentity(pub Identity);

/// Largest request head accepted (HTTP/1 buffer and HTTP/2 header list).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn builder() -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(MAX_HEADER_BYTES).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves, then drains connections for at
/// most `drain`.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<kfsec_pki::LiveServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    // Every connection task holds a clone of `alive`; the drain waits for all of them to drop.
    let (alive, mut drained) = tokio::sync::mpsc::channel::<()>(1);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let builder = Arc::new(builder());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        // The config current at accept time (client roots change with a CA rotation).
        let acceptor = TlsAcceptor::from(tls.current());
        let replaced = tls.replaced();
        let app = app.clone();
        let builder = builder.clone();
        let (alive, mut stopping) = (alive.clone(), stopping.clone());
        tokio::spawn(async move {
            let _alive = alive;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            // A client certificate (already verified against the internal CA by rustls) is an
            // identity, as with the Kubernetes API server.
            let cert_identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|der| kfsec_pki::client_identity(der.as_ref()).ok())
                .map(|(user, groups)| ClientCertIdentity(Identity::new(user, groups)));
            // Such an identity was checked against the roots of this config only: when the
            // config is replaced (a CA leaves the trust), the connection is closed gracefully and
            // the client's next handshake is checked again.
            let bound_to_roots = cert_identity.is_some();
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ClientAddr(peer.ip()));
                if let Some(id) = &cert_identity {
                    req.extensions_mut().insert(id.clone());
                }
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::pin!(replaced);
            let mut closing = false;
            let result = loop {
                tokio::select! {
                    r = conn.as_mut() => break r,
                    _ = stopping.wait_for(|s| *s), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    () = &mut replaced, if bound_to_roots && !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    drop(alive);
    if tokio::time::timeout(drain, drained.recv()).await.is_err() {
        tracing::warn!("connections still open after the drain period; closing");
    }
}

/// Serves `app` over plain HTTP (the admin listener, loopback by default).
pub async fn serve_plain(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()> + Send + 'static) {
    let svc = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, svc).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "admin listener failed");
    }
}
