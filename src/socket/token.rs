//! The token connect policy: a socket must present a valid Phoenix.Token or JWT; the token's
//! subject becomes the socket's `user_id` and its claims become assigns.

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use super::{ConnectInfo, Connected, Connector, ParamsConnector, Refused};
use crate::auth::{JwtKey, JwtVerifier, PhoenixToken, TokenError};
use crate::config::{AuthMode, AuthSettings, JwtAlgorithm};

/// Why the token connect policy cannot be built from the settings.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// `auth.mode` is `none`: there is nothing to verify.
    #[error("auth.mode is none")]
    NoMode,
    /// `phoenix_token` without `auth.secret_key_base`.
    #[error("auth.secret_key_base is not set")]
    NoSecret,
    /// A JWT algorithm without its key setting.
    #[error("no JWT key configured for the algorithm")]
    NoKey,
    /// A key file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key cannot be used.
    #[error("JWT key: {0}")]
    Key(#[from] TokenError),
}

enum Verifier {
    Phoenix {
        token: PhoenixToken,
        max_age: u64,
    },
    Jwt {
        verifier: JwtVerifier,
        user_id_claim: String,
    },
}

/// Verifies connect tokens (from the `authToken` subprotocol or the configured param).
pub struct TokenConnector {
    verifier: Verifier,
    param: String,
    ids: ParamsConnector,
}

impl TokenConnector {
    /// Builds the connector for `settings` (mode `phoenix_token` or `jwt`); `id_template`
    /// names socket ids as in [`ParamsConnector`].
    pub fn new(settings: &AuthSettings, id_template: &str) -> Result<Self, AuthSetupError> {
        let verifier = match settings.mode {
            AuthMode::None => return Err(AuthSetupError::NoMode),
            AuthMode::PhoenixToken => {
                let secret = settings
                    .secret_key_base
                    .as_ref()
                    .ok_or(AuthSetupError::NoSecret)?
                    .expose_secret();
                Verifier::Phoenix {
                    // A few seconds of clock skew between the app and the gateway hosts.
                    token: PhoenixToken::new(secret, &settings.salt).with_future_leeway_ms(5_000),
                    max_age: settings.max_age_s,
                }
            }
            AuthMode::Jwt => {
                let read = |p: &std::path::Path| {
                    std::fs::read(p).map_err(|source| AuthSetupError::Read {
                        path: p.to_owned(),
                        source,
                    })
                };
                let key = match (
                    settings.jwt_algorithm,
                    &settings.jwt_jwks_file,
                    &settings.jwt_public_key_file,
                ) {
                    (JwtAlgorithm::HS256, _, _) => {
                        let secret = settings.jwt_secret.as_ref().ok_or(AuthSetupError::NoKey)?;
                        JwtKey::Hs256(secret.expose_secret().as_bytes().to_vec())
                    }
                    (_, Some(jwks), _) => {
                        JwtKey::Jwks(String::from_utf8_lossy(&read(jwks)?).into_owned())
                    }
                    (JwtAlgorithm::RS256, None, Some(pem)) => JwtKey::Rs256Pem(read(pem)?),
                    (JwtAlgorithm::ES256, None, Some(pem)) => JwtKey::Es256Pem(read(pem)?),
                    _ => return Err(AuthSetupError::NoKey),
                };
                let verifier = JwtVerifier::new(
                    key,
                    settings.jwt_issuer.clone(),
                    settings.jwt_audience.clone(),
                    settings.jwt_leeway_s,
                )?;
                Verifier::Jwt {
                    verifier,
                    user_id_claim: settings.user_id_claim.clone(),
                }
            }
        };
        Ok(Self {
            verifier,
            param: settings.token_param.clone(),
            ids: ParamsConnector::new(id_template),
        })
    }
}

fn user_id_text(v: &Value) -> Option<Value> {
    match v {
        Value::String(s) if !s.is_empty() => Some(Value::String(s.clone())),
        Value::Number(n) => Some(Value::String(n.to_string())),
        _ => None,
    }
}

#[async_trait]
impl Connector for TokenConnector {
    async fn connect(&self, info: &ConnectInfo) -> Result<Connected, Refused> {
        let from_param = info.params.get(&self.param).cloned();
        let token = info
            .auth_token
            .clone()
            .or_else(|| from_param.and_then(|v| v.as_str().map(str::to_owned)))
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(Refused("missing token".into()));
        };
        let refused = |e: TokenError| Refused(e.to_string());
        let (user_id, claims): (Option<Value>, Map<String, Value>) = match &self.verifier {
            Verifier::Phoenix {
                token: verifier,
                max_age,
            } => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                match verifier
                    .verify(&token, Some(*max_age), now)
                    .map_err(refused)?
                {
                    Value::Object(map) => (
                        map.get("user_id")
                            .or_else(|| map.get("sub"))
                            .and_then(user_id_text),
                        map,
                    ),
                    other => (user_id_text(&other), Map::new()),
                }
            }
            Verifier::Jwt {
                verifier,
                user_id_claim,
            } => {
                let claims = verifier.verify(&token).map_err(refused)?;
                (claims.get(user_id_claim).and_then(user_id_text), claims)
            }
        };
        // Assigns come from the verified claims only: a connect param must never stand in
        // for a claim the token does not carry (e.g. `topics` for a claim route). The
        // client's own params stay readable, but only under `params`, marked as untrusted
        // by where they are.
        let mut assigns = claims;
        assigns.remove("user_id");
        if let Some(id) = user_id {
            assigns.insert("user_id".into(), id);
        }
        let mut params = info.params.clone();
        params.remove(&self.param);
        params.remove("vsn");
        if !params.is_empty() {
            // A `params` claim of the token wins over the client's.
            assigns
                .entry("params")
                .or_insert_with(|| Value::Object(params));
        }
        let mut connected = self
            .ids
            .connect(&ConnectInfo {
                params: assigns,
                ..Default::default()
            })
            .await?;
        connected.assigns.remove(&self.param);
        Ok(connected)
    }
}
