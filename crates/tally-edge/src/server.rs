//! The accept loop: connection cap, HTTP/1 limits, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::respond::Body;
use crate::timer::ConnTimer;
use crate::Edge;

/// Serves HTTP on `listener` until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish (up to the configured drain timeout) and returns. The caller closes the
/// log afterwards, which commits everything still queued.
pub async fn serve(edge: Arc<Edge>, listener: TcpListener, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let max = edge.config.max_connections;
    accept_loop(edge, listener, shutdown, max, true, crate::handlers::route).await
}

/// The accept loop behind both listeners. `public` connections are the ones counted in
/// `tally_http_connections*` (the admin listener's are not traffic).
pub(crate) async fn accept_loop<H, F>(
    edge: Arc<Edge>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    max_connections: usize,
    public: bool,
    handler: H,
) -> std::io::Result<()>
where
    H: Fn(Arc<Edge>, SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let cfg = &edge.config;
    let mut http = http1::Builder::new();
    // The timer must be set before header_read_timeout, or hyper panics on every connection.
    // Each connection gets its own below (see `timer`); this one keeps the rule true.
    http.timer(ConnTimer::default())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .max_headers(cfg.max_headers)
        // Our responses are a few hundred bytes: one flattened write beats writev's iovecs.
        .writev(false)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    // Tells fast-path connections (see `fast`) that the server is stopping.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // A permit per connection: at the cap we stop accepting and the kernel's backlog queues
    // new connections, instead of accepting more than we can serve.
    let permits = Arc::new(Semaphore::new(max_connections));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tally_telemetry::warn_limited!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        if public {
            edge.metrics.connections_total.inc();
            edge.metrics.connections_open.inc();
        }
        let edge2 = Arc::clone(&edge);
        let handler = handler.clone();
        let service = service_fn(move |req| handler(Arc::clone(&edge2), peer, req));
        let mut conn_http = http.clone();
        conn_http.timer(ConnTimer::default());
        let watcher = graceful.watcher();
        let edge3 = Arc::clone(&edge);
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            let hyper_conn = |io| async move {
                if let Err(e) = watcher.watch(conn_http.serve_connection(TokioIo::new(io), service)).await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            };
            if public {
                crate::fast::serve(Arc::clone(&edge3), stream, peer, stop, hyper_conn).await;
                edge3.metrics.connections_open.dec();
            } else {
                hyper_conn(crate::fast::Rewind::new(bytes::Bytes::new(), stream)).await;
            }
            drop(permit);
        });
    }
    drop(listener);
    // Fast-path connections close when idle or after their current answer; hyper's through
    // `graceful`. Every connection holds a permit until it is gone.
    let _ = stop_tx.send(true);
    let drained = async {
        graceful.shutdown().await;
        let all = u32::try_from(max_connections.max(1)).unwrap_or(u32::MAX);
        let _ = permits.acquire_many(all).await;
    };
    tokio::select! {
        () = drained => tracing::debug!(public, "all connections drained"),
        () = tokio::time::sleep(edge.config.drain_timeout) => {
            tracing::warn!("drain timeout passed with connections still open");
        }
    }
    Ok(())
}
