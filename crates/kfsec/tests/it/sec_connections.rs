//! Connection exhaustion (issue 9, finding 5): idle, silent and slow connections are closed
//! within the configured header and idle timeouts (HTTP/1 and HTTP/2, PINGs are not activity),
//! connections over the global and per-address caps are closed at once, and the admin
//! listener answers quickly throughout. Floods are bounded (a few hundred connections) and come
//! from several loopback addresses (127.0.0.x).

#![allow(clippy::disallowed_methods)] // deadlines on real sockets, and a blocking writer thread, are the point of these tests

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::*;

const HEADER: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(2);
/// Scheduling slack on a busy 2-core machine (a graceful HTTP/2 close may add up to 1 s more).
const SLACK: Duration = Duration::from_millis(900);

const LIMITS: &str =
    "frontDoor:\n  headerTimeout: 1s\n  idleTimeout: 2s\n  maxConnections: 100\n  maxConnectionsPerAddress: 50\n";

/// A TCP connection from the loopback address `from` (e.g. `127.0.0.3`).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

async fn tls<S: AsyncRead + AsyncWrite + Unpin>(k: &Kfsec, tcp: S, alpn: &[u8]) -> tokio_rustls::client::TlsStream<S> {
    let mut cfg = kfsec_pki::client_config_trusting(&k.running.ca_pem).unwrap();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// Reads until the server closes; how long that took (None: still open after `max`).
async fn closed_within<R: AsyncRead + Unpin>(r: &mut R, start: Instant, max: Duration) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout_at((start + max).into(), read_all)
        .await
        .ok()
        .map(|()| start.elapsed())
}

/// Whether the server has closed `s` within `wait` (without sending anything).
async fn is_closed(s: &mut TcpStream, wait: Duration) -> bool {
    closed_within(s, Instant::now(), wait).await.is_some()
}

/// Polls the admin `/healthz` every 50 ms on a fresh connection, from a thread of its own (so
/// the test's runtime, busy with the flood, does not delay the measurement); records the worst
/// latency and the failures.
struct Healthz {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, u64, u64)>,
}

impl Healthz {
    fn start(admin: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                use std::io::{Read, Write};
                let (mut worst, mut failures, mut polls) = (0u64, 0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let ok = (|| -> std::io::Result<bool> {
                        let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(5))?;
                        s.set_read_timeout(Some(Duration::from_secs(5)))?;
                        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")?;
                        let mut out = String::new();
                        s.read_to_string(&mut out)?;
                        Ok(out.starts_with("HTTP/1.1 200") && out.ends_with("ok"))
                    })()
                    .unwrap_or(false);
                    worst = worst.max(u64::try_from(t.elapsed().as_millis()).unwrap());
                    polls += 1;
                    failures += u64::from(!ok);
                    std::thread::sleep(Duration::from_millis(50));
                }
                (worst, failures, polls)
            }
        });
        Self { stop, thread }
    }

    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let (worst, failures, polls) = self.thread.join().unwrap();
        assert!(polls >= 10, "only {polls} health checks ran");
        assert_eq!(failures, 0, "admin /healthz failed {failures} of {polls} times");
        assert!(worst < 500, "admin /healthz took {worst} ms");
    }
}

/// Opens `n` idle connections from each address of `from`, then reports which the server closed
/// at once (each checked for 300 ms, all at the same time).
async fn open_idle(from: &[(&str, usize)], to: SocketAddr) -> (Vec<TcpStream>, usize) {
    let mut conns = Vec::new();
    for (addr, n) in from {
        for _ in 0..*n {
            conns.push(connect_from(addr, to).await);
        }
    }
    let checks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let closed = is_closed(&mut c, Duration::from_millis(300)).await;
                (c, closed)
            })
        })
        .collect();
    let (mut open, mut closed) = (Vec::new(), 0);
    for c in checks {
        let (c, was_closed) = c.await.unwrap();
        if was_closed {
            closed += 1;
        } else {
            open.push(c);
        }
    }
    (open, closed)
}

fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_floods_are_capped_and_shed_while_admin_answers() {
    let k = Kfsec::start(LIMITS).await;
    let front = k.running.https_addr;
    let health = Healthz::start(k.running.admin_addr);
    let served = |k: &Kfsec| {
        let http = http_client(&k.running.ca_pem);
        let url = format!("{}/open/x", k.base);
        async move { http.get(url).send().await.map(|r| r.status().as_u16()) }
    };

    // Per-address cap: 60 idle connections from one address, 10 of them closed at once …
    let (mut first, closed) = open_idle(&[("127.0.0.2", 60)], front).await;
    assert_eq!(
        closed, 10,
        "connections over maxConnectionsPerAddress are closed at once"
    );
    // … while another address is still served.
    assert_eq!(served(&k).await.unwrap(), 200);
    // The idle ones are closed by the header timeout.
    let t = Instant::now();
    for c in &mut first {
        assert!(
            closed_within(c, t, HEADER + SLACK).await.is_some(),
            "a silent connection outlived the header timeout"
        );
    }

    // Global cap: 3 × 40 from three addresses (each under its own cap), 20 closed at once.
    let (mut held, refused) = open_idle(&[("127.0.0.3", 40), ("127.0.0.4", 40), ("127.0.0.5", 40)], front).await;
    assert_eq!(refused, 20, "connections over maxConnections are closed at once");
    // Full: a normal client is turned away too …
    assert!(served(&k).await.is_err(), "the global cap holds for everyone");
    // … until the flood has timed out; then it is served again. the flood has timed out, a normal client is served again.
    let t = Instant::now();
    for c in &mut held {
        assert!(closed_within(c, t, HEADER + SLACK).await.is_some());
    }
    assert_eq!(served(&k).await.unwrap(), 200);

    // A burst of 200 TLS handshakes from eight addresses, left idle.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (ca, from) = (k.running.ca_pem.clone(), format!("127.0.1.{}", i % 8 + 1));
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let tcp = connect_from(&from, front).await;
            let mut cfg = kfsec_pki::client_config_trusting(&ca).unwrap();
            cfg.alpn_protocols = vec![b"h2".to_vec()];
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            match tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await {
                Ok(mut s) => closed_within(&mut s, t, HEADER + SLACK + Duration::from_secs(1))
                    .await
                    .is_some(),
                Err(_) => true, // refused by a cap
            }
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap(), "an idle TLS connection outlived the header timeout");
    }
    assert_eq!(served(&k).await.unwrap(), 200);
    health.finish();

    let m = metrics_text(&k).await;
    assert!(
        metric(
            &m,
            "kfsec_listener_connections_refused_total{listener=\"front-door\",reason=\"max_connections_per_address\"}"
        ) >= 10,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "kfsec_listener_connections_refused_total{listener=\"front-door\",reason=\"max_connections\"}"
        ) >= 20,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "kfsec_listener_connections_timed_out_total{listener=\"front-door\",reason=\"header_timeout\"}"
        ) >= 150,
        "{m}"
    );
    k.running.shutdown().await;
}

