//! The connection loop of `serve`: accepts TCP connections and serves HTTP/1.1 on each with
//! hyper, within limits a hostile client cannot stretch.
//!
//! Why not `axum::serve`: in axum 0.8.9 it builds hyper-util's connection builder with no
//! timer and no way to configure it, so hyper's header-read timeout (which needs a timer) never
//! runs, nothing caps the connections, and its graceful shutdown waits for every connection
//! however long. This loop uses hyper 1.12's own HTTP/1 server (`http1::Builder` with hyper-
//! util's `TokioTimer`), the same one axum uses underneath, and adds:
//!
//! - **Header-read timeout** ([`Limits::header_read_timeout`]): hyper's. Its timer starts when
//!   the connection waits for a request head (at accept, and again after each response on a
//!   kept-alive connection) and the connection is closed, without an answer, when the head is
//!   not complete by then. So it is also how long an idle kept-alive connection is kept: in
//!   hyper 1.12 the two are one timer.
//! - **Idle timeout** ([`Limits::idle_timeout`]): the states the header timer does not cover. A
//!   request body from which no byte arrives for this long ends with 408 `body_timeout`, and
//!   a response the client does not read (no byte written for this long) closes the
//!   connection. A handler that is working is not idle: it is not cut.
//! - **Connection cap** ([`Limits::max_connections`]): a connection over the cap is answered
//!   at once with 503 `too_many_connections` (problem+json, `Retry-After: 1`) and closed, so
//!   that it holds no descriptor; one that had already sent its request may see a reset
//!   instead of the answer.
//! - **Shutdown deadline** ([`Limits::shutdown_timeout`]): on the stop signal the listener is
//!   closed and every connection is asked to finish (hyper's graceful shutdown: idle ones close
//!   at once, the request in hand is answered); those still open at the deadline are cut.
//!
//! The request head is also bounded below hyper's own ceilings (see [`crate::problem`]): the
//! service answers 414 and 431 as problem+json itself. Above those ceilings (a head over
//! [`HYPER_MAX_HEAD_BYTES`], a target over 65,534 bytes, more than [`HYPER_MAX_HEADERS`]
//! header lines) and for a head hyper cannot parse, hyper answers before the service sees the
//! request: an empty 431, 414 or 400, and the connection is closed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

use crate::Metrics;

/// Hyper's ceiling on the request head (request line and headers), above the service's own
/// [`crate::problem::MAX_HEAD_BYTES`].
pub const HYPER_MAX_HEAD_BYTES: usize = 64 * 1024;
/// Hyper's ceiling on header lines, above the service's own [`crate::problem::MAX_HEADERS`].
pub const HYPER_MAX_HEADERS: usize = 256;

/// The limits of the connection loop (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Connections still open at the shutdown deadline, and cut.
    pub cut: usize,
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, lets the
/// connections finish for at most [`Limits::shutdown_timeout`] and cuts the rest.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<Stopped> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stopping, stop_seen) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // finished connections are reaped as they end, so the set holds the open ones
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // out of descriptors, or a connection reset before it was accepted:
                        // wait a little rather than spin on the error
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    metrics.connection_refused();
                    refuse(&stream);
                    continue;
                };
                let (app, metrics, mut stop_seen) = (app.clone(), metrics.clone(), stop_seen.clone());
                connections.spawn(async move {
                    // closed in the gauge also when the task is cut at the deadline
                    let _open = Open::new(metrics);
                    let graceful = async move {
                        // a dropped sender means the loop is gone: stop as well
                        let _ = stop_seen.wait_for(|stopping| *stopping).await;
                    };
                    if let Err(e) = serve_connection(stream, peer, app, &limits, graceful).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    let _ = stopping.send(true);
    let open = connections.len();
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    let cut = if drained.is_ok() {
        0
    } else {
        let cut = connections.len();
        tracing::warn!(
            cut,
            open,
            deadline_ms = limits.shutdown_timeout.as_millis() as u64,
            "connections still open at the shutdown deadline are cut"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
        cut
    };
    Ok(Stopped { cut })
}

/// Serves HTTP/1.1 on one connection from `peer` until it closes, or until `graceful`
/// resolves and the request in hand (if any) is answered. Public for the tests, which drive
/// it over in-memory streams.
pub async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    limits: &Limits,
    graceful: impl Future<Output = ()>,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle = limits.idle_timeout;
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(|body| axum::body::Body::new(IdleBody::new(body, idle)));
        // what `into_make_service_with_connect_info` gave: the per-client rate limits read it
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(HYPER_MAX_HEADERS)
        .max_header_size(HYPER_MAX_HEAD_BYTES);
    let connection = builder.serve_connection(TokioIo::new(WriteWatch::new(io, idle)), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        ended = connection.as_mut() => ended,
        () = graceful => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}

/// An open connection, in the gauge until dropped.
struct Open(Arc<Metrics>);

impl Open {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.connection_opened();
        Self(metrics)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

/// Answers a connection over the cap, without waiting on it: what the socket takes now, then
/// it is closed.
fn refuse(stream: &TcpStream) {
    static ANSWER: OnceLock<Vec<u8>> = OnceLock::new();
    let answer = ANSWER.get_or_init(|| {
        let body = serde_json::json!({
            "type": "urn:mystira-users:problem:too_many_connections",
            "title": "Service Unavailable",
            "status": 503,
            "code": "too_many_connections",
            "detail": "the service holds as many connections as it takes: try again shortly",
        })
        .to_string();
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
             content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    });
    let _ = stream.try_write(answer);
}

/// The error a request body ends with when no byte of it arrived for the idle timeout.
#[derive(Debug)]
pub(crate) struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no byte of the request body arrived within the idle timeout")
    }
}

impl std::error::Error for BodyTimedOut {}

/// Whether `error` (or what caused it) is a [`BodyTimedOut`].
pub(crate) fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut at = Some(error);
    while let Some(e) = at {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        at = e.source();
    }
    false
}

/// A request body that fails with [`BodyTimedOut`] when, while it is read, no frame arrives for
/// the idle timeout (the timer runs only while the handler waits on the body).
struct IdleBody {
    inner: Incoming,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    armed: bool,
}

impl IdleBody {
    fn new(inner: Incoming, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            armed: false,
        }
    }
}

impl HttpBody for IdleBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if !this.armed {
                    this.armed = true;
                    this.timer.as_mut().reset(Instant::now() + this.idle);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection whose writes fail with `TimedOut` when the peer takes no byte for the idle
/// timeout (a client that does not read its answer).
struct WriteWatch<I> {
    io: I,
    idle: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<I> WriteWatch<I> {
    fn new(io: I, idle: Duration) -> Self {
        Self {
            io,
            idle,
            stalled: None,
        }
    }

    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(done) => {
                self.stalled = None;
                Poll::Ready(done)
            }
            Poll::Pending => {
                let idle = self.idle;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client took no byte of the answer within the idle timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteWatch<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteWatch<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watch(cx, polled)
    }
}
