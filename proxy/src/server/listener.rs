//! Accept loop: TLS (rustls, ALPN h2 + http/1.1) or plain TCP, HTTP/1.1 and HTTP/2 through
//! hyper-util's auto builder, one task per connection, graceful shutdown. A failed accept or
//! handshake never stops serving. Slow clients are bounded: the TLS handshake and (HTTP/1) the
//! request headers must arrive within their timeouts; request bodies have their own idle timeout
//! in the handlers.

use super::sendfile::{FileSends, SendfileStream};
use axum::http::{Request, Version};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus::{IntCounter, IntCounterVec};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::Instrument;

/// How a connection is served.
pub struct Limits {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    /// After `stop`: how long open requests may take to finish.
    pub grace: Duration,
    /// Send plain-HTTP/1 hits from their files with `sendfile` (ADR 0012), counting the bytes
    /// sent so here; `None` copies them (and the sidecar, which serves no files, passes `None`).
    pub sendfile: Option<IntCounter>,
}

/// What a listener serves: the proxy's [`super::routes::Api`], or the sidecar's router.
pub trait App:
    tower::Service<Request<Incoming>, Response = Response, Error = std::convert::Infallible, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<S> App for S where
    S: tower::Service<Request<Incoming>, Response = Response, Error = std::convert::Infallible, Future: Send>
        + Clone
        + Send
        + 'static
{
}

/// Serves `app` on `listener` until `stop` turns true, then stops accepting and waits up to
/// `limits.grace` for open requests to finish. Connections cut by a timeout are counted in
/// `timeouts`, by phase (`header`, `tls_handshake`).
pub async fn serve(
    listener: TcpListener,
    app: impl App,
    limits: Limits,
    timeouts: IntCounterVec,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = limits.tls.clone().map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    // writev(true): hyper hands body chunks to the connection as they are, which zero-copy
    // hits need (see `sendfile`); it is also hyper's choice for a TCP stream.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).writev(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = Arc::clone(&builder);
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        let timeouts = timeouts.clone();
        let handshake_timeout = limits.tls_handshake_timeout;
        let sendfile = limits.sendfile.clone();
        let span = tracing::debug_span!("connection", %peer);
        tokio::spawn(
            async move {
                let result = match acceptor {
                    Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let service = TowerToHyperService::new(app);
                            watcher
                                .watch(builder.serve_connection_with_upgrades(TokioIo::new(tls), service).into_owned())
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            timeouts.with_label_values(&["tls_handshake"]).inc();
                            tracing::debug!(timeout = ?handshake_timeout, "TLS handshake timed out");
                            return;
                        }
                    },
                    None if let Some(sent_bytes) = sendfile => {
                        let sends = FileSends::default();
                        let io = SendfileStream::new(stream, sends.clone(), sent_bytes);
                        // HTTP/2 copies its frames: only HTTP/1 requests may answer with stand-ins.
                        let service = TowerToHyperService::new(app.map_request(move |mut req: Request<_>| {
                            if req.version() <= Version::HTTP_11 {
                                req.extensions_mut().insert(sends.clone());
                            }
                            req
                        }));
                        watcher
                            .watch(builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned())
                            .await
                    }
                    None => {
                        let service = TowerToHyperService::new(app);
                        watcher
                            .watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned())
                            .await
                    }
                };
                if let Err(e) = result {
                    if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) {
                        timeouts.with_label_values(&["header"]).inc();
                    }
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
    drop(listener);
    if tokio::time::timeout(limits.grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("open connections did not finish within the grace period");
    }
}
