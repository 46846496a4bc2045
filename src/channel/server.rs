//! The channel actor: one task per joined (socket, topic), fed by a bounded inbox.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Channel, ChannelExit, Context, ExitSender, Outgoing, Reply, Termination};
use crate::protocol::{events, Outbound, Payload, Ref};
use crate::pubsub::{
    encode_broadcast, Broadcast, Intercept, Replay, Retention, Since, Subscriber, Target,
};

/// A message from the socket to a channel actor.
#[derive(Debug)]
pub(crate) enum ChannelMsg {
    /// A client event for the channel.
    In {
        event: String,
        payload: Payload,
        msg_ref: Ref,
    },
    /// The client leaves (`phx_leave`).
    Leave { msg_ref: Ref },
}

/// What the socket keeps of a running channel actor.
pub(crate) struct ChannelHandle {
    pub join_ref: Ref,
    /// Boxed and unallocated while empty: most channels never receive a client event.
    pub inbox: futures_channel::mpsc::Sender<Box<ChannelMsg>>,
    /// Cancelled to stop the channel silently (socket closed, duplicate join).
    pub stop: CancellationToken,
    pub task: JoinHandle<()>,
    /// A `phx_leave` was forwarded: the actor is ending and sends its own `phx_close`.
    pub leaving: bool,
}

/// How a join is to be run.
pub(crate) struct JoinRequest {
    pub msg_ref: Ref,
    pub payload: Payload,
    /// The join_ref of an incarnation this join replaces: its `phx_close` follows our reply.
    pub replaces: Option<Ref>,
}

/// Starts a channel actor; the join runs inside it.
pub(crate) fn spawn(
    channel: Box<dyn Channel>,
    ctx: Context,
    req: JoinRequest,
    inbox_capacity: usize,
    socket_events: ExitSender,
    tasks: &tokio_util::task::TaskTracker,
) -> ChannelHandle {
    // The queue holds its buffer plus one message per sender; the socket is the only sender.
    let (inbox, inbox_rx) = futures_channel::mpsc::channel(inbox_capacity.max(1) - 1);
    let stop = CancellationToken::new();
    let join_ref = ctx.join_ref().clone();
    let span = tracing::debug_span!("channel", topic = %ctx.topic());
    let actor = Actor {
        channel,
        ctx,
        inbox: inbox_rx,
        stop: stop.clone(),
        socket_events,
    };
    let task = tasks.spawn(actor.run(req, inbox_capacity).instrument(span));
    ChannelHandle {
        join_ref,
        inbox,
        stop,
        task,
        leaving: false,
    }
}

/// How the main loop ended.
enum End {
    Terminated(Termination),
    Crashed,
}

struct Actor {
    channel: Box<dyn Channel>,
    ctx: Context,
    inbox: futures_channel::mpsc::Receiver<Box<ChannelMsg>>,
    stop: CancellationToken,
    socket_events: ExitSender,
}

