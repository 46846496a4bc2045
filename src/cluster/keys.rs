//! Redis key and channel names. Topics are escaped so that no client-chosen string can
//! reach a key or channel name raw (no glob characters, no braces that would change the
//! cluster hash slot, no whitespace); a topic's keys share one hash tag, hence one slot.

use std::fmt::Write;

/// Builds every Redis name from the configured prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// Percent-encodes everything but ASCII letters, digits and `:_-.@/`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b":_-.@/".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Reverses [`escape`]; None if the input is not a valid escape.
pub fn unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Keys {
    /// Names under `prefix` (e.g. `phx`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The pub/sub channel of a topic: `phx:b:{<topic>}`.
    pub fn channel(&self, topic: &str) -> String {
        format!("{}:b:{{{}}}", self.prefix, escape(topic))
    }

    /// The topic of a channel name, if it is one of ours.
    pub fn topic_of_channel(&self, channel: &str) -> Option<String> {
        let rest = channel
            .strip_prefix(&self.prefix)?
            .strip_prefix(":b:{")?
            .strip_suffix('}')?;
        unescape(rest)
    }

    /// A PSUBSCRIBE pattern matching every topic's channel: `phx:b:{*}` (glob characters of
    /// the prefix escaped).
    pub fn all_channels(&self) -> String {
        let mut out = String::with_capacity(self.prefix.len() + 6);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push_str(":b:{*}");
        out
    }

    /// The lease of the node forwarding external publishes to the Phoenix PubSub:
    /// `phx:phoenix:forwarder`.
    pub fn phoenix_forwarder(&self) -> String {
        format!("{}:phoenix:forwarder", self.prefix)
    }

    /// The presence hash of a topic: `phx:p:{<topic>}`.
    pub fn presence(&self, topic: &str) -> String {
        format!("{}:p:{{{}}}", self.prefix, escape(topic))
    }

    /// The presence sequence of a topic (same slot as its hash): `phx:ps:{<topic>}`.
    pub fn presence_seq(&self, topic: &str) -> String {
        format!("{}:ps:{{{}}}", self.prefix, escape(topic))
    }

    /// The history stream of a topic (same slot as its channel): `phx:h:{<topic>}`.
    pub fn history(&self, topic: &str) -> String {
        format!("{}:h:{{{}}}", self.prefix, escape(topic))
    }

    /// The epoch of a topic's history stream: `phx:he:{<topic>}`.
    pub fn history_epoch(&self, topic: &str) -> String {
        format!("{}:he:{{{}}}", self.prefix, escape(topic))
    }

    /// The set of live node ids: `phx:nodes`.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// A node's heartbeat key (expires when the node stops beating): `phx:n:{<node>}:hb`.
    pub fn heartbeat(&self, node: &str) -> String {
        format!("{}:n:{{{}}}:hb", self.prefix, escape(node))
    }

    /// The topics a node has presences on: `phx:n:{<node>}:topics`.
    pub fn node_topics(&self, node: &str) -> String {
        format!("{}:n:{{{}}}:topics", self.prefix, escape(node))
    }

    /// The lock a surviving node takes to reap a dead one: `phx:n:{<node>}:reap`.
    pub fn reap_lock(&self, node: &str) -> String {
        format!("{}:n:{{{}}}:reap", self.prefix, escape(node))
    }

    /// The key-layout version: `phx:schema`.
    pub fn schema(&self) -> String {
        format!("{}:schema", self.prefix)
    }

    /// A cluster master's key-layout version, in a slot of `tag`: `phx:schema:{<tag>}`.
    pub fn schema_tagged(&self, tag: &str) -> String {
        format!("{}:schema:{{{}}}", self.prefix, escape(tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_topics_are_escaped_and_round_trip() {
        let keys = Keys::new("phx");
        for topic in [
            "room:lobby",
            "a*b?c[d]",
            "{x}",
            "new\nline",
            "sp ace",
            "ünï",
            "%41",
            &"z".repeat(300),
        ] {
            let ch = keys.channel(topic);
            let inner = &ch["phx:b:{".len()..ch.len() - 1];
            assert!(
                !inner.contains(['{', '}', '*', '?', '[', ']', '\n', ' ']),
                "{ch:?}"
            );
            assert_eq!(keys.topic_of_channel(&ch).as_deref(), Some(topic));
            let p = keys.presence(topic);
            assert_eq!(p.matches('{').count(), 1, "exactly one hash tag: {p}");
            assert_eq!(
                &p["phx:p:".len()..],
                &ch["phx:b:".len()..],
                "same hash tag, same slot"
            );
        }
        assert_eq!(keys.channel("room:lobby"), "phx:b:{room:lobby}");
        assert_eq!(keys.topic_of_channel("other:b:{x}"), None);
        assert_eq!(unescape("%4"), None);
        assert_eq!(unescape("%ZZ"), None);
    }
}
