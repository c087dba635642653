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

/// Owner of each slot, as an index into `nodes`.
#[derive(Debug, Clone)]
pub struct SlotTable {
    pub nodes: Vec<NodeAddr>,
    owner: Vec<Option<u16>>,
}

impl SlotTable {
    pub fn owner(&self, slot: u16) -> Option<usize> {
        self.owner
            .get(slot as usize)
            .copied()
            .flatten()
            .map(usize::from)
    }

    /// Parse a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ..], replica..], ..]`.
    pub fn from_cluster_slots(reply: &Value) -> Result<SlotTable> {
        let bad = |why: &str| StoreError::Unavailable(format!("unexpected CLUSTER SLOTS: {why}"));
        let Value::Array(ranges) = reply else {
            return Err(bad("not an array"));
        };
        let mut table = SlotTable {
            nodes: Vec::new(),
            owner: vec![None; SLOT_COUNT],
        };
        for range in ranges {
            let Value::Array(parts) = range else {
                return Err(bad("range is not an array"));
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return Err(bad("range without start, end and primary"));
            };
            let host = match primary.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => return Err(bad("primary without host")),
            };
            let Some(Value::Int(port)) = primary.get(1) else {
                return Err(bad("primary without port"));
            };
            let addr = NodeAddr {
                host,
                port: u16::try_from(*port).map_err(|_| bad("port out of range"))?,
            };
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
}
