//! What a channel can do: reply, push, broadcast, track presence, keep assigns.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{Map, Value};

use super::SocketInfo;
use crate::outbox::Outbox;
use crate::presence::counts::{companion, Watch};
use crate::presence::{Counts, Meta, Presence, PresenceError};
use crate::protocol::{events, Frame, Outbound, Payload, Ref};
use crate::pubsub::{
    Broadcast, Gate, PubSub, PubSubError, Replay, Retention, Since, Subscriber, SubscriberId,
};

/// The node's services a channel works with.
pub struct Services {
    /// Broadcast delivery.
    pub pubsub: Arc<dyn PubSub>,
    /// Presence tracking.
    pub presence: Arc<dyn Presence>,
    /// Counting rooms over `presence`.
    pub counts: Arc<Counts>,
}

/// The state and capabilities of one channel incarnation, owned by its actor.
pub struct Context {
    topic: String,
    join_ref: Ref,
    socket: Arc<SocketInfo>,
    /// Per-channel assigns: starts as a copy of the socket's assigns.
    pub assigns: Map<String, Value>,
    outbox: Outbox,
    pubsub: Arc<dyn PubSub>,
    presence: Arc<dyn Presence>,
    id: SubscriberId,
    gate: Arc<Gate>,
    /// The topic's history bounds (the channel's `history()`), given to its broadcasts.
    retention: Option<Retention>,
    counts: Arc<Counts>,
    /// Count-only presence (the channel's `presence_counts()`); boxed, so that the channels
    /// of other routes carry one pointer for it.
    counting: Option<Box<Counting>>,
}

/// A counting room member's part: its presences are tracked under the topic's companion
/// (named when needed: a big room's members would each hold the name).
struct Counting {
    /// The least time between two counts.
    interval: Duration,
    /// This member's interest in the room's count, once it got the first one.
    watch: OnceLock<Watch>,
}

impl Context {
    pub(crate) fn new(
        topic: String,
        join_ref: Ref,
        socket: Arc<SocketInfo>,
        outbox: Outbox,
        services: Services,
        id: SubscriberId,
    ) -> Self {
        let Services {
            pubsub,
            presence,
            counts,
        } = services;
        let assigns = socket.assigns.clone();
        Self {
            topic,
            join_ref,
            socket,
            assigns,
            outbox,
            pubsub,
            presence,
            id,
            gate: Arc::new(Gate::new()),
            retention: None,
            counts,
            counting: None,
        }
    }

    pub(crate) fn set_retention(&mut self, retention: Option<Retention>) {
        self.retention = retention;
    }

    pub(crate) fn set_presence_counts(&mut self, interval: Option<Duration>) {
        self.counting = interval.map(|interval| {
            Box::new(Counting {
                interval,
                watch: OnceLock::new(),
            })
        });
    }

