//! The integration tests: one binary, one module per area, one `support`.
//!
//! Tests run as parallel threads of this one process, so anything process-wide is shared:
//! the log subscriber (installed once by `support::logs`) and the metrics recorder
//! (`phx_gateway::metrics`, compared before/after, never absolutely).

#[macro_use]
mod support;

/// Connect tokens (Phoenix.Token, JWT), claim-based joins, the `token` subcommand.
mod auth;
/// The command line: help, `config check`, fail-fast start-up.
mod cli;
/// Several nodes on one Redis: cross-node delivery, presence, node death, Redis faults.
mod cluster;
/// Faults under load: stalled readers, hanging webhooks, stalled networks, frozen Redis.
mod faults;
/// Per-topic history: replay racing live traffic.
mod history;
/// Hostile and broken input: every class gets its answer, is counted and logged.
mod hostile_input;
mod layering;
/// The long-poll transport, on one node and across nodes.
mod longpoll;
/// Operating a node: admin endpoints, readiness, draining, leaks.
mod operations;
/// Gateway nodes in a Phoenix app's cluster through Phoenix.PubSub.Redis.
mod phoenix_interop;
/// Presence over real sockets.
mod presence;
/// Count-only presence rooms: exact counts, never the list.
mod presence_counts;
/// Property tests of the decoders and encoders.
mod protocol_fuzz;
/// Redis Cluster and Sentinel topologies, failover under traffic.
mod redis_topologies;
/// Channels written in Rust.
mod rust_channels;
/// The claims of docs/security.md.
mod security;
/// The server API (/api/v1) against docs/openapi.json.
mod server_api;
/// The Phoenix protocol over a real WebSocket, frame by frame.
mod upgrade;
/// Backend webhooks for joins and events.
mod webhooks;
mod websocket_protocol;
