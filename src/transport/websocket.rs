//! The WebSocket transport (`/socket/websocket`), on actix-ws.
//!
//! One task per connection owns the reader, the heartbeat clock and the socket state; the
//! connection's response body writes the socket's queued frames ([`super::ws_writer`]). It runs on the actix worker's local set because actix-ws's stream is `!Send`.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, ProtocolError, Session};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::accept::{accept, count_error, Accepted, Rejected};
use super::parse_params;
use super::ws_writer::OutboundBody;
use super::Env;
use crate::channel::SocketInfo;
use crate::limits::Limit;
use crate::outbox::{outbox_bounded, CloseReason, CloseSignal, Outbox};
use crate::protocol::Serializer;
use crate::pubsub::Broadcast;
use crate::socket::{Connected, Socket};

/// The subprotocol phoenix.js offers alongside its auth token.
const PHOENIX_SUBPROTOCOL: &str = "phoenix";

/// How long the close frame may wait behind unsent frames.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Handles the upgrade request: negotiates the serializer, runs the connect policy and
/// starts the connection task. Refusals are HTTP 403 with an empty body, as in Phoenix.
pub(crate) async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    env: web::Data<Arc<Env>>,
) -> HttpResponse {
    let env = env.get_ref().clone();
    let protocols = req
        .headers()
        .get(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    if let Some(offered) = &protocols {
        if !offered.split(',').any(|p| p.trim() == PHOENIX_SUBPROTOCOL) {
            tracing::info!("connect refused: no supported subprotocol offered");
            ::metrics::counter!(crate::metrics::CONNECTS, "result" => "refused").increment(1);
            return HttpResponse::Forbidden().finish();
        }
    }
    let auth_token = protocols
        .as_deref()
        .and_then(crate::socket::origin::auth_token);
    let params = parse_params(req.query_string());
    let Accepted {
        serializer,
        connected,
        admission,
        peer_ip,
    } = match accept(&req, &env, params, auth_token).await {
        Ok(a) => a,
        // 503 tells the balancer to try another node; 429 asks the client to slow down.
        Err(Rejected::Draining | Rejected::Limited(Limit::NodeFull | Limit::NodeBusy)) => {
            return HttpResponse::ServiceUnavailable().finish()
        }
        Err(Rejected::Limited(_)) => return HttpResponse::TooManyRequests().finish(),
        Err(Rejected::Forbidden) => return HttpResponse::Forbidden().finish(),
    };
    match actix_ws::handle_with_protocols(&req, body, &[PHOENIX_SUBPROTOCOL]) {
        Ok((response, session, stream)) => {
            let (out_tx, out_rx) =
                outbox_bounded(serializer, super::queue_bounds(&env.socket.settings));
            let close_signal = out_rx.close_signal();
            // The connection drains the outbox itself (see `ws_writer`).
            let response = response
                .map_body(|_, control| OutboundBody::new(control, out_rx.rx))
                .map_into_boxed_body();
            let span = tracing::info_span!("socket", id = connected.id.as_deref().unwrap_or("-"));
            let conn = Conn {
                peer_ip,
                session,
                stream,
                out_tx,
                close_signal,
                _admission: admission,
            };
            actix_web::rt::spawn(run(env, serializer, connected, conn).instrument(span));
            response
        }
        Err(e) => {
            tracing::debug!(error = %e, "websocket handshake failed");
            count_error();
            HttpResponse::BadRequest().finish()
        }
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
    /// Control frames (pong, close); data frames go through the outbox.
    session: Session,
    stream: actix_ws::MessageStream,
    out_tx: Outbox,
    close_signal: CloseSignal,
    /// Holds the socket's place in the admission limits until the connection ends.
    _admission: crate::limits::Admission,
}

async fn run(env: Arc<Env>, serializer: Serializer, connected: Connected, conn: Conn) {
    let Conn {
        peer_ip,
        mut session,
        stream,
        out_tx,
        close_signal,
        _admission,
    } = conn;
    let limits = env.socket.settings.clone();
    let mut stream = stream
        .max_frame_size(limits.max_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(limits.max_frame_bytes);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let info = SocketInfo {
        id: connected.id,
        assigns: connected.assigns,
        serializer,
        peer_ip,
    };
    let mut socket = Socket::new(info, env.socket.clone(), out_tx, events_tx);
    let mut id_rx = socket.subscribe_id().await;
    let timeout = Duration::from_millis(limits.heartbeat_timeout_ms);
    let idle = tokio::time::sleep(timeout);
    tokio::pin!(idle);
    tracing::debug!(?serializer, "socket connected");
    ::metrics::gauge!(crate::metrics::SOCKETS, "transport" => "websocket").increment(1.0);
    // On shutdown each socket closes at its own random moment within the drain period, so
    // that clients reconnect to the other nodes gradually.
    let drain_share = rand::random::<f64>();
    let drained = async {
        env.drain.started().await;
        tokio::time::sleep(env.drain.period().mul_f64(drain_share)).await;
    };
    tokio::pin!(drained);
    // Created once: a fresh cancellation future per loop turn would cost a lock and a
    // registration on every wake-up of a busy socket.
    let close_requested = close_signal.requested();
    tokio::pin!(close_requested);

    // The client's close frame, echoed back as RFC 6455 suggests.
    let mut echo: Option<actix_ws::CloseReason> = None;
    // A close frame without a code is still the client closing.
    let mut client_closed = false;
    let reason: Option<CloseReason> = loop {
        tokio::select! {
            reason = &mut close_requested => break Some(reason),
            _ = &mut drained => break Some(CloseReason::Shutdown),
            Some(event) = events.recv() => socket.on_exit(*event),
            Some(b) = recv_id(&mut id_rx) => {
                if b.event == crate::protocol::events::DISCONNECT {
                    tracing::info!("disconnect broadcast on the socket id");
                    break Some(CloseReason::Disconnected);
                }
            }
            _ = &mut idle => {
                tracing::info!(timeout_ms = limits.heartbeat_timeout_ms, "heartbeat timeout");
                break Some(CloseReason::HeartbeatTimeout);
            }
            msg = stream.recv() => {
                idle.as_mut().reset(Instant::now() + timeout);
                let decoded = match msg {
                    None => break None,
                    Some(Ok(AggregatedMessage::Text(text))) => {
                        ::metrics::counter!(crate::metrics::BYTES_IN).increment(text.len() as u64);
                        serializer.decode_text(&text)
                    }
                    Some(Ok(AggregatedMessage::Binary(bin))) => {
                        ::metrics::counter!(crate::metrics::BYTES_IN).increment(bin.len() as u64);
                        serializer.decode_binary(&bin)
                    }
                    Some(Ok(AggregatedMessage::Ping(p))) => {
                        let _ = session.pong(&p).await;
                        continue;
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => continue,
                    Some(Ok(AggregatedMessage::Close(theirs))) => {
                        echo = theirs;
                        client_closed = true;
                        break None;
                    }
                    Some(Err(ProtocolError::Overflow)) => {
                        tracing::info!(max = limits.max_frame_bytes, "frame too large");
                        ::metrics::counter!(crate::metrics::LIMITED, "limit" => "frame_bytes").increment(1);
                        break Some(CloseReason::FrameTooLarge);
                    }
                    // actix-ws reports fragments over the limit as this I/O error.
                    Some(Err(ProtocolError::Io(e))) if e.kind() == std::io::ErrorKind::Other
                        && e.to_string().contains("continuation size") => {
                        tracing::info!(max = limits.max_frame_bytes, "fragmented message too large");
                        ::metrics::counter!(crate::metrics::LIMITED, "limit" => "message_bytes").increment(1);
                        break Some(CloseReason::MessageTooLarge);
                    }
                    Some(Err(ProtocolError::Io(e))) if e.kind() == std::io::ErrorKind::InvalidData => {
                        // e.g. a text frame that is not UTF-8
                        tracing::info!(error = %e, "malformed frame");
                        ::metrics::counter!(crate::metrics::MESSAGES_IN, "kind" => "malformed").increment(1);
                        break Some(CloseReason::MalformedFrame);
                    }
                    Some(Err(ProtocolError::Io(e))) => {
                        tracing::debug!(error = %e, "connection lost");
                        break None;
                    }
                    Some(Err(e)) => {
                        tracing::info!(error = %e, "websocket protocol error");
                        break Some(CloseReason::MalformedFrame);
                    }
                };
                match decoded {
                    Ok(message) => socket.handle(message).await,
                    Err(e) => {
                        ::metrics::counter!(crate::metrics::MESSAGES_IN, "kind" => "malformed").increment(1);
                        tracing::info!(error = %e, "malformed frame");
                        break Some(CloseReason::MalformedFrame);
                    }
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
        Some(r) => Some(actix_ws::CloseReason {
            code: CloseCode::from(r.code()),
            description: Some(match r {
                // Says which limit, so a client author can tell what to change.
                CloseReason::FrameTooLarge | CloseReason::MessageTooLarge => {
                    format!("{}: over {} bytes", r.text(), limits.max_frame_bytes)
                }
                _ => r.text().into(),
            }),
        }),
        None => echo.map(|theirs| actix_ws::CloseReason {
            code: theirs.code,
            description: None,
        }),
    };
    // A client that does not read could keep the close pending forever: bound it.
    let _ = tokio::time::timeout(CLOSE_WAIT, session.close(close)).await;
}
