//! Transports: how frames get between clients and [`crate::socket::Socket`].

pub mod connect;
pub mod longpoll;
pub mod relay;
pub mod websocket;
pub mod ws_writer;

use serde_json::{Map, Value};

/// Parses a query string into connect params, Plug-style: for a repeated key the last value wins.
pub fn parse_params(query: &str) -> Map<String, Value> {
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_last_wins_and_decode() {
        let p = parse_params("token=a&user%5Bid%5D=1&vsn=2.0.0&&token=b");
        assert_eq!(p["token"], "b");
        assert_eq!(p["user[id]"], "1");
        assert_eq!(p["vsn"], "2.0.0");
        assert_eq!(p.len(), 3);
    }
}
