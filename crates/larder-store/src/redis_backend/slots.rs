//! Cluster slot map: which primary owns each of the 16,384 hash slots.
//!
//! redis-rs keeps its own slot map private and does not expose a key's slot number, so Larder
//! keeps a copy (from `CLUSTER SLOTS`) to group a batch by owning node. The hashing is the
//! CRC16/XMODEM of the key's hash tag (or whole key) modulo 16384, as the cluster spec defines.

use redis::Value;

use crate::{Result, StoreError};

pub const SLOT_COUNT: usize = 16_384;

/// The slot of `key`, honouring `{hash tags}` like Redis does.
pub fn slot_for_key(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|b| *b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|b| *b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOT_COUNT as u16
}

/// A primary node's address as the cluster advertises it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Owner of each slot, as an index into `nodes`, and the replicas the cluster listed.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotTable {
    /// The primaries, each listed once.
    pub nodes: Vec<NodeAddr>,
    /// Every replica named in the reply (they can answer `CLUSTER SLOTS` too).
    pub replicas: Vec<NodeAddr>,
    owner: Vec<Option<u16>>,
}

impl SlotTable {
    /// A table that knows no node (before the first refresh).
    pub fn empty() -> SlotTable {
        SlotTable {
            nodes: Vec::new(),
            replicas: Vec::new(),
            owner: vec![None; SLOT_COUNT],
        }
    }

    pub fn owner(&self, slot: u16) -> Option<usize> {
        self.owner
            .get(slot as usize)
            .copied()
            .flatten()
            .map(usize::from)
    }

    /// The address of the primary owning `slot`.
    pub fn owner_addr(&self, slot: u16) -> Option<&NodeAddr> {
        self.owner(slot).map(|i| &self.nodes[i])
    }

    /// Whether every slot has an owner.
    pub fn is_complete(&self) -> bool {
        self.owner.iter().all(Option::is_some)
    }

    /// Slot ranges `(start, end)` (inclusive) whose owner in `self` differs from `newer`'s and
    /// whose old owner is no longer a primary in `newer`: slots that moved because their
    /// primary failed (a replica took over), not because they were resharded to a live primary.
    pub fn failed_over(&self, newer: &SlotTable) -> Vec<(NodeAddr, Vec<(u16, u16)>)> {
        let mut out: Vec<(NodeAddr, Vec<(u16, u16)>)> = Vec::new();
        for slot in 0..SLOT_COUNT as u16 {
            let (Some(old), new) = (self.owner_addr(slot), newer.owner_addr(slot)) else {
                continue;
            };
            if new == Some(old) || newer.nodes.contains(old) {
                continue;
            }
            let entry = match out.iter_mut().position(|(a, _)| a == old) {
                Some(i) => &mut out[i].1,
                None => {
                    out.push((old.clone(), Vec::new()));
                    &mut out.last_mut().expect("just pushed").1
                }
            };
            match entry.last_mut() {
                Some((_, end)) if *end + 1 == slot => *end = slot,
                _ => entry.push((slot, slot)),
            }
        }
        out
    }

    /// Parse a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ..], replica..], ..]`.
    /// A node listed with an empty host (Redis does that for the node it asks when it does not
    /// know its own address) is on `asked_host`.
    pub fn from_cluster_slots(reply: &Value, asked_host: &str) -> Result<SlotTable> {
        let bad = |why: &str| StoreError::Unavailable(format!("unexpected CLUSTER SLOTS: {why}"));
        let Value::Array(ranges) = reply else {
            return Err(bad("not an array"));
        };
        let mut table = SlotTable::empty();
        for range in ranges {
            let Value::Array(parts) = range else {
                return Err(bad("range is not an array"));
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return Err(bad("range without start, end and primary"));
            };
            let addr = node_addr(primary, asked_host)
                .ok_or_else(|| bad("primary without host and port"))?;
            for replica in parts.iter().skip(3) {
                if let Some(replica) = match replica {
                    Value::Array(r) => node_addr(r, asked_host),
                    _ => None,
                } {
                    if !table.replicas.contains(&replica) {
                        table.replicas.push(replica);
                    }
                }
            }
            let index = match table.nodes.iter().position(|n| *n == addr) {
                Some(i) => i,
                None => {
                    table.nodes.push(addr);
                    table.nodes.len() - 1
                }
            };
            let (start, end) = (*start as usize, *end as usize);
            if start > end || end >= SLOT_COUNT {
                return Err(bad("slot range out of bounds"));
            }
            for slot in &mut table.owner[start..=end] {
                *slot = Some(index as u16);
            }
        }
        Ok(table)
    }
}

/// `[host, port, id, ..]` of a `CLUSTER SLOTS` node entry.
fn node_addr(entry: &[Value], asked_host: &str) -> Option<NodeAddr> {
    let host = match entry.first()? {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    let host = if host.is_empty() || host == "?" {
        asked_host.to_owned()
    } else {
        host
    };
    let Value::Int(port) = entry.get(1)? else {
        return None;
    };
    Some(NodeAddr {
        host,
        port: u16::try_from(*port).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `redis-cli cluster keyslot`.
        assert_eq!(slot_for_key(b"foo"), 12182);
        assert_eq!(
            slot_for_key(b"{user1000}.following"),
            slot_for_key(b"user1000")
        );
        assert_eq!(slot_for_key(b"123456789"), 12739);
    }

    fn node(port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(b"127.0.0.1".to_vec()),
            Value::Int(port),
            Value::BulkString(format!("id{port}").into_bytes()),
        ])
    }

    fn range(start: i64, end: i64, primary: i64, replica: i64) -> Value {
        Value::Array(vec![
            Value::Int(start),
            Value::Int(end),
            node(primary),
            node(replica),
        ])
    }

    #[test]
    fn failover_is_told_from_resharding() {
        let before = SlotTable::from_cluster_slots(
            &Value::Array(vec![range(0, 8191, 1, 11), range(8192, 16383, 2, 12)]),
            "127.0.0.1",
        )
        .expect("parse");
        assert!(before.is_complete());
        assert_eq!(before.replicas.len(), 2);
        // Node 1 died and its replica 11 took over its slots.
        let promoted = SlotTable::from_cluster_slots(
            &Value::Array(vec![range(0, 8191, 11, 21), range(8192, 16383, 2, 12)]),
            "127.0.0.1",
        )
        .expect("parse");
        let moved = before.failed_over(&promoted);
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].0.port, 1);
        assert_eq!(moved[0].1, vec![(0, 8191)]);
        // Slots resharded from node 1 to node 2, both still primaries: not a failover.
        let resharded = SlotTable::from_cluster_slots(
            &Value::Array(vec![range(0, 99, 1, 11), range(100, 16383, 2, 12)]),
            "127.0.0.1",
        )
        .expect("parse");
        assert!(before.failed_over(&resharded).is_empty());
        assert!(!SlotTable::empty().is_complete());
    }
}