/// Writes `bytes` one at a time, `every` apart, until the peer closes.
async fn drip<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8], every: Duration) {
    for b in bytes {
        if w.write_all(&[*b]).await.is_err() || w.flush().await.is_err() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET path` on stream 1 (HPACK: indexed :method GET, :scheme https; literal :path and
/// :authority).
fn h2_get(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x87, 0x04, u8::try_from(path.len()).unwrap()];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"localhost");
    h2_frame(1, 0x5, 1, &block)
}

/// An HTTP/2 client that optionally sends one request for `path`, then only PINGs every 200 ms
/// (and never a WINDOW_UPDATE); returns when the server closed the connection (measured from the
/// TLS handshake).
async fn h2_pinger(k: &Kfsec, request: Option<&str>) -> Option<Duration> {
    let t = Instant::now();
    let s = tls(k, TcpStream::connect(k.running.https_addr).await.unwrap(), b"h2").await;
    let (mut r, mut w) = tokio::io::split(s);
    let mut hello = H2_PREFACE.to_vec();
    hello.extend(h2_frame(4, 0, 0, &[]));
    if let Some(path) = request {
        hello.extend(h2_get(path));
    }
    w.write_all(&hello).await.unwrap();
    let pings = tokio::spawn(async move {
        for i in 0u64..50 {
            if w.write_all(&h2_frame(6, 0, 0, &i.to_be_bytes())).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let closed = closed_within(&mut r, t, Duration::from_secs(8)).await;
    pings.abort();
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_and_idle_clients_are_closed_within_the_limits() {
    let k = Kfsec::start(LIMITS).await;
    let front = k.running.https_addr;
    let k = Arc::new(k);
    let mut cases: Vec<(&str, Duration, Duration, tokio::task::JoinHandle<Option<Duration>>)> = Vec::new();

    // Silence after connect: no TLS at all.
    cases.push((
        "silent TCP",
        Duration::ZERO,
        HEADER,
        tokio::spawn(async move {
            let t = Instant::now();
            let mut s = TcpStream::connect(front).await.unwrap();
            closed_within(&mut s, t, Duration::from_secs(8)).await
        }),
    ));
    // A ClientHello dripped one byte every 100 ms.
    cases.push((
        "dripped ClientHello",
        Duration::ZERO,
        HEADER,
        tokio::spawn(async move {
            let t = Instant::now();
            let (r, w) = TcpStream::connect(front).await.unwrap().into_split();
            let mut hello = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
            hello.extend([0u8; 64]);
            drip_until_closed(r, w, hello, t).await
        }),
    ));
    // A completed handshake, then nothing.
    let kk = k.clone();
    cases.push((
        "silent after TLS",
        Duration::ZERO,
        HEADER,
        tokio::spawn(async move {
            let t = Instant::now();
            let mut s = tls(&kk, TcpStream::connect(front).await.unwrap(), b"http/1.1").await;
            closed_within(&mut s, t, Duration::from_secs(8)).await
        }),
    ));
    // Slowloris: a request head dripped one byte every 100 ms.
    let kk = k.clone();
    cases.push((
        "slowloris headers",
        Duration::ZERO,
        HEADER,
        tokio::spawn(async move {
            let t = Instant::now();
            let s = tls(&kk, TcpStream::connect(front).await.unwrap(), b"http/1.1").await;
            let (r, w) = tokio::io::split(s);
            let head = format!(
                "GET /open/x HTTP/1.1\r\nHost: localhost\r\nX-Slow: {}\r\n\r\n",
                "a".repeat(60)
            );
            drip_until_closed(r, w, head.into_bytes(), t).await
        }),
    ));
    // HTTP/1.1 keep-alive: one request answered, then idle (not closed by the header timer).
    let kk = k.clone();
    cases.push((
        "keep-alive idle after one request",
        IDLE - Duration::from_millis(300),
        IDLE,
        tokio::spawn(async move {
            let (r, w) = after_one_request(&kk).await;
            drip_until_closed(r, w, Vec::new(), Instant::now()).await
        }),
    ));
    // HTTP/1.1 keep-alive: one request answered, then the next head dripped.
    let kk = k.clone();
    cases.push((
        "keep-alive, second head dripped",
        Duration::ZERO,
        IDLE,
        tokio::spawn(async move {
            let (r, w) = after_one_request(&kk).await;
            let next = b"GET /open/y HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1\r\n\r\n".repeat(3);
            drip_until_closed(r, w, next, Instant::now()).await
        }),
    ));
    // HTTP/2: PINGs only, never a request.
    let kk = k.clone();
    cases.push((
        "HTTP/2 PINGs without a request",
        Duration::ZERO,
        HEADER,
        tokio::spawn(async move { h2_pinger(&kk, None).await }),
    ));
    // HTTP/2: one request, then PINGs only (a graceful GOAWAY may take its 1 s grace).
    let kk = k.clone();
    cases.push((
        "HTTP/2 PINGs after one request",
        IDLE - Duration::from_millis(300),
        IDLE + Duration::from_secs(1),
        tokio::spawn(async move { h2_pinger(&kk, Some("/open/x")).await }),
    ));

    for (what, at_least, limit, task) in cases {
        let took = task.await.unwrap();
        let took = took.unwrap_or_else(|| panic!("{what}: still open after 8 s (limit {limit:?})"));
        assert!(took <= limit + SLACK, "{what}: closed after {took:?}, limit {limit:?}");
        assert!(took >= at_least, "{what}: closed after {took:?}, before {at_least:?}");
    }
    // An HTTP/2 client that keeps making requests is not cut off by either timer.
    let timed_out = |m: &str| {
        metric(
            m,
            "kfsec_listener_connections_timed_out_total{listener=\"front-door\",reason=\"header_timeout\"}",
        ) + metric(
            m,
            "kfsec_listener_connections_timed_out_total{listener=\"front-door\",reason=\"idle_timeout\"}",
        )
    };
    let before = timed_out(&metrics_text(&k).await);
    let http = http_client(&k.running.ca_pem);
    for _ in 0..6 {
        let r = http.get(format!("{}/open/x", k.base)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        timed_out(&metrics_text(&k).await),
        before,
        "a busy connection was timed out"
    );
    let k = Arc::into_inner(k).unwrap();
    k.running.shutdown().await;
}

/// Writes `bytes` one every 100 ms into `w` while waiting (from `t`) for the server to close `r`.
async fn drip_until_closed<R, W>(mut r: R, mut w: W, bytes: Vec<u8>, t: Instant) -> Option<Duration>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let writer = tokio::spawn(async move {
        drip(&mut w, &bytes, Duration::from_millis(100)).await;
        // kept open (not shut down) until the server closes
        std::future::pending::<()>().await;
        drop(w);
    });
    let closed = closed_within(&mut r, t, Duration::from_secs(8)).await;
    writer.abort();
    closed
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// An HTTP/1.1 connection over TLS whose first request has been answered.
async fn after_one_request(
    k: &Kfsec,
) -> (
    tokio::io::BufReader<tokio::io::ReadHalf<Tls>>,
    tokio::io::WriteHalf<Tls>,
) {
    let s = tls(k, TcpStream::connect(k.running.https_addr).await.unwrap(), b"http/1.1").await;
    let (r, mut w) = tokio::io::split(s);
    w.write_all(b"GET /open/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut r = tokio::io::BufReader::new(r);
    let len = read_head(&mut r).await;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.unwrap();
    (r, w)
}

/// Reads an HTTP/1.1 response head; returns its Content-Length.
async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> usize {
    use tokio::io::AsyncBufReadExt;
    let mut len = 0;
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).await.unwrap() > 0, "closed before the response");
        if line == "\r\n" {
            return len;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
}

/// An upstream that answers every request with `len` bytes, `chunk` at a time, pausing `every`
/// between chunks (as fast as it is read when zero).
async fn raw_upstream(len: usize, chunk: usize, every: Duration) -> SocketAddr {
    raw_server(move |mut r, mut w| async move {
        let _ = read_head(&mut r).await;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: text/plain\r\n\r\n");
        let data = vec![b'x'; chunk];
        let _ = w.write_all(head.as_bytes()).await;
        for _ in 0..len / chunk {
            if w.write_all(&data).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    })
    .await
}

type RawReader = tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>;

/// A TCP server on 127.0.0.1 that hands each connection, split, to `serve` in a task.
async fn raw_server<F: std::future::Future<Output = ()> + Send + 'static>(
    serve: impl Fn(RawReader, tokio::net::tcp::OwnedWriteHalf) -> F + Send + 'static,
) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (r, w) = s.into_split();
            tokio::spawn(serve(tokio::io::BufReader::new(r), w));
        }
    });
    addr
}

/// kfsec with [`LIMITS`] and a public route `prefix` to `upstream`.
async fn with_route(prefix: &str, upstream: SocketAddr) -> Kfsec {
    Kfsec::start(&format!(
        "- prefix: {prefix}\n  upstream: http://{upstream}\n  public: true\n{LIMITS}"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_bodies_and_stalled_readers_are_cut_off() {
    let k = with_route("/huge/", raw_upstream(256 << 20, 64 << 10, Duration::ZERO).await).await;
    let front = k.running.https_addr;

    // Slow POST: a body announced, a few bytes sent, then silence (the handler reads the body).
    let s = tls(&k, TcpStream::connect(front).await.unwrap(), b"http/1.1").await;
    let (mut r, mut w) = tokio::io::split(s);
    w.write_all(
        b"POST /dex/token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\ngrant_type",
    )
    .await
    .unwrap();
    let t = Instant::now();
    let closed = closed_within(&mut r, t, Duration::from_secs(8)).await;
    drop(w);
    let took = closed.expect("a stalled request body held its connection for 8 s");
    assert!(took <= IDLE + SLACK, "stalled request body: closed after {took:?}");

    // A client that stops reading a large response.
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let s = tls(&k, sock.connect(front).await.unwrap(), b"http/1.1").await;
    let (mut r, mut w) = tokio::io::split(s);
    w.write_all(b"GET /huge/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    // not reading for longer than the idle timeout …
    tokio::time::sleep(IDLE + SLACK + Duration::from_secs(1)).await;
    // … then what was buffered drains and the connection is over.
    let mut total = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    drop(w);
    assert!(
        ended.is_ok(),
        "the stalled reader's connection is still open ({total} bytes read)"
    );
    assert!(total < 128 << 20, "{total} bytes were sent: the server never stopped");

    // HTTP/2: a large response whose flow-control window the client never opens (its PINGs
    // are not progress).
    let closed = h2_pinger(&k, Some("/huge/x")).await;
    let took = closed.expect("a shut HTTP/2 window held its connection for 8 s");
    assert!(
        took <= IDLE + SLACK + Duration::from_secs(1),
        "shut window: closed after {took:?}"
    );
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_capped_so_upstream_connections_stay_bounded() {
    let k = with_route("/slow/", raw_upstream(100, 1, Duration::from_millis(500)).await).await;
    // One HTTP/2 connection, 120 streams at once (each would hold an upstream connection).
    let http = http_client(&k.running.ca_pem);
    // the connection first, so that the streams share it
    assert_eq!(
        http.get(format!("{}/open/x", k.base)).send().await.unwrap().status(),
        200
    );
    let mut tasks = Vec::new();
    for i in 0..120 {
        let (http, url) = (http.clone(), format!("{}/slow/{i}", k.base));
        tasks.push(tokio::spawn(async move { http.get(url).send().await.unwrap() }));
    }
    let mut held = Vec::new();
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        match r.status().as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(r.headers()["retry-after"], "1");
                busy += 1;
            }
            other => panic!("unexpected {other}"),
        }
        held.push(r);
    }
    assert_eq!(
        (ok, busy),
        (100, 20),
        "in-flight requests over the cap are answered 503"
    );
    // Once they end, new requests are served again.
    drop(held);
    let mut served = false;
    // the server may see the dropped streams end a moment later: those answers are 503s too
    let mut busy_after = 0;
    for _ in 0..20 {
        match http
            .get(format!("{}/open/x", k.base))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
        {
            200 => {
                served = true;
                break;
            }
            503 => busy_after += 1,
            other => panic!("unexpected {other}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "requests are served again once the others ended");
    let m = metrics_text(&k).await;
    let refused = metric(
        &m,
        "kfsec_listener_connections_refused_total{listener=\"front-door\",reason=\"max_requests\"}",
    ) + metric(
        &m,
        "kfsec_listener_connections_refused_total{listener=\"front-door\",reason=\"max_requests_per_address\"}",
    );
    assert_eq!(refused, 20 + busy_after, "every 503 is counted once: {m}");
    k.running.shutdown().await;
}

/// Kills the child process when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real binary under a small open-files limit (400): a flood of connections is refused by
/// the caps (fitted below the limit) before descriptors run out, so the admin listener and a
/// second listener keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_cannot_exhaust_file_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let (front_port, admin_port) = (free_port(), free_port());
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 400 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_kfsec"))
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args([
            "--https-addr",
            &format!("127.0.0.1:{front_port}"),
            "--admin-addr",
            &format!("127.0.0.1:{admin_port}"),
            "--webhook-addr",
            "127.0.0.1:0",
        ])
        .env("KFSEC_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _child = Child(child);
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let front: SocketAddr = format!("127.0.0.1:{front_port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "kfsec did not start");
        if let Ok(r) = reqwest::get(format!("http://{admin}/readyz")).await
            && r.status() == 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = Healthz::start(admin);
    // 450 connections from nine addresses: more than the process may open.
    let mut conns = Vec::new();
    for i in 0..450 {
        if let Ok(c) = tokio::time::timeout(
            Duration::from_secs(2),
            connect_from(&format!("127.0.0.{}", i % 9 + 2), front),
        )
        .await
        {
            conns.push(c);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = metric(
        &m,
        "kfsec_listener_connections_refused_total{listener=\"front-door\",reason=\"max_connections\"}",
    );
    assert!(refused >= 300, "the caps refused only {refused} connections: {m}");
    assert_eq!(
        metric(&m, "kfsec_listener_accept_errors_total{listener=\"front-door\"}"),
        0,
        "{m}"
    );
    assert!(
        m.contains("kfsec_listener_accept_errors_total{listener=\"front-door\"} 0"),
        "{m}"
    );
    health.finish();
    drop(conns);
}

/// A few empty lines before a request line are ignored (RFC 9112 §2.2), on a new connection and
/// between keep-alive requests; a stream of them is not HTTP, and its connection is closed at
/// once instead of being parsed again after every piece until a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_lines_before_a_request_are_ignored_and_a_stream_of_them_is_cut_off() {
    use tokio::io::AsyncBufReadExt;
    // Default limits: the header and idle timeouts are far longer than this test waits.
    let k = Kfsec::start("").await;
    let s = tls(&k, TcpStream::connect(k.running.https_addr).await.unwrap(), b"http/1.1").await;
    let (r, mut w) = tokio::io::split(s);
    let mut r = tokio::io::BufReader::new(r);
    for lead in [&b"\r\n"[..], b"\r\n\r\n", b"\n"] {
        let mut req = lead.to_vec();
        req.extend_from_slice(b"GET /open/x HTTP/1.1\r\nHost: localhost\r\n\r\n");
        w.write_all(&req).await.unwrap();
        let mut status = String::new();
        r.read_line(&mut status).await.unwrap();
        assert!(status.starts_with("HTTP/1.1 "), "after {lead:?}: {status:?}");
        let len = read_head(&mut r).await;
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await.unwrap();
    }
    // Many empty lines, each in a TLS record of its own, on this connection and a new one.
    let fresh = tls(&k, TcpStream::connect(k.running.https_addr).await.unwrap(), b"http/1.1").await;
    let (fresh_r, fresh_w) = tokio::io::split(fresh);
    for (what, mut r, mut w) in [
        (
            "after a request",
            Box::new(r) as Box<dyn AsyncRead + Unpin + Send>,
            Box::new(w) as Box<dyn AsyncWrite + Unpin + Send>,
        ),
        ("first", Box::new(fresh_r), Box::new(fresh_w)),
    ] {
        let t = Instant::now();
        let writer = tokio::spawn(async move {
            for _ in 0..200 {
                if w.write_all(b"\r\n").await.is_err() || w.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            std::future::pending::<()>().await;
        });
        let closed = closed_within(&mut r, t, Duration::from_secs(5)).await;
        writer.abort();
        assert!(
            closed.is_some(),
            "{what}: a stream of empty lines kept the connection open"
        );
    }
    k.running.shutdown().await;
}

/// An upstream that reads each request head (and whatever body follows) and answers `answer`
/// — possibly nothing, possibly half an answer — then keeps the connection open, silent.
async fn silent_upstream(answer: &'static [u8]) -> SocketAddr {
    raw_server(move |mut r, mut w| async move {
        let len = read_head(&mut r).await;
        let mut body = vec![0u8; len];
        let _ = r.read_exact(&mut body).await;
        let _ = w.write_all(answer).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop((r, w));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_answering_is_cut_off_at_its_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(700);
    let silent = silent_upstream(b"").await;
    let half_head = silent_upstream(b"HTTP/1.1 200 OK\r\nContent-Le").await;
    let half_body = silent_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf").await;
    let k = Kfsec::start(&format!(
        "- prefix: /silent/\n  upstream: http://{silent}\n  public: true\n\
         - prefix: /half-head/\n  upstream: http://{half_head}\n  public: true\n\
         - prefix: /half-body/\n  upstream: http://{half_body}\n  public: true\n\
         frontDoor:\n  upstreamTimeout: 700ms\n  maxConnections: 4\n"
    ))
    .await;
    let h2 = http_client(&k.running.ca_pem);
    let h1 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(k.running.ca_pem.as_bytes()).unwrap()])
        .http1_only()
        .build()
        .unwrap();
    // No answer, or half a head: 504 with kfsec's page, on the lean path (GET) and hyper's (a
    // body), over HTTP/1.1 (kfsec's own loop) and HTTP/2.
    for (client, version) in [(&h1, reqwest::Version::HTTP_11), (&h2, reqwest::Version::HTTP_2)] {
        for prefix in ["/silent/", "/half-head/"] {
            for post in [false, true] {
                let url = format!("{}{prefix}x", k.base);
                let req = if post {
                    client.post(url).body("a body")
                } else {
                    client.get(url)
                };
                let t = Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(10), req.send())
                    .await
                    .expect("a silent upstream held the request 10 s")
                    .unwrap();
                let took = t.elapsed();
                let what = format!("{prefix} post={post} {version:?}");
                assert_eq!(r.version(), version, "{what}");
                assert_eq!(r.status(), 504, "{what}");
                assert!(took >= TIMEOUT && took <= TIMEOUT + SLACK * 2, "{what}: {took:?}");
                let body = r.text().await.unwrap();
                assert!(body.contains("did not answer in time"), "{what}: {body}");
            }
        }
        // Half a body: the answer began (200), so it is cut — never completed, never hung.
        let t = Instant::now();
        let r = client.get(format!("{}/half-body/x", k.base)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body = tokio::time::timeout(Duration::from_secs(10), r.bytes())
            .await
            .expect("a half answer held the request 10 s");
        assert!(body.is_err(), "{version:?}: a cut answer read as whole: {body:?}");
        assert!(t.elapsed() <= TIMEOUT + SLACK * 2, "{version:?}: {:?}", t.elapsed());
    }
    // Ten requests cut, with room for four in flight: each gave its place back.
    assert_eq!(h1.get(format!("{}/open/x", k.base)).send().await.unwrap().status(), 200);
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_client_has_its_own_request_places() {
    // an upstream that answers after a while: requests stay in flight
    let slow = raw_server(|mut r, mut w| async move {
        let _ = read_head(&mut r).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    })
    .await;
    // 127.0.0.1 is the trusted proxy (written as a dual-stack peer would be seen: it is the same
    // address), and behind it a range of ingress pods (10.0.0.0/8); three connections and six
    // requests in flight per address
    let k = Kfsec::start(&format!(
        "- prefix: /slow/\n  upstream: http://{slow}\n  public: true\n\
         trustedProxies: [\"::ffff:127.0.0.1\", 10.0.0.0/8]\n\
         frontDoor:\n  maxConnections: 100\n  maxConnectionsPerAddress: 3\n"
    ))
    .await;
    let ca = || reqwest::Certificate::from_pem(k.running.ca_pem.as_bytes()).unwrap();
    let h2 = http_client(&k.running.ca_pem);
    let h1 = || {
        reqwest::Client::builder()
            .tls_certs_only([ca()])
            .http1_only()
            .build()
            .unwrap()
    };
    let (lean_a, lean_b) = (h1(), h1());
    let send = |client: &reqwest::Client, who: &str, i: usize| {
        let req = client
            .get(format!("{}/slow/{i}", k.base))
            .header("x-forwarded-for", format!("203.0.113.50, {who}"));
        async move {
            let r = req.send().await.unwrap();
            (r.version(), r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // (the HTTP/2 connection first, so that the streams share it)
    let warm = h2.get(format!("{}/open/x", k.base)).send().await.unwrap();
    assert_eq!(warm.version(), reqwest::Version::HTTP_2);
    // One client behind the proxy takes its six places: five HTTP/2 streams on one connection
    // (hyper's path) and a request of the lean HTTP/1.1 loop on another.
    let mut greedy: Vec<_> = (0..5).map(|i| tokio::spawn(send(&h2, "198.51.100.7", i))).collect();
    greedy.push(tokio::spawn(send(&lean_a, "198.51.100.7", 5)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(
        &metrics_text(&k).await,
        "kfsec_listener_requests_in_flight{listener=\"front-door\"}",
    ) < 6
    {
        assert!(
            Instant::now() < deadline,
            "the six requests never were in flight together"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its seventh is refused, by the lean loop (a third connection) and on HTTP/2 alike, also when
    // it comes through an ingress pod (the pod's entry is a trusted hop, skipped); other clients
    // behind the same proxy and pod are not.
    let (lean_seventh, h2_seventh, other, third) = tokio::join!(
        send(&lean_b, "198.51.100.7, 10.1.2.3", 6),
        send(&h2, "198.51.100.7", 7),
        send(&h2, "192.0.2.1, 10.1.2.3", 8),
        send(&h2, "192.0.2.2", 9),
    );
    for (what, (version, status, body)) in [("lean", lean_seventh), ("HTTP/2", h2_seventh)] {
        assert_eq!(status, 503, "{what} {version:?}: the greedy client's seventh request");
        assert!(body.contains("too many requests in flight"), "{what}: {body}");
    }
    assert_eq!(other.1, 200, "another client behind the proxy is not refused");
    assert_eq!(third.1, 200, "nor a third");
    for g in greedy {
        assert_eq!(g.await.unwrap().1, 200);
    }
    // A client that is not a trusted proxy counts as itself whatever it says it forwards, and
    // keeps the per-address connection cap.
    let front = k.running.https_addr;
    let held = (
        connect_from("127.0.0.2", front).await,
        connect_from("127.0.0.2", front).await,
        connect_from("127.0.0.2", front).await,
    );
    let mut fourth = connect_from("127.0.0.2", front).await;
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "a fourth connection from 127.0.0.2 stayed open: {closed:?}"
    );
    drop(held);
    k.running.shutdown().await;
}
