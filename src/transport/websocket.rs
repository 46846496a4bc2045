//! The WebSocket transport (`/socket/websocket`).
//!
//! actix-http hands every `Upgrade: websocket` request, with its connection, to
//! [`take_over`] (the server's upgrade hook) instead of the App. The handshake is answered
//! here and the connection then leaves actix-http's HTTP/1 dispatcher: one task per socket
//! owns the raw TCP stream, the socket state and the heartbeat clock, and reads and writes
//! with buffers that exist only while bytes are in flight ([`super::ws_reader`],
//! [`super::ws_writer`]). An idle socket therefore keeps no read or write buffer, where the
//! dispatcher kept two of 8 KiB for the life of the connection.
//!
//! The upgrade hook bypasses the App, its routes and middleware, so this module routes by
//! path and method itself and answers refusals with `Connection: close` (the connection
//! cannot go back to the dispatcher).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use actix_codec::Framed;
use actix_http::body::BodySize;
use actix_http::header::{self, HeaderValue};
use actix_http::ws::{self, CloseCode, CloseReason as WsClose};
use actix_http::{h1, ConnectionType, Method, Request, Response, StatusCode};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::accept::{accept, count_error, Accepted, Rejected};
use super::parse_params;
use super::ws_reader::{Incoming, Reader};
use super::ws_writer::Writer;
use super::Env;
use crate::channel::SocketInfo;
use crate::limits::Limit;
use crate::outbox::{outbox_bounded, CloseReason, CloseSignal, Frames, Outbox};
use crate::protocol::Serializer;
use crate::pubsub::Broadcast;
use crate::socket::{Connected, Socket};

/// The subprotocol phoenix.js offers alongside its auth token.
const PHOENIX_SUBPROTOCOL: &str = "phoenix";

/// How long the last frames and the close frame may take to be written.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Bytes read per read call: a socket's read buffer exists only while it is reading.
const READ_CHUNK: usize = 4096;

/// The WebSocket endpoint of one server.
pub(crate) struct Endpoint {
    /// What the transports share.
    pub env: Arc<Env>,
    /// The endpoint's path (`/socket/websocket`).
    pub path: String,
    /// The work-stealing runtime connections move to once upgraded; None: they stay on the
    /// HTTP worker that accepted them.
    pub runtime: Option<tokio::runtime::Handle>,
}

/// The upgrade hook: answers the handshake of a WebSocket request and starts its
/// connection task, or answers with an HTTP refusal and closes the connection.
pub(crate) async fn take_over(
    endpoint: Arc<Endpoint>,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
) -> Result<(), Infallible> {
    upgrade(&endpoint, req, framed).await;
    Ok(())
}

async fn upgrade(endpoint: &Endpoint, req: Request, framed: Framed<TcpStream, h1::Codec>) {
    let env = &endpoint.env;
    if req.path() != endpoint.path {
        return refuse(framed, StatusCode::NOT_FOUND).await;
    }
    if req.method() != Method::GET {
        return refuse(framed, StatusCode::METHOD_NOT_ALLOWED).await;
    }
    let protocols = req
        .head()
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let offers_phoenix = match &protocols {
        None => false,
        Some(offered) if offered.split(',').any(|p| p.trim() == PHOENIX_SUBPROTOCOL) => true,
        Some(_) => {
            tracing::info!("connect refused: no supported subprotocol offered");
            ::metrics::counter!(crate::metrics::CONNECTS, "result" => "refused").increment(1);
            return refuse(framed, StatusCode::FORBIDDEN).await;
        }
    };
    let auth_token = protocols
        .as_deref()
        .and_then(crate::socket::origin::auth_token);
    let params = parse_params(req.uri().query().unwrap_or_default());
    let accepted = match accept(req.head(), env, params, auth_token).await {
        Ok(a) => a,
        Err(why) => {
            let status = match why {
                // 503 tells the balancer to try another node; 429 asks the client to slow down.
                Rejected::Draining | Rejected::Limited(Limit::NodeFull | Limit::NodeBusy) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                Rejected::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
                Rejected::Forbidden => StatusCode::FORBIDDEN,
            };
            return refuse(framed, status).await;
        }
    };
    let mut res = match ws::handshake(req.head()) {
        Ok(res) => res,
        Err(e) => {
            tracing::debug!(error = %e, "websocket handshake failed");
            count_error();
            return refuse(framed, StatusCode::BAD_REQUEST).await;
        }
    };
    if offers_phoenix {
        res.insert_header((
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(PHOENIX_SUBPROTOCOL),
        ));
    }
    let Some((stream, unread)) = switch(framed, res.finish().drop_body()).await else {
        count_error();
        return;
    };
    let stream = match &endpoint.runtime {
        Some(runtime) => match rehome(stream, runtime) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "connection lost at the hand-over");
                return;
            }
        },
        None => stream,
    };
    let Accepted {
        serializer,
        connected,
        admission,
        peer_ip,
    } = accepted;
    let (out_tx, out_rx) = outbox_bounded(serializer, super::queue_bounds(&env.socket.settings));
    let span = tracing::info_span!("socket", id = connected.id.as_deref().unwrap_or("-"));
    let conn = Conn {
        peer_ip,
        stream: (stream, unread),
        close_signal: out_rx.close_signal(),
        frames: out_rx.rx,
        out_tx,
        _admission: admission,
    };
    // Its own task: the dispatcher's state and buffers are freed as this returns. On the
    // work-stealing runtime, a broadcast's thousands of socket writes spread over every
    // thread, where each HTTP worker would only run the sockets it accepted.
    let task = run(env.clone(), serializer, connected, conn).instrument(span);
    match &endpoint.runtime {
        Some(runtime) => drop(runtime.spawn(task)),
        None => drop(actix_web::rt::spawn(task)),
    }
}

