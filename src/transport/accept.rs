//! The connect checks both transports share: draining, `vsn`, origin, connection rate, the
//! connect policy and the admission limits, in that order, logged and counted once here.

use std::sync::Arc;

use actix_http::RequestHead;
use actix_web::http::header;
use serde_json::{Map, Value};

use super::Env;
use crate::limits::{Admission, Limit};
use crate::protocol::Serializer;
use crate::socket::{ConnectInfo, Connected};

/// An accepted connection: its serializer, what the connect policy decided, and its place
/// in the admission limits (released when dropped).
pub(crate) struct Accepted {
    /// Negotiated from `vsn`.
    pub serializer: Serializer,
    /// Socket id and assigns.
    pub connected: Connected,
    /// The socket's place in the limits.
    pub admission: Admission,
    /// The client's address (for per-IP join limits), when known.
    pub peer_ip: Option<std::net::IpAddr>,
}

/// Why a connection was refused. Transports map it to their own answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Rejected {
    /// The node is draining.
    Draining,
    /// Missing support for the requested `vsn`, or a disallowed origin, or the connect
    /// policy said no.
    Forbidden,
    /// An admission limit.
    Limited(Limit),
}

fn counted(result: &'static str) {
    ::metrics::counter!(crate::metrics::CONNECTS, "result" => result).increment(1);
}

/// Counts a connection that failed after the checks (e.g. a broken WebSocket handshake).
pub(crate) fn count_error() {
    counted("error");
}

/// Runs the checks for a connect request (its head: headers and peer address) with query
/// `params` and `auth_token`.
pub(crate) async fn accept(
    req: &RequestHead,
    env: &Arc<Env>,
    params: Map<String, Value>,
    auth_token: Option<String>,
) -> Result<Accepted, Rejected> {
    let rejected = |why: Rejected| {
        counted("refused");
        if let Rejected::Limited(r) = &why {
            tracing::info!(limit = r.label(), "connect refused by a limit");
            ::metrics::counter!(crate::metrics::LIMITED, "limit" => r.label()).increment(1);
        }
        Err(why)
    };
    if env.drain.is_draining() {
        return rejected(Rejected::Draining);
    }
    let vsn = match params.get("vsn") {
        None => None,
        Some(Value::String(v)) => Some(v.as_str()),
        Some(_) => return rejected(Rejected::Forbidden),
    };
    let Some(serializer) = Serializer::negotiate(vsn) else {
        tracing::warn!(vsn = ?vsn, "connect refused: unsupported vsn");
        return rejected(Rejected::Forbidden);
    };
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if !crate::socket::origin::allows(&env.socket.settings.check_origin, origin.as_deref(), host) {
        tracing::info!(origin = ?origin, "connect refused: origin not allowed");
        return rejected(Rejected::Forbidden);
    }
    if let Err(r) = env.limits.check_rate(req.peer_addr.map(|a| a.ip())) {
        return rejected(Rejected::Limited(r));
    }
    let info = ConnectInfo {
        params,
        peer: req.peer_addr,
        origin,
        auth_token,
    };
    let connected = match env.connector.connect(&info).await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(reason = %e.0, "connect refused");
            return rejected(Rejected::Forbidden);
        }
    };
    let admission = match env.limits.admit(connected.id.as_deref()) {
        Ok(a) => a,
        Err(r) => return rejected(Rejected::Limited(r)),
    };
    counted("ok");
    Ok(Accepted {
        serializer,
        connected,
        admission,
        peer_ip: req.peer_addr.map(|a| a.ip()),
    })
}
