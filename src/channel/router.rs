//! Topic patterns and the routing table from patterns to channels.

use std::sync::Arc;

use super::Channel;

/// A topic pattern as in Phoenix's `channel "room:*", RoomChannel`: an exact topic, or a
/// prefix followed by a single trailing `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPattern {
    /// Matches this topic only.
    Exact(String),
    /// Matches every topic starting with this prefix.
    Prefix(String),
}

/// A pattern with a `*` anywhere but at the end.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid topic pattern {0:?}: `*` is only allowed once, at the end")]
pub struct PatternError(pub String);

impl TopicPattern {
    /// Parses `room:lobby` (exact) or `room:*` (prefix).
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        match pattern.find('*') {
            None => Ok(TopicPattern::Exact(pattern.to_owned())),
            Some(i) if i == pattern.len() - 1 => Ok(TopicPattern::Prefix(pattern[..i].to_owned())),
            Some(_) => Err(PatternError(pattern.to_owned())),
        }
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicPattern::Exact(t) => t == topic,
            TopicPattern::Prefix(p) => topic.starts_with(p.as_str()),
        }
    }
}

/// Creates the channel value for a topic being joined.
pub trait ChannelFactory: Send + Sync + 'static {
    /// A fresh channel for `topic`.
    fn create(&self, topic: &str) -> Box<dyn Channel>;
}

impl<F> ChannelFactory for F
where
    F: Fn(&str) -> Box<dyn Channel> + Send + Sync + 'static,
{
    fn create(&self, topic: &str) -> Box<dyn Channel> {
        self(topic)
    }
}

/// Routes topics to channel factories; the first matching route wins, as in Phoenix.
#[derive(Default, Clone)]
pub struct Router {
    routes: Vec<(TopicPattern, Arc<dyn ChannelFactory>)>,
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route.
    pub fn route(
        mut self,
        pattern: &str,
        factory: impl ChannelFactory,
    ) -> Result<Self, PatternError> {
        self.routes
            .push((TopicPattern::parse(pattern)?, Arc::new(factory)));
        Ok(self)
    }

    /// The history kept for `topic` by the channel that serves it (None: no history, or
    /// no route).
    pub fn history(&self, topic: &str) -> Option<crate::pubsub::Retention> {
        self.find(topic).and_then(|f| f.create(topic).history())
    }

    /// The topic under which `topic`'s presences are tracked: itself, or its counting
    /// companion when its channel counts presences (`Channel::presence_counts`).
    pub fn presence_topic(&self, topic: &str) -> String {
        match self
            .find(topic)
            .and_then(|f| f.create(topic).presence_counts())
        {
            Some(_) => crate::presence::counts::companion(topic),
            None => topic.to_owned(),
        }
    }

    /// The factory for `topic`, if a route matches.
    pub fn find(&self, topic: &str) -> Option<&Arc<dyn ChannelFactory>> {
        self.routes
            .iter()
            .find(|(p, _)| p.matches(topic))
            .map(|(_, f)| f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{Context, Reply};
    use async_trait::async_trait;
    use serde_json::Value;

    struct Named;
    #[async_trait]
    impl Channel for Named {
        async fn join(
            &mut self,
            _: &mut Context,
            _: crate::protocol::Payload,
        ) -> Result<Value, Value> {
            Ok(Value::Null)
        }
        async fn handle_in(
            &mut self,
            _: &mut Context,
            _: &str,
            _: crate::protocol::Payload,
        ) -> Reply {
            Reply::NoReply
        }
    }

    #[test]
    fn patterns() {
        let p = TopicPattern::parse("room:*").unwrap();
        assert!(
            p.matches("room:lobby")
                && p.matches("room:")
                && !p.matches("rooms:1")
                && !p.matches("room")
        );
        let e = TopicPattern::parse("room:lobby").unwrap();
        assert!(e.matches("room:lobby") && !e.matches("room:lobby2"));
        assert!(TopicPattern::parse("*").unwrap().matches("anything"));
        assert!(TopicPattern::parse("a*b").is_err());
        assert!(TopicPattern::parse("a**").is_err());
    }

    #[test]
    fn first_matching_route_wins() {
        fn mk(_: &str) -> Box<dyn Channel> {
            Box::new(Named)
        }
        let router = Router::new()
            .route("room:private:*", mk)
            .unwrap()
            .route("room:*", mk)
            .unwrap();
        let first = router.find("room:private:1").expect("routed");
        let second = router.find("room:lobby").expect("routed");
        assert!(!Arc::ptr_eq(first, second));
        assert!(Arc::ptr_eq(router.find("room:private:x").unwrap(), first));
        assert!(router.find("nope:1").is_none());
    }
}
