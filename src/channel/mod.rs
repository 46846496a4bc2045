//! Channels: the per-topic conversation between one socket and the gateway.
//!
//! A [`Channel`] implementation decides what happens on join, on each client event and on
//! each outgoing broadcast it intercepts. Each joined (socket, topic) runs as its own actor
//! task ([`server`]) that owns the channel value and its [`Context`]. [`router`] maps topic
//! patterns to channel factories and [`builtin`] provides the config-driven channel the
//! gateway binary ships.

pub mod builtin;
mod context;
pub mod router;
pub(crate) mod server;
pub mod webhook;

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::protocol::Payload;

pub use context::{Context, Services};

/// What channels know about the socket they belong to.
#[derive(Debug, Clone)]
pub struct SocketInfo {
    /// The socket id (e.g. `users_socket:42`); a `disconnect` broadcast on it closes the socket.
    pub id: Option<String>,
    /// Assigns set at connect (by default the connect params, `vsn` excluded).
    pub assigns: serde_json::Map<String, Value>,
    /// The negotiated serializer.
    pub serializer: crate::protocol::Serializer,
    /// The client's address, when known (per-IP join limits).
    pub peer_ip: Option<std::net::IpAddr>,
}

/// The sending side of a socket's exit queue (one per socket, shared by its channels).
pub type ExitSender = futures_channel::mpsc::UnboundedSender<Box<ChannelExit>>;

/// The socket's side of its exit queue.
pub type ExitReceiver = futures_channel::mpsc::UnboundedReceiver<Box<ChannelExit>>;

/// A socket's exit queue. Most sockets never see an exit while connected, so the queue
/// allocates nothing until one is sent.
pub fn exit_queue() -> (ExitSender, ExitReceiver) {
    futures_channel::mpsc::unbounded()
}

/// A channel actor's last word to its socket: it ended (left, stopped, crashed or refused
/// its join), so the socket can forget it.
#[derive(Debug)]
pub struct ChannelExit {
    /// Its topic.
    pub topic: String,
    /// The join_ref of the incarnation that ended.
    pub join_ref: crate::protocol::Ref,
}
pub use router::{ChannelFactory, PatternError, Router, TopicPattern};

/// What a channel answers to a client event.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Reply to the pusher with a status (`ok`, `error`, or any other string) and a response.
    Reply {
        /// Reply status.
        status: String,
        /// Reply body.
        response: Payload,
    },
    /// No reply (the client's push times out unless the channel replies later).
    NoReply,
    /// End the channel (`phx_close`), after an optional final reply.
    Stop {
        /// Reply sent before the channel closes.
        reply: Option<(String, Payload)>,
    },
}

impl Reply {
    /// `ok` with a JSON response.
    pub fn ok(response: Value) -> Self {
        Reply::Reply {
            status: "ok".into(),
            response: Payload::Json(response),
        }
    }

    /// `error` with a JSON response, conventionally `{"reason": ...}`.
    pub fn error(response: Value) -> Self {
        Reply::Reply {
            status: "error".into(),
            response: Payload::Json(response),
        }
    }

    /// The reply to an event no handler knows: the channel stays joined. (Phoenix would
    /// crash the channel and make the client rejoin.)
    pub fn unhandled() -> Self {
        Reply::error(json!({"reason": "unhandled event"}))
    }
}

/// What to do with an intercepted outgoing broadcast for this subscriber.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// Push this payload to the client (as a channel push, with the channel's join_ref).
    Push(Payload),
    /// Do not send it to this client.
    Skip,
}

/// Why a channel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// The client left (`phx_leave`).
    Left,
    /// The channel stopped itself ([`Reply::Stop`]).
    Stopped,
    /// The client joined the topic again; this incarnation is replaced.
    DuplicateJoin,
    /// The socket closed.
    Closed,
}

/// A channel implementation: one value per joined (socket, topic).
///
/// Every method runs inside the channel's actor task. A panic in any of them is caught:
/// the client gets `phx_error` and the socket and its other channels live on.
#[async_trait]
pub trait Channel: Send + 'static {
    /// Decides a join. `Ok(response)` joins and replies `ok`; `Err(response)` refuses
    /// (conventionally `{"reason": ...}`).
    async fn join(&mut self, ctx: &mut Context, payload: Payload) -> Result<Value, Value>;

    /// Runs right after the join reply was queued: the place to push initial state and to
    /// track presence (Phoenix apps do this in `handle_info(:after_join, ...)`).
    async fn after_join(&mut self, _ctx: &mut Context) {}

    /// Handles a client event.
    async fn handle_in(&mut self, _ctx: &mut Context, _event: &str, _payload: Payload) -> Reply {
        Reply::unhandled()
    }

    /// The topic's history (docs/history.md): with `Some`, every broadcast of this channel
    /// is kept within these bounds and gets a position, and a join may ask for
    /// `history: {last: N}` or `history: {since: position}`.
    fn history(&self) -> Option<crate::pubsub::Retention> {
        None
    }

    /// Count-only presence: with `Some(interval)` the topic's presences are tracked out of
    /// the members' sight and members get `presence_count` (at most once per interval)
    /// instead of `presence_state`/`presence_diff` (see `presence::counts`).
    fn presence_counts(&self) -> Option<std::time::Duration> {
        None
    }

    /// Events whose broadcasts go through [`Channel::handle_out`] instead of the fastlane.
    fn intercepts(&self) -> Vec<String> {
        Vec::new()
    }

    /// Filters or rewrites an intercepted broadcast for this subscriber.
    async fn handle_out(
        &mut self,
        _ctx: &mut Context,
        _event: &str,
        payload: &Payload,
    ) -> Outgoing {
        Outgoing::Push(payload.clone())
    }

    /// Runs when the channel ends, before its presences are removed.
    async fn terminate(&mut self, _ctx: &mut Context, _why: Termination) {}
}