impl Actor {
    /// The join: history request, the channel's `join`, the subscription and the reply.
    /// `None` when the channel did not join (the caller then finishes); otherwise the
    /// handle_out queue, if the channel intercepts anything.
    async fn start(
        &mut self,
        req: JoinRequest,
        capacity: usize,
    ) -> Option<Option<mpsc::Receiver<Arc<Broadcast>>>> {
        let retention = self.channel.history();
        self.ctx.set_retention(retention);
        self.ctx.set_presence_counts(self.channel.presence_counts());
        // What the joiner asks of the topic's history: checked before the channel sees the
        // join, so a malformed request is refused the same way on every route.
        let since = match (retention, req.payload.as_json()) {
            (Some(_), Some(p)) => match Since::from_join(p) {
                Ok(since) => since,
                Err(e) => {
                    tracing::debug!(error = %e, "join with an invalid history request");
                    ::metrics::counter!(crate::metrics::JOINS, "result" => "refused").increment(1);
                    self.refuse(
                        &req.msg_ref,
                        json!({"reason": format!("invalid history: {e}")}),
                        req.replaces.as_ref(),
                    );
                    return None;
                }
            },
            _ => None,
        };
        let joined = AssertUnwindSafe(self.channel.join(&mut self.ctx, req.payload))
            .catch_unwind()
            .await;
        let result = match &joined {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "refused",
            Err(_) => "error",
        };
        ::metrics::counter!(crate::metrics::JOINS, "result" => result).increment(1);
        let response = match joined {
            Ok(Ok(response)) => response,
            Ok(Err(reason)) => {
                tracing::debug!(reason = %reason, "join refused");
                self.refuse(&req.msg_ref, reason, req.replaces.as_ref());
                return None;
            }
            Err(_) => {
                tracing::error!("channel join panicked");
                self.refuse(
                    &req.msg_ref,
                    json!({"reason": "join crashed"}),
                    req.replaces.as_ref(),
                );
                return None;
            }
        };

        // The handle_out queue exists only for channels that intercept something.
        let intercepts = self.channel.intercepts();
        let (intercept, out_rx) = if intercepts.is_empty() {
            (None, None)
        } else {
            let (tx, rx) = mpsc::channel::<Arc<Broadcast>>(capacity.max(1));
            (
                Some(Intercept {
                    events: Arc::from(intercepts),
                    tx,
                }),
                Some(rx),
            )
        };
        let sub = Subscriber {
            id: self.ctx.id(),
            target: Target::Socket {
                outbox: self.ctx.outbox().clone(),
                intercept,
                gate: Some(self.ctx.gate().clone()),
            },
        };
        let subscribed = match retention {
            // The reply is queued atomically with the subscription: it precedes every
            // broadcast.
            None => {
                let reply = self.encode_join_reply(&req.msg_ref, response);
                self.ctx.pubsub_subscribe(sub, reply).await
            }
            // Subscribed first (live messages are held by the closed gate), then the history
            // is read: every message is in the read or arrives live, and the gate drops the
            // live ones the replay holds.
            Some(retention) => match self.ctx.pubsub_subscribe(sub, None).await {
                Ok(()) => {
                    self.join_with_history(&req.msg_ref, response, retention, since.as_ref())
                        .await;
                    Ok(())
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = subscribed {
            tracing::warn!(error = %e, "subscribe failed");
            self.ctx.send_control(
                events::ERROR,
                &Payload::Json(json!({"reason": "subscribe failed"})),
            );
            return None;
        }
        if let Some(old) = &req.replaces {
            self.send_close_of(old);
        }
        tracing::debug!("joined");
        ::metrics::gauge!(crate::metrics::CHANNELS).increment(1.0);
        Some(out_rx)
    }

    async fn run(mut self, req: JoinRequest, capacity: usize) {
        // Boxed: joining takes the largest futures of a channel's life, and a task keeps the
        // size of its largest state for as long as it lives.
        let Some(mut out_rx) = Box::pin(self.start(req, capacity)).await else {
            return Box::pin(self.finish()).await;
        };

        let mut end =
            match Box::pin(AssertUnwindSafe(self.channel.after_join(&mut self.ctx)).catch_unwind())
                .await
            {
                Ok(()) => None,
                Err(_) => Some(End::Crashed),
            };
        // Broadcasts were held so that a presence_state pushed by after_join came first.
        self.ctx.open_gate();
        while end.is_none() {
            // Biased: client events already queued are handled before a stop, in order.
            end = tokio::select! {
                biased;
                msg = self.inbox.next() => match msg {
                    Some(msg) => Box::pin(self.handle(*msg)).await,
                    None => Some(End::Terminated(Termination::Closed)),
                },
                Some(b) = async { match &mut out_rx { Some(rx) => rx.recv().await, None => std::future::pending().await } } => Box::pin(self.handle_out(&b)).await,
                _ = self.stop.cancelled() => Some(End::Terminated(Termination::Closed)),
            };
        }
        let end = end.unwrap_or(End::Crashed);

        let why = match end {
            End::Terminated(why) => why,
            End::Crashed => Termination::Closed,
        };
        if Box::pin(AssertUnwindSafe(self.channel.terminate(&mut self.ctx, why)).catch_unwind())
            .await
            .is_err()
        {
            tracing::error!("channel terminate panicked");
        }
        Box::pin(self.ctx.cleanup()).await;
        ::metrics::gauge!(crate::metrics::CHANNELS).decrement(1.0);
        match end {
            End::Terminated(Termination::Left | Termination::Stopped) => {
                self.ctx.send_control(events::CLOSE, &Payload::empty());
            }
            End::Crashed => {
                tracing::error!("channel crashed");
                self.ctx.send_control(
                    events::ERROR,
                    &Payload::Json(json!({"reason": "channel_crash"})),
                );
            }
            End::Terminated(Termination::DuplicateJoin | Termination::Closed) => {}
        }
        Box::pin(self.finish()).await;
    }

    async fn handle(&mut self, msg: ChannelMsg) -> Option<End> {
        match msg {
            ChannelMsg::Leave { msg_ref } => {
                self.ctx.reply(&msg_ref, "ok", &Payload::empty());
                Some(End::Terminated(Termination::Left))
            }
            ChannelMsg::In {
                event,
                payload,
                msg_ref,
            } => {
                let handled =
                    AssertUnwindSafe(self.channel.handle_in(&mut self.ctx, &event, payload))
                        .catch_unwind()
                        .await;
                match handled {
                    Ok(Reply::Reply { status, response }) => {
                        self.ctx.reply(&msg_ref, &status, &response);
                        None
                    }
                    Ok(Reply::NoReply) => None,
                    Ok(Reply::Stop { reply }) => {
                        if let Some((status, response)) = reply {
                            self.ctx.reply(&msg_ref, &status, &response);
                        }
                        Some(End::Terminated(Termination::Stopped))
                    }
                    Err(_) => {
                        tracing::error!(event = %event, "channel handle_in panicked");
                        Some(End::Crashed)
                    }
                }
            }
        }
    }

    async fn handle_out(&mut self, b: &Broadcast) -> Option<End> {
        match AssertUnwindSafe(self.channel.handle_out(&mut self.ctx, &b.event, &b.payload))
            .catch_unwind()
            .await
        {
            Ok(Outgoing::Push(payload)) => {
                self.ctx.push(&b.event, &payload);
                None
            }
            Ok(Outgoing::Skip) => None,
            Err(_) => {
                tracing::error!(event = %b.event, "channel handle_out panicked");
                Some(End::Crashed)
            }
        }
    }

    /// Replies `error` to the join; the channel never existed.
    fn encode_join_reply(&self, msg_ref: &Ref, response: Value) -> Option<crate::protocol::Frame> {
        self.ctx
            .outbox()
            .serializer()
            .encode(&Outbound::Reply {
                join_ref: self.ctx.join_ref(),
                msg_ref,
                topic: self.ctx.topic(),
                status: "ok",
                response: &Payload::Json(response),
            })
            .ok()
    }

    /// Replies to a join on a route with history and pushes what it asked for: the reply
    /// says whether the recovery worked and the topic's position; the replayed messages
    /// follow it, in order, before anything live.
    async fn join_with_history(
        &mut self,
        msg_ref: &Ref,
        mut response: Value,
        retention: Retention,
        since: Option<&Since>,
    ) {
        let replay = match since {
            Some(since) => match self.ctx.history(retention, since).await {
                Ok(replay) => Some(replay),
                Err(e) => {
                    tracing::warn!(error = %e, "history read failed: nothing replayed");
                    if matches!(since, Since::After(_)) {
                        ::metrics::counter!(crate::metrics::HISTORY_RECOVERIES, "result" => "error")
                            .increment(1);
                    }
                    Some(Replay::default())
                }
            },
            None => None,
        };
        if let (Some(replay), Value::Object(obj)) = (&replay, &mut response) {
            obj.insert(
                "history".into(),
                json!({
                    "recovered": replay.recovered,
                    "position": replay.position.as_ref().map(ToString::to_string),
                }),
            );
        }
        if let Some(reply) = self.encode_join_reply(msg_ref, response) {
            self.ctx.outbox().push(reply);
        }
        let Some(replay) = replay else { return };
        if let Some(Since::After(_)) = since {
            if replay.position.is_some() || !replay.recovered {
                let result = if replay.recovered {
                    "recovered"
                } else {
                    "failed"
                };
                ::metrics::counter!(crate::metrics::HISTORY_RECOVERIES, "result" => result)
                    .increment(1);
            }
        }
        if !replay.recovered {
            return;
        }
        let serializer = self.ctx.outbox().serializer();
        for msg in &replay.messages {
            if let Some(frame) = encode_broadcast(serializer, msg) {
                self.ctx.outbox().push(frame);
            }
        }
        ::metrics::counter!(crate::metrics::HISTORY_REPLAYED)
            .increment(replay.messages.len() as u64);
        let upto = replay
            .messages
            .last()
            .and_then(|m| m.position.clone())
            .into_iter()
            .chain(replay.position.clone())
            .max_by(|a, b| a.cmp_in_epoch(b).unwrap_or(std::cmp::Ordering::Equal));
        if let Some(upto) = upto {
            self.ctx.gate().replayed_up_to(upto);
        }
    }

    fn refuse(&self, msg_ref: &Ref, reason: Value, replaces: Option<&Ref>) {
        self.ctx.reply(msg_ref, "error", &Payload::Json(reason));
        if let Some(old) = replaces {
            self.send_close_of(old);
        }
    }

    fn send_close_of(&self, old_join_ref: &Ref) {
        self.ctx.outbox().send(&Outbound::Event {
            join_ref: old_join_ref,
            msg_ref: old_join_ref,
            topic: self.ctx.topic(),
            event: events::CLOSE,
            payload: &Payload::empty(),
        });
    }

    /// Answers what is still queued as if the channel were gone, then tells the socket.
    async fn finish(mut self) {
        self.inbox.close();
        let null = Value::Null;
        while let Ok(msg) = self.inbox.try_recv() {
            if let ChannelMsg::In { msg_ref, .. } = *msg {
                if !self.stop.is_cancelled() {
                    self.ctx.outbox().send(&Outbound::Reply {
                        join_ref: &null,
                        msg_ref: &msg_ref,
                        topic: self.ctx.topic(),
                        status: "error",
                        response: &Payload::Json(json!({"reason": "unmatched topic"})),
                    });
                }
            }
        }
        let _ = self.socket_events.unbounded_send(Box::new(ChannelExit {
            topic: self.ctx.topic().to_owned(),
            join_ref: self.ctx.join_ref().clone(),
        }));
    }
}
