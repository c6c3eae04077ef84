//! The accept loop: connection cap, HTTP/1 limits, graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::Edge;

/// Serves HTTP on `listener` until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish (up to the configured drain timeout) and returns. The caller closes the
/// log afterwards, which commits everything still queued.
pub async fn serve(edge: Arc<Edge>, listener: TcpListener, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let cfg = &edge.config;
    let mut http = http1::Builder::new();
    // The timer must be set before header_read_timeout, or hyper panics on every connection.
    http.timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .max_headers(cfg.max_headers)
        // Our responses are a few hundred bytes: one flattened write beats writev's iovecs.
        .writev(false)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    // A permit per connection: at the cap we stop accepting and the kernel's backlog queues
    // new connections, instead of accepting more than we can serve.
    let permits = Arc::new(Semaphore::new(cfg.max_connections));
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
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        edge.metrics.connections_total.inc();
        edge.metrics.connections_open.inc();
        let edge2 = Arc::clone(&edge);
        let service = service_fn(move |req| crate::handlers::route(Arc::clone(&edge2), peer, req));
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let edge3 = Arc::clone(&edge);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            edge3.metrics.connections_open.dec();
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(edge.config.drain_timeout) => {
            tracing::warn!("drain timeout passed with connections still open");
        }
    }
    Ok(())
}
