//! Parsing `CLUSTER NODES` and `redis-cli --json CLUSTER SLOTS` output.

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u32 = 16384;

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// 40-hex node id.
    pub id: String,
    /// Client port from `ip:port@cport`.
    pub port: u16,
    /// Flags such as `myself`, `master`, `slave`, `fail?`, `fail`.
    pub flags: Vec<String>,
    /// For replicas: the id of their primary.
    pub master_id: Option<String>,
    /// Owned slot ranges (inclusive); importing/migrating markers are skipped.
    pub slots: Vec<(u16, u16)>,
}

impl NodeEntry {
    /// Flags contain `fail` or `fail?`.
    pub fn failing(&self) -> bool {
        self.flags.iter().any(|f| f.starts_with("fail"))
    }
    /// A primary not flagged `fail`/`fail?`.
    pub fn is_live_primary(&self) -> bool {
        self.flags.iter().any(|f| f == "master") && !self.failing()
    }
    /// A replica not flagged `fail`/`fail?`.
    pub fn is_live_replica(&self) -> bool {
        self.flags.iter().any(|f| f == "slave") && !self.failing()
    }
}

/// Parse `CLUSTER NODES` output. Lines that do not parse are skipped.
pub fn parse_cluster_nodes(text: &str) -> Vec<NodeEntry> {
    text.lines().filter_map(parse_nodes_line).collect()
}

fn parse_nodes_line(line: &str) -> Option<NodeEntry> {
    let mut f = line.split_whitespace();
    let id = f.next()?.to_owned();
    // "127.0.0.1:7000@17000" or with a hostname suffix "…@17000,host".
    let addr = f.next()?;
    let addr = addr.split(',').next()?.split('@').next()?;
    let port = addr.rsplit(':').next()?.parse().ok()?;
    let flags = f.next()?.split(',').map(str::to_owned).collect();
    let master = f.next()?;
    let master_id = (master != "-").then(|| master.to_owned());
    // ping-sent, pong-recv, config-epoch, link-state
    for _ in 0..4 {
        f.next()?;
    }
    let slots = f
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|x| (x, x)),
        })
        .collect();
    Some(NodeEntry {
        id,
        port,
        flags,
        master_id,
        slots,
    })
}

/// True when the inclusive ranges cover every slot `0..16384` exactly once.
pub fn covers_all_slots(ranges: &[(u16, u16)]) -> bool {
    let mut r = ranges.to_vec();
    r.sort_unstable();
    let mut next = 0u32;
    for (a, b) in r {
        if u32::from(a) != next || b < a {
            return false;
        }
        next = u32::from(b) + 1;
    }
    next == SLOTS
}

/// One entry of `CLUSTER SLOTS`: an inclusive slot range, its primary port and replica ports.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotRange {
    /// First slot.
    pub start: u16,
    /// Last slot (inclusive).
    pub end: u16,
    /// Primary's port.
    pub primary: u16,
    /// Replica ports, sorted.
    pub replicas: Vec<u16>,
}

/// Parse `redis-cli --json CLUSTER SLOTS` output into ranges sorted by start slot.
pub fn parse_cluster_slots_json(text: &str) -> Result<Vec<SlotRange>, String> {
    let mut p = Json {
        s: text.as_bytes(),
        i: 0,
    };
    let v = p.value()?;
    let bad = || format!("unexpected CLUSTER SLOTS reply: {text}");
    let J::Arr(entries) = v else {
        return Err(bad());
    };
    let mut out = Vec::new();
    for e in entries {
        let J::Arr(items) = e else { return Err(bad()) };
        let (Some(J::Num(a)), Some(J::Num(b))) = (items.first(), items.get(1)) else {
            return Err(bad());
        };
        let mut ports = Vec::new();
        for node in &items[2..] {
            let J::Arr(n) = node else { return Err(bad()) };
            let Some(J::Num(port)) = n.get(1) else {
                return Err(bad());
            };
            ports.push(u16::try_from(*port).map_err(|_| bad())?);
        }
        if ports.is_empty() {
            return Err(bad());
        }
        let primary = ports.remove(0);
        ports.sort_unstable();
        out.push(SlotRange {
            start: u16::try_from(*a).map_err(|_| bad())?,
            end: u16::try_from(*b).map_err(|_| bad())?,
            primary,
            replicas: ports,
        });
    }
    out.sort();
    Ok(out)
}