    /// Where this channel's presences are tracked: the topic, or its counting companion.
    fn presence_topic(&self) -> Cow<'_, str> {
        match &self.counting {
            Some(_) => Cow::Owned(companion(&self.topic)),
            None => Cow::Borrowed(&self.topic),
        }
    }

    /// Reads the topic's history (after subscribing; see [`crate::pubsub::PubSub::history`]).
    pub(crate) async fn history(
        &self,
        retention: Retention,
        since: &Since,
    ) -> Result<Replay, PubSubError> {
        self.pubsub.history(&self.topic, retention, since).await
    }

    /// The channel's topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The `ref` of the join that created this incarnation.
    pub fn join_ref(&self) -> &Ref {
        &self.join_ref
    }

    /// The socket this channel belongs to.
    pub fn socket(&self) -> &SocketInfo {
        &self.socket
    }

    /// This incarnation's subscriber id (also its presence owner id).
    pub fn id(&self) -> SubscriberId {
        self.id
    }

    pub(crate) fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Replies to the client message `msg_ref` (for replies sent later than `handle_in`).
    pub fn reply(&self, msg_ref: &Ref, status: &str, response: &Payload) {
        self.outbox.send(&Outbound::Reply {
            join_ref: &self.join_ref,
            msg_ref,
            topic: &self.topic,
            status,
            response,
        });
    }

    /// Pushes an event to this client only: `[join_ref, null, topic, event, payload]`.
    pub fn push(&self, event: &str, payload: &Payload) {
        let null = Value::Null;
        self.outbox.send(&Outbound::Event {
            join_ref: &self.join_ref,
            msg_ref: &null,
            topic: &self.topic,
            event,
            payload,
        });
    }

    pub(crate) fn send_control(&self, event: &str, payload: &Payload) {
        self.outbox.send(&Outbound::Event {
            join_ref: &self.join_ref,
            msg_ref: &self.join_ref,
            topic: &self.topic,
            event,
            payload,
        });
    }

    /// Broadcasts to every subscriber of the topic, this client included.
    pub fn broadcast(&self, event: &str, payload: Payload) {
        self.pubsub.broadcast(self.message(event, payload), None);
    }

    /// Broadcasts to every subscriber of the topic except this channel.
    pub fn broadcast_from(&self, event: &str, payload: Payload) {
        self.pubsub
            .broadcast(self.message(event, payload), Some(self.id));
    }

    fn message(&self, event: &str, payload: Payload) -> Arc<Broadcast> {
        let mut msg = Broadcast::new(self.topic.clone(), event, payload);
        msg.retention = self.retention;
        Arc::new(msg)
    }

    /// Tracks a presence for this channel under `key`; it leaves when the channel ends.
    pub async fn track(&self, key: &str, meta: Meta) -> Result<String, PresenceError> {
        self.presence
            .track(&self.presence_topic(), key, self.id, meta)
            .await
    }

    /// Replaces the meta of this channel's presence under `key`.
    pub async fn update_presence(&self, key: &str, meta: Meta) -> Result<String, PresenceError> {
        self.presence
            .update(&self.presence_topic(), key, self.id, meta)
            .await
    }

    /// Stops tracking this channel's presence under `key`.
    pub async fn untrack(&self, key: &str) -> Result<(), PresenceError> {
        self.presence
            .untrack(&self.presence_topic(), key, self.id)
            .await
    }

    /// The presences on this topic, in the `presence_state` shape.
    pub async fn presence_list(&self) -> Value {
        self.presence.list(&self.presence_topic()).await
    }

    /// Pushes `presence_state` (the full list) to this client. From then on the client
    /// gets exactly the presence changes after this snapshot. Pushed from
    /// [`super::Channel::after_join`], it is the first thing after the join reply:
    /// broadcasts are held until then.
    ///
    /// On a counting route (`presence = "counts"`) it pushes `presence_count` instead, and
    /// from then on this client gets the room's count whenever it changes.
    pub async fn push_presence_state(&self) {
        if let Some(counting) = &self.counting {
            return self.push_presence_count(counting).await;
        }
        let snapshot = self.presence.snapshot(&self.topic).await;
        self.open_with(
            events::PRESENCE_STATE,
            &Payload::Encoded(snapshot.state),
            snapshot.seq,
        );
    }

    /// Opens the gate with `event` pushed first (the joiner's snapshot of the room).
    fn open_with(&self, event: &str, payload: &Payload, seq: Option<u64>) {
        let null = Value::Null;
        let push = Outbound::Event {
            join_ref: &self.join_ref,
            msg_ref: &null,
            topic: &self.topic,
            event,
            payload,
        };
        ::metrics::counter!(crate::metrics::MESSAGES_OUT, "kind" => "push").increment(1);
        match self.outbox.serializer().encode(&push) {
            Ok(frame) => self.gate.open(&self.outbox, Some(frame), seq),
            Err(e) => tracing::warn!(error = %e, event, "cannot encode a push for this socket"),
        }
    }

    async fn push_presence_count(&self, counting: &Counting) {
        let watch = counting
            .watch
            .get_or_init(|| self.counts.watch(&self.topic, counting.interval));
        let Some(count) = watch.current().await else {
            tracing::warn!(topic = %self.topic, "no presence count yet: the next change brings it");
            self.gate.open(&self.outbox, None, None);
            return;
        };
        let payload = Payload::Json(serde_json::json!(count));
        self.open_with(events::PRESENCE_COUNT, &payload, None);
    }

    /// Waits until this node's presence changes on the topic so far are published: a
    /// snapshot taken after holds them (e.g. the channel's own presence, for apps that
    /// track before pushing `presence_state`).
    pub async fn presence_flushed(&self) {
        self.presence.flushed(&self.presence_topic()).await;
    }

    /// Releases the broadcasts held since the join (nothing to push first).
    pub(crate) fn open_gate(&self) {
        if !self.gate.is_open() {
            self.gate.open(&self.outbox, None, None);
        }
    }

    /// This channel's gate (see [`crate::pubsub::Gate`]).
    pub(crate) fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    pub(crate) async fn pubsub_subscribe(
        &self,
        sub: Subscriber,
        first: Option<Frame>,
    ) -> Result<(), PubSubError> {
        self.pubsub.subscribe(&self.topic, sub, first).await
    }

    pub(crate) async fn cleanup(&self) {
        self.pubsub.unsubscribe(&self.topic, self.id);
        self.presence
            .untrack_owner(&self.presence_topic(), self.id)
            .await;
    }
}
