//! Parsing of stream replies. The connections speak RESP2 by default, but a `?protocol=resp3`
//! URL turns some arrays into maps, so every parser accepts both shapes.

use redis::Value;

use crate::BrokerError;

/// One stream entry: its id and its field/value pairs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub id: String,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    pub fn field(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// What `XINFO GROUPS` says about one group.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupInfo {
    pub pending: u64,
    pub last_delivered: String,
    /// Entries not yet delivered to the group; `None` when Redis cannot tell (before 7.0, or
    /// after deletions in the undelivered range).
    pub lag: Option<u64>,
}

fn bad(command: &'static str, reason: impl Into<String>) -> BrokerError {
    BrokerError::Protocol {
        command,
        reason: reason.into(),
    }
}

pub(crate) fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}

pub(crate) fn string(value: Value) -> Option<String> {
    bytes(value).and_then(|b| String::from_utf8(b).ok())
}

pub(crate) fn int(value: Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(n),
        other => string(other).and_then(|s| s.parse().ok()),
    }
}

/// A flat `[k, v, k, v…]` array or a map, as pairs.
fn pairs(value: Value) -> Option<Vec<(Value, Value)>> {
    match value {
        Value::Map(pairs) => Some(pairs),
        Value::Array(flat) => {
            let mut out = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let Some(k) = it.next() {
                out.push((k, it.next()?));
            }
            Some(out)
        }
        _ => None,
    }
}

/// `[id, [field, value, …]]`, or nil for an entry that was deleted while pending.
fn entry(command: &'static str, value: Value) -> Result<Option<Entry>, BrokerError> {
    let parts = match value {
        Value::Nil => return Ok(None),
        Value::Array(parts) if parts.len() == 2 => parts,
        other => return Err(bad(command, format!("entry {other:?}"))),
    };
    let mut parts = parts.into_iter();
    let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
        return Err(bad(command, "entry without id and fields"));
    };
    let id = string(id).ok_or_else(|| bad(command, "entry id is not a string"))?;
    let fields = match fields {
        // Trimmed away while pending (Redis 6.2 answers this way).
        Value::Nil => return Ok(None),
        other => pairs(other).ok_or_else(|| bad(command, "entry fields are not pairs"))?,
    };
    let fields = fields
        .into_iter()
        .map(|(k, v)| match (bytes(k), bytes(v)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(bad(command, "entry field is not a string")),
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(Entry { id, fields }))
}

fn entries(command: &'static str, value: Value) -> Result<Vec<Entry>, BrokerError> {
    match value {
        Value::Nil => Ok(Vec::new()),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.extend(entry(command, item)?);
            }
            Ok(out)
        }
        other => Err(bad(command, format!("entries {other:?}"))),
    }
}

/// `XRANGE` → entries, oldest first.
pub(crate) fn xrange(value: Value) -> Result<Vec<Entry>, BrokerError> {
    entries("XRANGE", value)
}

/// `XREADGROUP … COUNT 1 … STREAMS key >` → the entry, or `None` on timeout.
pub(crate) fn xreadgroup(value: Value) -> Result<Option<Entry>, BrokerError> {
    Ok(stream_entries("XREADGROUP", value)?.into_iter().next())
}

/// `XREAD … STREAMS key id` → the entries after `id`, oldest first; none on timeout.
pub(crate) fn xread(value: Value) -> Result<Vec<Entry>, BrokerError> {
    stream_entries("XREAD", value)
}

/// The entries of a read of streams.
/// RESP2: `[[key, [entry…]]]`; RESP3: `{key: [entry…]}`; nil on timeout.
fn stream_entries(command: &'static str, value: Value) -> Result<Vec<Entry>, BrokerError> {
    let streams: Vec<Value> = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs.into_iter().map(|(_, v)| v).collect(),
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| match s {
                Value::Array(kv) if kv.len() == 2 => kv
                    .into_iter()
                    .nth(1)
                    .ok_or_else(|| bad(command, "stream without entries")),
                other => Err(bad(command, format!("stream {other:?}"))),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(bad(command, format!("reply {other:?}"))),
    };
    Ok(streams
        .into_iter()
        .map(|s| entries(command, s))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect())
}

/// `XAUTOCLAIM … COUNT 1` → (next cursor, the claimed entry if any).
/// `[cursor, [entry…], [deleted ids…]]` (the third part only since Redis 7.0).
pub(crate) fn xautoclaim(value: Value) -> Result<(String, Option<Entry>), BrokerError> {
    const CMD: &str = "XAUTOCLAIM";
    let Value::Array(parts) = value else {
        return Err(bad(CMD, format!("reply {value:?}")));
    };
    let mut parts = parts.into_iter();
    let cursor = parts
        .next()
        .and_then(string)
        .ok_or_else(|| bad(CMD, "no cursor"))?;
    let claimed = match parts.next() {
        Some(list) => entries(CMD, list)?,
        None => return Err(bad(CMD, "no entry list")),
    };
    Ok((cursor, claimed.into_iter().next()))
}

