//! Connect-token verification (and minting, for tests and the CLI).
//!
//! Two token kinds are supported:
//!
//! - [`PhoenixToken`]: tokens produced by Elixir's `Phoenix.Token.sign/4` (Plug.Crypto's
//!   `MessageVerifier` format: `SFMyNTY.<ETF payload>.<HMAC>`), so a Phoenix app can keep
//!   minting the tokens it already hands to its clients. See PROTOCOL.md §11.
//! - [`JwtVerifier`]: JSON Web Tokens signed with HS256, RS256 or ES256, with the algorithm
//!   pinned by configuration.
//!
//! Every input path treats the token as hostile: no panics, bounded allocation and recursion,
//! constant-time MAC comparison, and error messages that never contain key material.

pub mod jwt;
mod keys;
pub mod phoenix_token;

pub use jwt::{sign_hs256, JwtKey, JwtVerifier, DEFAULT_LEEWAY_S};
pub use keys::KeyError;
pub use phoenix_token::{MaxAge, PhoenixToken};

/// Why a connect token was rejected.
///
/// The `Display` text is safe to log: it names the failed check, never a secret or the token.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token was supplied (empty string).
    #[error("token missing")]
    Missing,
    /// The token is malformed, forged, signed with another key or algorithm, or carries data
    /// that cannot be represented; the string says which check failed.
    #[error("token invalid: {0}")]
    Invalid(String),
    /// The token was genuine but its age exceeds the allowed maximum.
    #[error("token expired")]
    Expired,
    /// A configured JWT public key is unusable (only when building a [`JwtVerifier`]).
    #[error("unusable JWT key: {0}")]
    Key(#[from] KeyError),
}

impl TokenError {
    /// Shorthand used throughout the module: the reasons are fixed texts chosen by us, which is
    /// what guarantees that no secret or token content ever ends up in an error message.
    pub(crate) fn invalid(reason: &str) -> Self {
        TokenError::Invalid(reason.to_owned())
    }
}

/// Upper bound on the length of a token we are willing to look at. Phoenix has no such limit,
/// but tokens arrive in URLs and headers; refusing oversized input early bounds the work a
/// hostile client can cause before any cryptography runs.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;
