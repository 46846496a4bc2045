//! phx-gateway: a realtime gateway that speaks the Phoenix Channels protocol.
//!
//! Clients (phoenix.js and the other Phoenix clients) connect unchanged. Data flows one way:
//!
//! - [`transport`]: WebSocket endpoint; decodes frames and feeds the socket.
//! - [`socket`]: per-connection protocol state (heartbeats, joins, routing by topic) and the
//!   bounded outbound queue ([`socket::Outbox`]).
//! - [`channel`]: the [`channel::Channel`] trait, the per-channel actor, topic routing and
//!   the config-driven built-in channel.
//! - [`pubsub`]: broadcast delivery with the fastlane (encode once per serializer).
//! - [`presence`]: presence tracking and Phoenix-shaped `presence_state`/`presence_diff`.
//! - [`protocol`]: the wire formats (V1 JSON, V2 JSON, V2 binary); pure, no I/O.
//! - [`config`], [`gateway`], [`server`], [`telemetry`]: settings, wiring, HTTP server, logs.

pub mod admin;
pub mod api;
pub mod auth;
pub mod channel;
pub mod cluster;
pub mod config;
pub mod etf;
pub mod gateway;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod outbox;
pub mod presence;
pub mod protocol;
pub mod pubsub;
pub mod server;
pub mod shrink;
pub mod socket;
pub mod transport;

pub use gateway::Gateway;
