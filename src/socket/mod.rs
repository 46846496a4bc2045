//! The socket: one client connection's protocol state, whatever the transport.
//!
//! A transport (WebSocket today, long-poll later) decodes client frames and hands each
//! [`Message`] to [`Socket::handle`], which applies Phoenix's dispatch rules: heartbeats,
//! joins (spawning a channel actor), leaves, and events routed to the joined channel.
//! Everything the client must receive goes through the socket's [`Outbox`].

mod connector;
pub(crate) mod origin;
mod token;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::channel::server::{self, ChannelHandle, ChannelMsg, JoinRequest};
use tokio_util::task::TaskTracker;

use crate::channel::{ChannelExit, Context, ExitSender, Router, Services, SocketInfo};
use crate::config::SocketSettings;
use crate::limits::Limits;
use crate::outbox::Outbox;
use crate::presence::Presence;
use crate::protocol::{events, Message, Outbound, Payload, Ref, HEARTBEAT_TOPIC};
use crate::pubsub::{next_subscriber_id, Broadcast, PubSub, Subscriber, SubscriberId};

pub use connector::{ConnectInfo, Connected, Connector, ParamsConnector, Refused};
pub use token::{AuthSetupError, TokenConnector};

/// What a socket needs from the gateway.
pub struct SocketEnv {
    /// Per-socket protocol settings and limits.
    pub settings: SocketSettings,
    /// Topic routes.
    pub router: Router,
    /// Broadcast delivery (local or cluster).
    pub pubsub: Arc<dyn PubSub>,
    /// Presence tracker (local or cluster).
    pub presence: Arc<dyn Presence>,
    /// Counting rooms (`presence = "counts"`) over `presence`.
    pub counts: Arc<crate::presence::Counts>,
    /// Join and message rate limits.
    pub limits: Arc<Limits>,
    /// Channel actors, so that shutdown can wait for their clean-up.
    pub channel_tasks: TaskTracker,
}

/// How long a replaced channel may take to stop before its task is aborted (as Phoenix).
const DUPLICATE_SHUTDOWN: Duration = Duration::from_secs(5);

/// The protocol state of one connection.
pub struct Socket {
    info: Arc<SocketInfo>,
    env: Arc<SocketEnv>,
    outbox: Outbox,
    events: ExitSender,
    channels: HashMap<String, ChannelHandle>,
    id_subscription: Option<SubscriberId>,
    /// Inbound message rate limit (heartbeats exempt).
    limiter: Option<crate::limits::MessageLimiter>,
}

impl Socket {
    /// A socket with no channels. Channel actors report to `events`.
    pub fn new(info: SocketInfo, env: Arc<SocketEnv>, outbox: Outbox, events: ExitSender) -> Self {
        let limiter = env.limits.message_limiter();
        Self {
            info: Arc::new(info),
            env,
            outbox,
            events,
            channels: HashMap::new(),
            id_subscription: None,
            limiter,
        }
    }

    /// What channels see of this socket.
    pub fn info(&self) -> &Arc<SocketInfo> {
        &self.info
    }

    /// Number of joined (or joining) channels.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Subscribes to the socket id topic; broadcasts on it come out of the returned receiver
    /// (the transport closes the socket on `disconnect`).
    pub async fn subscribe_id(&mut self) -> Option<mpsc::Receiver<Arc<Broadcast>>> {
        let id = self.info.id.clone()?;
        let (tx, rx) = mpsc::channel(4);
        let sub_id = next_subscriber_id();
        let sub = Subscriber::inbox(sub_id, tx);
        match self.env.pubsub.subscribe(&id, sub, None).await {
            Ok(()) => {
                self.id_subscription = Some(sub_id);
                Some(rx)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not subscribe to the socket id");
                None
            }
        }
    }

    fn reply(&self, join_ref: &Ref, msg_ref: &Ref, topic: &str, status: &str, response: Value) {
        self.outbox.send(&Outbound::Reply {
            join_ref,
            msg_ref,
            topic,
            status,
            response: &Payload::Json(response),
        });
    }

    /// Refuses a join with an error reply `{reason}`, counted as a refused join.
    fn refuse_join(&self, msg: &Message, reason: &str) {
        ::metrics::counter!(crate::metrics::JOINS, "result" => "refused").increment(1);
        self.reply(
            &msg.join_ref,
            &msg.msg_ref,
            &msg.topic,
            "error",
            json!({ "reason": reason }),
        );
    }

    fn unmatched(&self, msg_ref: &Ref, topic: &str) {
        ::metrics::counter!(crate::metrics::UNMATCHED).increment(1);
        self.reply(
            &Value::Null,
            msg_ref,
            topic,
            "error",
            json!({"reason": "unmatched topic"}),
        );
    }

