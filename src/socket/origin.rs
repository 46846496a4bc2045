//! Origin checking (Phoenix's `check_origin`) and the phoenix.js `authToken` subprotocol.

use crate::config::CheckOrigin;
use base64::Engine;

struct Parsed<'a> {
    scheme: Option<&'a str>,
    host: &'a str,
    port: Option<&'a str>,
}

fn parse(origin: &str) -> Option<Parsed<'_>> {
    let (scheme, rest) = match origin.split_once("//") {
        Some(("", rest)) => (None, rest),
        Some((scheme, rest)) => (Some(scheme.strip_suffix(':')?), rest),
        None => return None,
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (authority, None),
    };
    (!host.is_empty()).then_some(Parsed { scheme, host, port })
}

fn matches(pattern: &str, origin: &Parsed<'_>) -> bool {
    let Some(p) = parse(pattern.trim()) else {
        return false;
    };
    if p.scheme
        .is_some_and(|s| !origin.scheme.is_some_and(|o| o.eq_ignore_ascii_case(s)))
    {
        return false;
    }
    if p.port.is_some() && p.port != origin.port {
        return false;
    }
    match p.host.strip_prefix("*.") {
        Some(domain) => {
            let host = origin.host.to_ascii_lowercase();
            let domain = domain.to_ascii_lowercase();
            host == domain || host.ends_with(&format!(".{domain}"))
        }
        None => p.host.eq_ignore_ascii_case(origin.host),
    }
}

/// Whether a socket with this `Origin` header, sent to this `Host`, may connect under `check`.
pub(crate) fn allows(check: &CheckOrigin, origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin else { return true };
    let Some(parsed) = parse(origin) else {
        return false;
    };
    match check {
        CheckOrigin::Enabled(false) => true,
        CheckOrigin::Enabled(true) => host.is_some_and(|h| {
            let origin_authority = match parsed.port {
                Some(p) => format!("{}:{p}", parsed.host),
                None => parsed.host.to_owned(),
            };
            h.eq_ignore_ascii_case(&origin_authority) || h.eq_ignore_ascii_case(parsed.host)
        }),
        CheckOrigin::List(list) => list.iter().any(|p| matches(p, &parsed)),
        CheckOrigin::Text(text) => text
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .any(|p| matches(p, &parsed)),
    }
}

/// The prefix phoenix.js puts before the base64 of `authToken` in `Sec-WebSocket-Protocol`.
pub(crate) const AUTH_TOKEN_PREFIX: &str = "base64url.bearer.phx.";

/// Extracts the `authToken` phoenix.js sends as a subprotocol. Despite the name the client
/// uses standard base64 (`btoa`) without padding; URL-safe and padded forms are accepted too.
pub(crate) fn auth_token(protocols: &str) -> Option<String> {
    let encoded = protocols
        .split(',')
        .map(str::trim)
        .find_map(|p| p.strip_prefix(AUTH_TOKEN_PREFIX))?;
    let trimmed = encoded.trim_end_matches('=');
    let engines = [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    engines
        .iter()
        .find_map(|e| e.decode(trimmed).ok())
        .and_then(|b| String::from_utf8(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_origin_is_always_allowed_and_true_means_same_host() {
        let check = CheckOrigin::default();
        assert!(allows(&check, None, Some("gw.example.com")));
        assert!(allows(
            &check,
            Some("https://gw.example.com"),
            Some("gw.example.com")
        ));
        assert!(allows(
            &check,
            Some("http://localhost:4000"),
            Some("localhost:4000")
        ));
        assert!(!allows(
            &check,
            Some("https://evil.com"),
            Some("gw.example.com")
        ));
        assert!(!allows(&check, Some("null"), Some("gw.example.com")));
        assert!(allows(
            &CheckOrigin::Enabled(false),
            Some("https://evil.com"),
            Some("x")
        ));
    }

    #[test]
    fn lists_with_schemes_wildcards_and_ports() {
        let check = CheckOrigin::List(vec![
            "https://app.example.com".into(),
            "//*.other.com".into(),
            "http://localhost:3000".into(),
        ]);
        assert!(allows(&check, Some("https://app.example.com"), None));
        assert!(
            !allows(&check, Some("http://app.example.com"), None),
            "scheme must match"
        );
        assert!(allows(&check, Some("http://a.b.other.com"), None));
        assert!(allows(&check, Some("https://other.com:8443"), None));
        assert!(!allows(&check, Some("https://notother.com"), None));
        assert!(allows(&check, Some("http://localhost:3000"), None));
        assert!(
            !allows(&check, Some("http://localhost:3001"), None),
            "port must match when given"
        );
        let text = CheckOrigin::Text("https://a.com, //b.com".into());
        assert!(
            allows(&text, Some("https://a.com"), None) && allows(&text, Some("http://b.com"), None)
        );
        assert!(!allows(&text, Some("https://c.com"), None));
    }

    #[test]
    fn auth_token_from_subprotocols() {
        // btoa("SFMyNTY.g2gD") without "=" padding, as phoenix.js sends it.
        let header = "phoenix, base64url.bearer.phx.U0ZNeU5UWS5nMmdE";
        assert_eq!(auth_token(header).as_deref(), Some("SFMyNTY.g2gD"));
        assert_eq!(
            auth_token("phoenix, base64url.bearer.phx.YQ==").as_deref(),
            Some("a")
        );
        assert_eq!(
            auth_token("phoenix, base64url.bearer.phx.Pz8-").as_deref(),
            Some("??>"),
            "URL-safe accepted"
        );
        assert_eq!(auth_token("phoenix"), None);
        assert_eq!(auth_token("base64url.bearer.phx.!!!"), None);
    }
}