/// Just enough JSON for redis-cli's `--json` output.
enum J {
    Arr(Vec<J>),
    Num(i64),
    Other,
}

struct Json<'a> {
    s: &'a [u8],
    i: usize,
}

impl Json<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("JSON: {what} at byte {}", self.i))
    }

    fn value(&mut self) -> Result<J, String> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'[') => {
                self.i += 1;
                let mut v = Vec::new();
                loop {
                    self.ws();
                    if self.s.get(self.i) == Some(&b']') {
                        self.i += 1;
                        return Ok(J::Arr(v));
                    }
                    if !v.is_empty() {
                        self.expect(b',')?;
                    }
                    v.push(self.value()?);
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut first = true;
                loop {
                    self.ws();
                    if self.s.get(self.i) == Some(&b'}') {
                        self.i += 1;
                        return Ok(J::Other);
                    }
                    if !first {
                        self.expect(b',')?;
                    }
                    first = false;
                    self.value()?;
                    self.ws();
                    self.expect(b':')?;
                    self.value()?;
                }
            }
            Some(b'"') => {
                self.i += 1;
                while let Some(&c) = self.s.get(self.i) {
                    self.i += if c == b'\\' { 2 } else { 1 };
                    if c == b'"' {
                        return Ok(J::Other);
                    }
                }
                self.err("unterminated string")
            }
            Some(c) if *c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                self.i += 1;
                while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("x");
                t.parse().map(J::Num).or_else(|_| self.err("bad number"))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                while self.s.get(self.i).is_some_and(u8::is_ascii_alphabetic) {
                    self.i += 1;
                }
                Ok(J::Other)
            }
            _ => self.err("unexpected input"),
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            self.err(&format!("expected '{}'", c as char))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
35d6 127.0.0.1:21003@31003 master - 0 1795432842592 3 connected 10923-16383
f674 127.0.0.1:21006@31006 slave 35d6 0 1795432842492 6 connected
c355 127.0.0.1:21001@31001,host myself,master - 0 1795432842393 1 connected 0-5460 [5461->-d706]
d706 127.0.0.1:21002@31002 master,fail - 0 1795432842692 2 disconnected 5461 5462-10922
";

    #[test]
    fn parses_cluster_nodes() {
        let n = parse_cluster_nodes(NODES);
        assert_eq!(n.len(), 4);
        assert_eq!(n[0].port, 21003);
        assert!(n[0].is_live_primary());
        assert_eq!(n[1].master_id.as_deref(), Some("35d6"));
        assert!(n[1].is_live_replica());
        assert_eq!(n[2].port, 21001);
        assert_eq!(n[2].slots, vec![(0, 5460)]);
        assert!(n[3].failing() && !n[3].is_live_primary());
        let all: Vec<_> = n.iter().flat_map(|e| e.slots.clone()).collect();
        assert!(covers_all_slots(&all));
        assert!(!covers_all_slots(&all[1..]));
    }

    #[test]
    fn parses_cluster_slots_json() {
        let text = r#"[[5461,10922,["127.0.0.1",21002,"d7",{}],["127.0.0.1",21005,"36",{"hostname":"h"}]],
            [0,5460,["127.0.0.1",21001,"c3",{}]]]"#;
        let s = parse_cluster_slots_json(text).expect("parse");
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].start, s[0].end, s[0].primary), (0, 5460, 21001));
        assert!(s[0].replicas.is_empty());
        assert_eq!(s[1].replicas, vec![21005]);
        assert!(parse_cluster_slots_json("ERR nope").is_err());
    }
}
