//! Per-core connection workers: one single-threaded Tokio runtime per core, each on a thread of
//! its own, to which the TLS listeners hand whole connections (nginx's worker model).
//!
//! Invariants: a connection — its TLS, every request on it, the tasks its requests spawn and the
//! upstream connections they take from a pool (`upstream`, sharded by [`current`]) — is served
//! on the one worker it was handed to, so no request hops between threads or wakes another
//! core; a new connection goes to the worker with the fewest open connections; the workers stop
//! (their connections dropped) when the last handle to them is dropped, which the listeners hold
//! until they have drained.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// This thread's worker number (1-based); 0 on any other thread.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The worker running on this thread (1 to the number of workers), or 0 on any other thread.
pub(crate) fn current() -> usize {
    WORKER.with(Cell::get)
}

/// The blocking-thread cap (`spawn_blocking`: password hashing, store transactions) shared by
/// the runtimes [`runtime_thread`] makes: each gets its share, so that more runtimes do not
/// raise the process's thread ceiling.
const BLOCKING_THREADS: usize = 512;

/// Runs `future` to its end on a new thread `name` with a single-threaded runtime of its own
/// (built on that thread, its blocking threads capped at `blocking_threads`); `setup` runs first
/// on that thread. Returns the runtime's handle once it runs.
pub(crate) fn runtime_thread<F>(
    name: String,
    blocking_threads: usize,
    setup: impl FnOnce() + Send + 'static,
    future: F,
) -> std::io::Result<Handle>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (started, handle) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new().name(name).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(blocking_threads.max(1))
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
        let _ = started.send(Ok(runtime.handle().clone()));
        setup();
        runtime.block_on(future);
    })?;
    handle
        .recv()
        .map_err(|_| std::io::Error::other("a runtime thread ended while starting"))?
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    /// Connections open on this worker.
    open: Arc<AtomicUsize>,
    /// Dropped with the workers: the worker's thread then ends.
    _stop: oneshot::Sender<()>,
}

/// The connection workers (see the module's documentation).
#[derive(Debug)]
pub struct Workers {
    workers: Box<[Worker]>,
}

impl Workers {
    /// `n` workers (at least one), named `kfsec-worker-1` … `kfsec-worker-n`.
    pub fn start(n: usize) -> std::io::Result<Self> {
        let n = n.max(1);
        let workers = (1..=n)
            .map(|i| {
                let (stop, stopped) = oneshot::channel::<()>();
                let handle = runtime_thread(
                    format!("kfsec-worker-{i}"),
                    BLOCKING_THREADS / (n + 1),
                    move || WORKER.set(i),
                    async move {
                        let _ = stopped.await;
                    },
                )?;
                Ok(Worker {
                    handle,
                    open: Arc::new(AtomicUsize::new(0)),
                    _stop: stop,
                })
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self { workers })
    }

    /// One worker per core this process may use (`available_parallelism`: CPU affinity and
    /// cgroup quotas included).
    pub fn per_core() -> std::io::Result<Self> {
        Self::start(std::thread::available_parallelism().map_or(1, usize::from))
    }

    /// Serves `tcp` with `serve` on the worker with the fewest open connections (the socket is
    /// moved to that worker's reactor). A socket that cannot be moved is closed.
    pub(crate) fn spawn<F>(&self, tcp: TcpStream, serve: impl FnOnce(TcpStream) -> F + Send + 'static)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self.workers.iter().min_by_key(|w| w.open.load(Ordering::Relaxed)) else {
            return;
        };
        let tcp = match tcp.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "connection not handed to a worker");
                return;
            }
        };
        let open = Open::new(worker.open.clone());
        worker.handle.spawn(async move {
            let _open = open;
            match TcpStream::from_std(tcp) {
                Ok(tcp) => serve(tcp).await,
                Err(e) => tracing::debug!(error = %e, "connection not registered on its worker"),
            }
        });
    }
}

/// One open connection of a worker, counted while it lives.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_spread_over_the_workers_and_stay_on_theirs() {
        let workers = Workers::start(2).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let (tcp, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            workers.spawn(tcp, move |tcp| async move {
                let first = current();
                tokio::task::yield_now().await;
                tokio::spawn(async {}).await.unwrap();
                let _ = seen.send((first, current(), std::thread::current().name().map(str::to_owned)));
                // Held open until the test ends, so that the next connection sees this one.
                let _tcp = tcp;
                std::future::pending::<()>().await;
            });
            // Counted before the next connection is placed.
            let (first, after, name) = seen_rx.recv().await.unwrap();
            assert_eq!(first, after, "a connection stays on its worker");
            assert_eq!(name.unwrap(), format!("kfsec-worker-{first}"));
        }
        let open: Vec<usize> = workers.workers.iter().map(|w| w.open.load(Ordering::Relaxed)).collect();
        assert_eq!(open, [2, 2], "the fewest-connections worker gets the next one");
        assert_eq!(current(), 0, "not a worker thread");
    }

    #[tokio::test]
    async fn dropping_the_workers_closes_their_connections() {
        use tokio::io::AsyncReadExt;
        let workers = Workers::start(1).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        workers.spawn(tcp, |tcp| async move {
            let _tcp = tcp;
            std::future::pending::<()>().await;
        });
        drop(workers);
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), client.read(&mut buf))
            .await
            .expect("the connection closes when its worker stops")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