/// Moves a stream to `runtime`'s I/O driver. Done before the task is spawned, so the task is
/// the connection's own future (a wrapping future would add its state to every socket).
fn rehome(stream: TcpStream, runtime: &tokio::runtime::Handle) -> io::Result<TcpStream> {
    let std = stream.into_std()?;
    let _entered = runtime.enter();
    TcpStream::from_std(std)
}

/// Writes the 101 response and takes the connection out of the HTTP codec. Bytes the client
/// sent after its request stay in the returned read buffer.
async fn switch(
    mut framed: Framed<TcpStream, h1::Codec>,
    res: Response<()>,
) -> Option<(TcpStream, BytesMut)> {
    match tokio::time::timeout(CLOSE_WAIT, framed.send((res, BodySize::None).into())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "websocket handshake not sent");
            return None;
        }
        Err(_) => {
            tracing::debug!("websocket handshake not sent in time");
            return None;
        }
    }
    let parts = framed.into_parts();
    // The dispatcher's read buffer is kept only if the client already sent frames.
    let unread = if parts.read_buf.is_empty() {
        BytesMut::new()
    } else {
        parts.read_buf
    };
    Some((parts.io, unread))
}

/// Answers with `status` and an empty body, then closes the connection.
async fn refuse(mut framed: Framed<TcpStream, h1::Codec>, status: StatusCode) {
    let mut res = Response::with_body(status, ());
    res.head_mut().set_connection_type(ConnectionType::Close);
    let sent = async {
        framed.send((res, BodySize::Sized(0)).into()).await?;
        framed.io_mut().shutdown().await
    };
    if let Err(e) = tokio::time::timeout(CLOSE_WAIT, sent)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    {
        tracing::debug!(error = %e, %status, "refusal not sent");
    }
}

async fn recv_id(rx: &mut Option<mpsc::Receiver<Arc<Broadcast>>>) -> Option<Arc<Broadcast>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What the connection task owns besides the socket state.
struct Conn {
    /// The client's address, when known.
    peer_ip: Option<std::net::IpAddr>,
    /// The connection, and bytes the client sent right after its handshake.
    stream: (TcpStream, BytesMut),
    /// Frames queued for the client.
    frames: Frames,
    out_tx: Outbox,
    close_signal: CloseSignal,
    /// Holds the socket's place in the admission limits until the connection ends.
    _admission: crate::limits::Admission,
}

