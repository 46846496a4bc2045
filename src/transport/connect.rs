//! The connect checks both transports share: draining, `vsn`, origin, connection rate, the
//! connect policy and the admission limits, in that order, logged and counted once here.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::HttpRequest;
use serde_json::{Map, Value};

use crate::gateway::Gateway;
use crate::limits::{Admission, Refusal};
use crate::protocol::Serializer;
use crate::socket::{ConnectInfo, Connected};

/// An accepted connection: its serializer, what the connect policy decided, and its place
/// in the admission limits (released when dropped).
pub struct Accepted {
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
pub enum Refused {
    /// The node is draining.
    Draining,
    /// Missing support for the requested `vsn`, or a disallowed origin, or the connect
    /// policy said no.
    Forbidden,
    /// An admission limit.
    Limited(Refusal),
}

fn counted(result: &'static str) {
    ::metrics::counter!(crate::metrics::CONNECTS, "result" => result).increment(1);
}

/// Counts a connection that failed after the checks (e.g. a broken WebSocket handshake).
pub fn count_error() {
    counted("error");
}

/// Runs the checks for a connect request with query `params` and `auth_token`.
pub async fn accept(
    req: &HttpRequest,
    gateway: &Arc<Gateway>,
    params: Map<String, Value>,
    auth_token: Option<String>,
) -> Result<Accepted, Refused> {
    let refused = |why: Refused| {
        counted("refused");
        if let Refused::Limited(r) = &why {
            tracing::info!(limit = r.label(), "connect refused by a limit");
            ::metrics::counter!(crate::metrics::LIMITED, "limit" => r.label()).increment(1);
        }
        Err(why)
    };
    if gateway.shutdown.is_cancelled() {
        return refused(Refused::Draining);
    }
    let vsn = match params.get("vsn") {
        None => None,
        Some(Value::String(v)) => Some(v.as_str()),
        Some(_) => return refused(Refused::Forbidden),
    };
    let Some(serializer) = Serializer::negotiate(vsn) else {
        tracing::warn!(vsn = ?vsn, "connect refused: unsupported vsn");
        return refused(Refused::Forbidden);
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
    if !gateway
        .settings
        .socket
        .check_origin
        .allows(origin.as_deref(), host)
    {
        tracing::info!(origin = ?origin, "connect refused: origin not allowed");
        return refused(Refused::Forbidden);
    }
    if let Err(r) = gateway.limits.check_rate(req.peer_addr().map(|a| a.ip())) {
        return refused(Refused::Limited(r));
    }
    let info = ConnectInfo {
        params,
        peer: req.peer_addr(),
        origin,
        auth_token,
    };
    let connected = match gateway.connector.connect(&info).await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(reason = %e.0, "connect refused");
            return refused(Refused::Forbidden);
        }
    };
    let admission = match gateway.limits.admit(connected.id.as_deref()) {
        Ok(a) => a,
        Err(r) => return refused(Refused::Limited(r)),
    };
    counted("ok");
    Ok(Accepted {
        serializer,
        connected,
        admission,
        peer_ip: req.peer_addr().map(|a| a.ip()),
    })
}
