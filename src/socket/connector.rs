//! Socket connect: turning connect params into socket assigns and an id, or refusing.

use std::net::SocketAddr;

use async_trait::async_trait;
use serde_json::{Map, Value};

/// What a connect decision can look at.
#[derive(Debug, Clone, Default)]
pub struct ConnectInfo {
    /// Query-string params (the last value wins for a repeated key, as in Plug).
    pub params: Map<String, Value>,
    /// The peer address.
    pub peer: Option<SocketAddr>,
    /// The `Origin` header.
    pub origin: Option<String>,
    /// The token phoenix.js sends with its `authToken` option (via `Sec-WebSocket-Protocol`).
    pub auth_token: Option<String>,
}

/// An accepted connection.
#[derive(Debug, Clone, Default)]
pub struct Connected {
    /// Socket id for targeted disconnects, e.g. `users_socket:42`.
    pub id: Option<String>,
    /// Socket assigns, visible to every channel of the socket.
    pub assigns: Map<String, Value>,
}

/// A refused connection (HTTP 403), with the reason for the logs.
#[derive(Debug, Clone, thiserror::Error)]
#[error("connection refused: {0}")]
pub struct Refused(pub String);

/// Decides whether a socket may connect (Phoenix's `connect/3` and `id/1`).
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// Accepts or refuses a connection.
    async fn connect(&self, info: &ConnectInfo) -> Result<Connected, Refused>;
}

/// Accepts every socket; its connect params (minus `vsn`) become its assigns, and its id
/// comes from a template such as `users_socket:{user_id}`.
#[derive(Debug, Clone, Default)]
pub struct ParamsConnector {
    id_template: String,
}

impl ParamsConnector {
    /// A connector with the given id template (empty: no ids).
    pub fn new(id_template: impl Into<String>) -> Self {
        Self {
            id_template: id_template.into(),
        }
    }

    fn id_for(&self, params: &Map<String, Value>) -> Option<String> {
        if self.id_template.is_empty() {
            return None;
        }
        let mut out = String::new();
        let mut rest = self.id_template.as_str();
        while let Some(start) = rest.find('{') {
            let end = rest[start..].find('}')? + start;
            out.push_str(&rest[..start]);
            match params.get(&rest[start + 1..end])? {
                Value::String(s) if !s.is_empty() => out.push_str(s),
                Value::Number(n) => out.push_str(&n.to_string()),
                _ => return None,
            }
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Some(out)
    }
}

#[async_trait]
impl Connector for ParamsConnector {
    async fn connect(&self, info: &ConnectInfo) -> Result<Connected, Refused> {
        let mut assigns = info.params.clone();
        assigns.remove("vsn");
        Ok(Connected {
            id: self.id_for(&assigns),
            assigns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn id_template() {
        let c = ParamsConnector::new("users_socket:{user_id}");
        let p = json!({"user_id": "42"}).as_object().cloned().unwrap();
        assert_eq!(c.id_for(&p).as_deref(), Some("users_socket:42"));
        assert_eq!(c.id_for(&Map::new()), None);
        assert_eq!(ParamsConnector::new("").id_for(&p), None);
        assert_eq!(ParamsConnector::new("s:{user_id").id_for(&p), None);
    }
}