async fn run(env: Arc<Env>, serializer: Serializer, connected: Connected, conn: Conn) {
    let Conn {
        peer_ip,
        stream: (mut stream, mut read_buf),
        mut frames,
        out_tx,
        close_signal,
        _admission,
    } = conn;
    let max_frame_bytes = env.socket.settings.max_frame_bytes;
    let heartbeat_timeout_ms = env.socket.settings.heartbeat_timeout_ms;
    let mut reader = Reader::new(max_frame_bytes);
    let mut writer = Writer::default();
    let (events_tx, mut events) = crate::channel::exit_queue();
    let info = SocketInfo {
        id: connected.id,
        assigns: connected.assigns,
        serializer,
        peer_ip,
    };
    // On shutdown the drain closes sockets one by one over its period (`Shutdown`), so that
    // clients reconnect to the other nodes gradually.
    let _draining = env.drain.register(out_tx.clone());
    let mut socket = Socket::new(info, env.socket.clone(), out_tx, events_tx);
    let mut id_rx = Box::pin(socket.subscribe_id()).await;
    let timeout = Duration::from_millis(heartbeat_timeout_ms);
    let idle = tokio::time::sleep(timeout);
    tokio::pin!(idle);
    tracing::debug!(?serializer, "socket connected");
    ::metrics::gauge!(crate::metrics::SOCKETS, "transport" => "websocket").increment(1.0);
    // Created once: a fresh cancellation future per loop turn would cost a lock and a
    // registration on every wake-up of a busy socket.
    let close_requested = close_signal.requested();
    tokio::pin!(close_requested);

    // Frames the client sent with its handshake are read before waiting for more.
    let mut buffered = !read_buf.is_empty();
    // The client's close frame, echoed back as RFC 6455 suggests.
    let mut echo: Option<WsClose> = None;
    // A close frame without a code is still the client closing.
    let mut client_closed = false;
    let reason: Option<CloseReason> = 'conn: loop {
        tokio::select! {
            // Fixed order, cheapest and most urgent first (no random start per wake-up).
            biased;
            reason = &mut close_requested => break Some(reason),
            e = std::future::poll_fn(|cx| writer.poll_write(cx, &stream, &mut frames)) => {
                tracing::debug!(error = %e, "connection lost while writing");
                break None;
            }
            Some(event) = events.next() => socket.on_exit(*event),
            Some(b) = recv_id(&mut id_rx) => {
                if b.event == crate::protocol::events::DISCONNECT {
                    tracing::info!("disconnect broadcast on the socket id");
                    break Some(CloseReason::Disconnected);
                }
            }
            _ = &mut idle => {
                tracing::info!(timeout_ms = heartbeat_timeout_ms, "heartbeat timeout");
                break Some(CloseReason::HeartbeatTimeout);
            }
            ready = readable(&stream, buffered) => {
                if let Err(e) = ready {
                    tracing::debug!(error = %e, "connection lost");
                    break None;
                }
                if !std::mem::take(&mut buffered) {
                    read_buf.reserve(READ_CHUNK);
                    match stream.try_read_buf(&mut read_buf) {
                        Ok(0) => break None,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if read_buf.is_empty() {
                                read_buf = BytesMut::new();
                            }
                            continue;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "connection lost");
                            break None;
                        }
                    }
                }
                idle.as_mut().reset(Instant::now() + timeout);
                loop {
                    let decoded = match reader.next(&mut read_buf) {
                        Ok(None) => break,
                        Err(reason) => break 'conn Some(reason),
                        Ok(Some(Incoming::Text(text))) => {
                            ::metrics::counter!(crate::metrics::BYTES_IN).increment(text.len() as u64);
                            serializer.decode_text(&text)
                        }
                        Ok(Some(Incoming::Binary(bin))) => {
                            ::metrics::counter!(crate::metrics::BYTES_IN).increment(bin.len() as u64);
                            serializer.decode_binary(&bin)
                        }
                        Ok(Some(Incoming::Ping(p))) => {
                            writer.pong(&p);
                            continue;
                        }
                        Ok(Some(Incoming::Close(theirs))) => {
                            echo = theirs;
                            client_closed = true;
                            break 'conn None;
                        }
                    };
                    match decoded {
                        // Boxed: handling (a join) has large futures, and the task keeps the
                        // size of its largest state while the socket lives.
                        Ok(message) => Box::pin(socket.handle(message)).await,
                        Err(e) => {
                            ::metrics::counter!(crate::metrics::MESSAGES_IN, "kind" => "malformed").increment(1);
                            tracing::info!(error = %e, "malformed frame");
                            break 'conn Some(CloseReason::MalformedFrame);
                        }
                    }
                }
                if read_buf.is_empty() {
                    // An idle socket keeps no read buffer.
                    read_buf = BytesMut::new();
                }
            }
        }
    };
    socket.close();
    drop(socket);
    tracing::debug!(reason = ?reason, "socket closed");
    ::metrics::gauge!(crate::metrics::SOCKETS, "transport" => "websocket").decrement(1.0);
    let why = match reason {
        Some(r) => r.label(),
        None if client_closed => "client",
        None => "connection_lost",
    };
    ::metrics::counter!(crate::metrics::SOCKET_CLOSES, "reason" => why).increment(1);
    let close = match reason {
        Some(r) => Some(WsClose {
            code: CloseCode::from(r.code()),
            description: Some(match r {
                // Says which limit, so a client author can tell what to change.
                CloseReason::FrameTooLarge | CloseReason::MessageTooLarge => {
                    format!("{}: over {} bytes", r.text(), max_frame_bytes)
                }
                _ => r.text().into(),
            }),
        }),
        None if client_closed => echo.map(|theirs| WsClose {
            code: theirs.code,
            description: None,
        }),
        // The connection is gone: nothing to say.
        None => return,
    };
    writer.close(&mut frames, close);
    drop(frames);
    // A client that does not read could keep the close pending forever: bound it.
    let closed = async {
        writer.flush(&stream).await?;
        stream.shutdown().await
    };
    if let Err(e) = Box::pin(tokio::time::timeout(CLOSE_WAIT, closed))
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    {
        tracing::debug!(error = %e, "close frame not delivered");
    }
}

/// Ready when the connection has bytes to read, or at once when bytes are already buffered.
/// Polls the stream's own readiness slot (this task is its only reader) rather than queueing
/// a waiter on every wake-up.
fn readable(stream: &TcpStream, buffered: bool) -> impl Future<Output = io::Result<()>> + '_ {
    std::future::poll_fn(move |cx| {
        if buffered {
            return Poll::Ready(Ok(()));
        }
        stream.poll_read_ready(cx)
    })
}