/// `XPENDING key group id id 1` → the entry's delivery count, `None` when it is no longer
/// pending. Each row is `[id, consumer, idle-ms, deliveries]`.
pub(crate) fn xpending_deliveries(value: Value) -> Result<Option<u64>, BrokerError> {
    const CMD: &str = "XPENDING";
    let rows = match value {
        Value::Array(rows) => rows,
        Value::Nil => return Ok(None),
        other => return Err(bad(CMD, format!("reply {other:?}"))),
    };
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    match row {
        Value::Array(cols) if cols.len() == 4 => cols
            .into_iter()
            .nth(3)
            .and_then(int)
            .and_then(|n| u64::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| bad(CMD, "delivery count is not a number")),
        other => Err(bad(CMD, format!("row {other:?}"))),
    }
}

/// `XINFO GROUPS key` → what it says about `group`, `None` if there is no such group.
pub(crate) fn xinfo_group(value: Value, group: &str) -> Result<Option<GroupInfo>, BrokerError> {
    const CMD: &str = "XINFO GROUPS";
    let Value::Array(groups) = value else {
        return Err(bad(CMD, format!("reply {value:?}")));
    };
    for g in groups {
        let fields = pairs(g).ok_or_else(|| bad(CMD, "group is not a list of pairs"))?;
        let mut name = None;
        let mut pending = None;
        let mut last_delivered = None;
        let mut lag = None;
        for (k, v) in fields {
            match string(k).as_deref() {
                Some("name") => name = string(v),
                Some("pending") => pending = int(v).and_then(|n| u64::try_from(n).ok()),
                Some("last-delivered-id") => last_delivered = string(v),
                Some("lag") => lag = int(v).and_then(|n| u64::try_from(n).ok()),
                _ => {}
            }
        }
        if name.as_deref() != Some(group) {
            continue;
        }
        return Ok(Some(GroupInfo {
            pending: pending.ok_or_else(|| bad(CMD, "no pending count"))?,
            last_delivered: last_delivered.ok_or_else(|| bad(CMD, "no last-delivered-id"))?,
            lag,
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn raw_entry(id: &str, payload: &str) -> Value {
        Value::Array(vec![bulk(id), Value::Array(vec![bulk("p"), bulk(payload)])])
    }

    #[test]
    fn xreadgroup_resp2_resp3_and_timeout() {
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("larder:q:s"),
            Value::Array(vec![raw_entry("1-0", "a")]),
        ])]);
        let e = xreadgroup(resp2).expect("parses").expect("an entry");
        assert_eq!((e.id.as_str(), e.field(b"p")), ("1-0", Some(&b"a"[..])));
        let resp3 = Value::Map(vec![(
            bulk("larder:q:s"),
            Value::Array(vec![raw_entry("2-0", "b")]),
        )]);
        let e = xreadgroup(resp3).expect("parses").expect("an entry");
        assert_eq!(e.id, "2-0");
        assert_eq!(xreadgroup(Value::Nil).expect("parses"), None);
        assert!(xreadgroup(Value::Int(3)).is_err());
    }

    #[test]
    fn xautoclaim_with_and_without_deleted_list() {
        let v7 = Value::Array(vec![
            bulk("5-0"),
            Value::Array(vec![raw_entry("3-0", "x")]),
            Value::Array(vec![]),
        ]);
        let (cursor, e) = xautoclaim(v7).expect("parses");
        assert_eq!(cursor, "5-0");
        assert_eq!(e.expect("claimed").field(b"p"), Some(&b"x"[..]));
        // Redis 6.2: two parts, a deleted entry shows up as nil and is skipped.
        let v62 = Value::Array(vec![bulk("0-0"), Value::Array(vec![Value::Nil])]);
        assert_eq!(xautoclaim(v62).expect("parses"), ("0-0".to_owned(), None));
        assert!(xautoclaim(Value::Array(vec![])).is_err());
    }

    #[test]
    fn xpending_rows() {
        let row = Value::Array(vec![Value::Array(vec![
            bulk("1-0"),
            bulk("c"),
            Value::Int(250),
            Value::Int(3),
        ])]);
        assert_eq!(xpending_deliveries(row).expect("parses"), Some(3));
        assert_eq!(
            xpending_deliveries(Value::Array(vec![])).expect("parses"),
            None
        );
    }

    #[test]
    fn xinfo_groups_finds_the_group_and_keeps_nil_lag() {
        let flat = Value::Array(vec![
            Value::Array(vec![
                bulk("name"),
                bulk("other"),
                bulk("pending"),
                Value::Int(9),
            ]),
            Value::Array(vec![
                bulk("name"),
                bulk("larder"),
                bulk("consumers"),
                Value::Int(2),
                bulk("pending"),
                Value::Int(4),
                bulk("last-delivered-id"),
                bulk("7-0"),
                bulk("entries-read"),
                Value::Int(7),
                bulk("lag"),
                Value::Nil,
            ]),
        ]);
        assert_eq!(
            xinfo_group(flat, "larder").expect("parses"),
            Some(GroupInfo {
                pending: 4,
                last_delivered: "7-0".to_owned(),
                lag: None,
            })
        );
        let map = Value::Array(vec![Value::Map(vec![
            (bulk("name"), bulk("larder")),
            (bulk("pending"), Value::Int(1)),
            (bulk("last-delivered-id"), bulk("1-0")),
            (bulk("lag"), Value::Int(5)),
        ])]);
        let info = xinfo_group(map, "larder").expect("parses").expect("found");
        assert_eq!((info.pending, info.lag), (1, Some(5)));
        assert_eq!(
            xinfo_group(Value::Array(vec![]), "larder").expect("parses"),
            None
        );
    }
}
