//! Presence data shapes, exactly as Phoenix puts them on the wire, and `phx_ref` generation.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{Map, Value};

/// One presence meta: the application's fields plus `phx_ref` (and `phx_ref_prev` after an update).
pub type Meta = Map<String, Value>;

/// A fresh `phx_ref`: 12 bytes (nanosecond clock, node tag, counter) in URL-safe base64,
/// 16 characters like Phoenix's. Clients only compare refs for equality.
pub fn new_phx_ref(node_tag: u16) -> String {
    static COUNTER: AtomicU16 = AtomicU16::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut raw = [0u8; 12];
    raw[..8].copy_from_slice(&nanos.to_be_bytes());
    raw[8..10].copy_from_slice(&node_tag.to_be_bytes());
    raw[10..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Groups `(key, meta)` pairs, in order, into the presence map shape
/// `{"key": {"metas": [meta, ...]}}` used by `presence_state` and both halves of a diff.
pub fn group<'a>(entries: impl IntoIterator<Item = (&'a str, &'a Meta)>) -> Value {
    let mut by_key: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for (key, meta) in entries {
        by_key
            .entry(key)
            .or_default()
            .push(Value::Object(meta.clone()));
    }
    let map: Map<String, Value> = by_key
        .into_iter()
        .map(|(k, metas)| {
            let mut presence = Map::new();
            presence.insert("metas".into(), Value::Array(metas));
            (k.to_owned(), Value::Object(presence))
        })
        .collect();
    Value::Object(map)
}

/// Writes the same shape as [`group`] as JSON text from `(key, meta JSON text)` pairs, without
/// building values: metas are copied verbatim, so they must be compact JSON objects with
/// sorted keys (as stored by the Redis tracker), for the output to equal `group`'s.
pub fn encode_grouped<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut len = 2;
    for (key, meta) in entries {
        len += key.len() + meta.len() + 16;
        by_key.entry(key).or_default().push(meta);
    }
    let mut out = Vec::with_capacity(len);
    out.push(b'{');
    for (i, (key, metas)) in by_key.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, key);
        out.extend_from_slice(b":{\"metas\":[");
        for (j, meta) in metas.into_iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            out.extend_from_slice(meta.as_bytes());
        }
        out.extend_from_slice(b"]}");
    }
    out.push(b'}');
    // Keys come from serde_json and metas from &str: the bytes are UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// A change of a topic's presences: what joined and what left.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Diff {
    /// `(key, meta)` that joined.
    pub joins: Vec<(String, Meta)>,
    /// `(key, meta)` that left.
    pub leaves: Vec<(String, Meta)>,
}

impl Diff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    /// The `presence_diff` payload: `{"joins": {...}, "leaves": {...}}`, both always present.
    pub fn to_payload(&self) -> Value {
        let mut map = Map::new();
        map.insert(
            "joins".into(),
            group(self.joins.iter().map(|(k, m)| (k.as_str(), m))),
        );
        map.insert(
            "leaves".into(),
            group(self.leaves.iter().map(|(k, m)| (k.as_str(), m))),
        );
        Value::Object(map)
    }
}

/// The meta of an update: the new fields, a fresh `phx_ref`, and `phx_ref_prev` = the old ref.
pub fn updated_meta(old: &Meta, mut new: Meta, new_ref: String) -> Meta {
    new.remove("phx_ref_prev");
    if let Some(prev) = old.get("phx_ref") {
        new.insert("phx_ref_prev".into(), prev.clone());
    }
    new.insert("phx_ref".into(), Value::String(new_ref));
    new
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: Value) -> Meta {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn phx_refs_are_16_url_safe_chars_and_unique() {
        let a = new_phx_ref(7);
        let b = new_phx_ref(7);
        assert_eq!(a.len(), 16);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
    }

    #[test]
    fn groups_metas_by_key() {
        let m1 = meta(json!({"online_at": "1", "phx_ref": "A"}));
        let m2 = meta(json!({"online_at": "2", "phx_ref": "B"}));
        let m3 = meta(json!({"phx_ref": "C"}));
        let state = group([("alice", &m1), ("bob", &m3), ("alice", &m2)]);
        assert_eq!(
            state,
            json!({"alice": {"metas": [{"online_at": "1", "phx_ref": "A"}, {"online_at": "2", "phx_ref": "B"}]},
                   "bob": {"metas": [{"phx_ref": "C"}]}})
        );
    }

    #[test]
    fn encoded_grouping_matches_the_value_grouping() {
        let metas = [
            meta(json!({"online_at": "1", "phx_ref": "A"})),
            meta(json!({"phx_ref": "C", "name": "q\"uote\n"})),
            meta(json!({"online_at": "2", "phx_ref": "B"})),
        ];
        let keys = ["alice", "b\u{e9}b \"x\"", "alice"];
        let texts: Vec<String> = metas
            .iter()
            .map(|m| Value::Object(m.clone()).to_string())
            .collect();
        let encoded = encode_grouped(keys.iter().copied().zip(texts.iter().map(String::as_str)));
        let grouped = group(keys.iter().copied().zip(metas.iter()));
        assert_eq!(encoded, grouped.to_string());
        assert_eq!(encode_grouped([]), "{}");
    }

    #[test]
    fn update_diff_has_leave_and_join_with_prev_ref() {
        let old = meta(json!({"online_at": "1", "phx_ref": "OLD"}));
        let new = updated_meta(
            &old,
            meta(json!({"online_at": "1", "status": "away"})),
            "NEW".into(),
        );
        let diff = Diff {
            joins: vec![("b".into(), new)],
            leaves: vec![("b".into(), old)],
        };
        let wire = serde_json::to_string(&diff.to_payload()).expect("json");
        // Byte for byte the shape a real Phoenix server sent for an update.
        assert_eq!(
            wire,
            r#"{"joins":{"b":{"metas":[{"online_at":"1","phx_ref":"NEW","phx_ref_prev":"OLD","status":"away"}]}},"leaves":{"b":{"metas":[{"online_at":"1","phx_ref":"OLD"}]}}}"#
        );
        assert_eq!(
            Diff::default().to_payload(),
            json!({"joins": {}, "leaves": {}})
        );
    }
}