    /// Handles one decoded client message, following Phoenix's dispatch rules.
    pub async fn handle(&mut self, msg: Message) {
        let kind = match msg.event.as_str() {
            events::HEARTBEAT if msg.topic == HEARTBEAT_TOPIC => "heartbeat",
            events::JOIN => "join",
            events::LEAVE => "leave",
            _ => "event",
        };
        ::metrics::counter!(crate::metrics::MESSAGES_IN, "kind" => kind).increment(1);
        if kind != "heartbeat" && self.limiter.as_ref().is_some_and(|l| l.check().is_err()) {
            ::metrics::counter!(crate::metrics::LIMITED, "limit" => "messages").increment(1);
            tracing::debug!(topic = %msg.topic, "message over the socket's rate limit");
            self.reply(
                &msg.join_ref,
                &msg.msg_ref,
                &msg.topic,
                "error",
                json!({"reason": "rate limited"}),
            );
            return;
        }
        if msg.topic == HEARTBEAT_TOPIC && msg.event == events::HEARTBEAT {
            self.reply(&Value::Null, &msg.msg_ref, HEARTBEAT_TOPIC, "ok", json!({}));
            return;
        }
        if msg.event == events::JOIN {
            return self.join(msg).await;
        }
        let Some(channel) = self.channels.get_mut(&msg.topic) else {
            if msg.event == events::LEAVE {
                self.reply(&msg.join_ref, &msg.msg_ref, &msg.topic, "ok", json!({}));
            } else {
                tracing::debug!(topic = %msg.topic, event = %msg.event, "event for a topic not joined");
                self.unmatched(&msg.msg_ref, &msg.topic);
            }
            return;
        };
        let is_leave = msg.event == events::LEAVE;
        // As Phoenix: events go to the topic's current channel whatever their join_ref (it
        // replies with its own), but a leave for an earlier incarnation raced a server
        // close that already told the client, and is ignored.
        if is_leave && !msg.join_ref.is_null() && msg.join_ref != channel.join_ref {
            tracing::debug!(topic = %msg.topic, "leave with a stale join_ref: ignored");
            return;
        }
        let (msg_ref, topic) = (msg.msg_ref.clone(), msg.topic.clone());
        let cmsg = Box::new(if is_leave {
            ChannelMsg::Leave {
                msg_ref: msg.msg_ref,
            }
        } else {
            ChannelMsg::In {
                event: msg.event,
                payload: msg.payload,
                msg_ref: msg.msg_ref,
            }
        });
        channel.leaving |= is_leave;
        let delivered = match channel.inbox.try_send(cmsg) {
            Ok(()) => true,
            Err(e) if e.is_full() && is_leave => channel.inbox.send(e.into_inner()).await.is_ok(),
            Err(e) if e.is_full() => {
                tracing::warn!(topic = %topic, "channel inbox full: event refused");
                let jr = channel.join_ref.clone();
                self.reply(
                    &jr,
                    &msg_ref,
                    &topic,
                    "error",
                    json!({"reason": "too many pending messages"}),
                );
                return;
            }
            Err(_) => false,
        };
        if !delivered {
            // The actor ended and its exit notice is still on the way.
            self.channels.remove(&topic);
            if is_leave {
                self.reply(&Value::Null, &msg_ref, &topic, "ok", json!({}));
            } else {
                self.unmatched(&msg_ref, &topic);
            }
        }
    }

    async fn join(&mut self, msg: Message) {
        let limits = &self.env.settings;
        let join_ref = if msg.join_ref.is_null() {
            msg.msg_ref.clone()
        } else {
            msg.join_ref.clone()
        };
        if msg.topic.len() > limits.max_topic_bytes {
            tracing::info!(len = msg.topic.len(), "join refused: topic too long");
            return self.refuse_join(&msg, "topic too long");
        }
        if let Err(limit) = self.env.limits.check_join(self.info.peer_ip) {
            tracing::debug!(topic = %msg.topic, limit = limit.label(), "join over the rate limit");
            ::metrics::counter!(crate::metrics::LIMITED, "limit" => limit.label()).increment(1);
            return self.refuse_join(&msg, "rate limited");
        }
        let internal = msg.topic.starts_with(crate::protocol::INTERNAL_PREFIX);
        let Some(factory) = self
            .env
            .router
            .find(&msg.topic)
            .cloned()
            .filter(|_| !internal)
        else {
            tracing::debug!(topic = %msg.topic, "join of an unmatched topic");
            ::metrics::counter!(crate::metrics::JOINS, "result" => "refused").increment(1);
            self.unmatched(&msg.msg_ref, &msg.topic);
            return;
        };
        let replaces = match self.channels.remove(&msg.topic) {
            Some(old) => {
                tracing::debug!(topic = %msg.topic, "duplicate join: closing the previous channel");
                old.stop.cancel();
                let abort = old.task.abort_handle();
                if tokio::time::timeout(DUPLICATE_SHUTDOWN, old.task)
                    .await
                    .is_err()
                {
                    abort.abort();
                }
                (!old.leaving).then_some(old.join_ref)
            }
            None => None,
        };
        if self.channels.len() >= limits.max_channels {
            tracing::info!(
                limit = limits.max_channels,
                "join refused: too many channels"
            );
            return self.refuse_join(&msg, "too many channels joined");
        }
        let gw = &self.env;
        let ctx = Context::new(
            msg.topic.clone(),
            join_ref,
            self.info.clone(),
            self.outbox.clone(),
            Services {
                pubsub: gw.pubsub.clone(),
                presence: gw.presence.clone(),
                counts: gw.counts.clone(),
            },
            next_subscriber_id(),
        );
        let req = JoinRequest {
            msg_ref: msg.msg_ref,
            payload: msg.payload,
            replaces,
        };
        let handle = server::spawn(
            factory.create(&msg.topic),
            ctx,
            req,
            limits.channel_inbox,
            self.events.clone(),
            &gw.channel_tasks,
        );
        self.channels.insert(msg.topic, handle);
    }

    /// Forgets a channel actor that ended (unless a newer incarnation replaced it).
    pub fn on_exit(&mut self, exit: ChannelExit) {
        if self
            .channels
            .get(&exit.topic)
            .is_some_and(|c| c.join_ref == exit.join_ref)
        {
            self.channels.remove(&exit.topic);
        }
    }

    /// Stops every channel (silently: the connection is gone) and drops the id subscription.
    pub fn close(&mut self) {
        for (_, channel) in self.channels.drain() {
            channel.stop.cancel();
        }
        if let (Some(id), Some(sub)) = (&self.info.id, self.id_subscription.take()) {
            self.env.pubsub.unsubscribe(id, sub);
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.close();
    }
}
