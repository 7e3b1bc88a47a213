//! The list properties (ids, ports, IP networks): each entry judged on its own, repeats and
//! overlaps named with the entry they repeat, and a long list's diagnostics cut to a screenful.

use ipnet::IpNet;

use super::*;

/// Per-entry diagnostics of one list, by severity: how many were shown, how many held back.
#[derive(Default)]
struct EntryDiagnostics {
    errors: (usize, usize),
    warnings: (usize, usize),
}

impl<'a> Validation<'a> {
    /// An error for every bad entry and a warning for every repeated one; several ids in a
    /// task definition work only where intercept installs it (ECS's plugin takes one).
    pub(super) fn id_list(&mut self, p: &RawProperty) -> Slot<Vec<u32>> {
        let entries: Vec<&str> = list_entries(&p.value).collect();
        if entries.is_empty() {
            return Slot::Absent;
        }
        let mut good: Vec<u32> = Vec::with_capacity(entries.len());
        let mut bad = false;
        let mut counts = EntryDiagnostics::default();
        let several = entries.len() > 1;
        for entry in entries {
            match parse::parse_id(entry) {
                Err(e) => {
                    let hint = if entry.trim().contains(char::is_whitespace) || entry.contains(';') {
                        " (separate several ids with commas)"
                    } else {
                        ""
                    };
                    let which = if several { format!(": [{}]", clip(entry)) } else { String::new() };
                    let message = format!("{e}{hint}{which}");
                    self.entry(&mut counts, p, Severity::Error, message);
                    bad = true;
                }
                Ok(id) if good.contains(&id) => {
                    self.entry(&mut counts, p, Severity::Warning, format!("[{id}] is listed more than once"));
                }
                Ok(id) => good.push(id),
            }
        }
        self.hidden_entries(p, &counts);
        if good.len() > 1 && in_task_definition(p) && !bad {
            self.warning(
                p.field(),
                Some(&p.value),
                "several ids: ECS's interception takes one, so this works only where intercept installs the task",
            );
        }
        if bad { Slot::Invalid } else { Slot::Valid(good) }
    }

    /// An error for every bad entry and a warning for every entry that repeats or overlaps
    /// an earlier good one (they are merged), in entry order.
    pub(super) fn port_list(&mut self, p: &RawProperty) -> Slot<Vec<PortRange>> {
        let entries = parse::parse_port_list(&p.value);
        if entries.is_empty() {
            return Slot::Absent;
        }
        let mut good: Vec<PortRange> = Vec::with_capacity(entries.len());
        let mut coverage = Coverage::new();
        let mut bad = false;
        let mut counts = EntryDiagnostics::default();
        for entry in entries {
            match entry {
                Err(e) => {
                    self.entry(&mut counts, p, Severity::Error, e.to_string());
                    bad = true;
                }
                Ok(r) => {
                    if let Some(earlier) = coverage.cover(r, good.len()).map(|i| good[i]) {
                        let message = if earlier == r {
                            format!("[{r}] is listed more than once")
                        } else {
                            format!("[{r}] overlaps [{earlier}]: the two are merged")
                        };
                        self.entry(&mut counts, p, Severity::Warning, message);
                    }
                    good.push(r);
                }
            }
        }
        self.hidden_entries(p, &counts);
        if bad { Slot::Invalid } else { Slot::Valid(good) }
    }

    /// An error for every bad entry, and warnings for host bits (cleared), repeats
    /// (dropped) and IPv6 blocks while IPv6 interception is off (no effect), in entry order.
    pub(super) fn ip_list(&mut self, p: &RawProperty, ipv6: bool) -> Slot<Vec<IpNet>> {
        let mut good: Vec<IpNet> = Vec::new();
        let mut seen: HashSet<IpNet> = HashSet::new();
        let mut bad = false;
        let mut counts = EntryDiagnostics::default();
        for entry in parse::parse_ip_list(&p.value) {
            let net = match entry {
                Ok(net) => net,
                Err(e) => {
                    self.entry(&mut counts, p, Severity::Error, e.to_string());
                    bad = true;
                    continue;
                }
            };
            let net = match ipv4_mapped(net) {
                Some(v4) => {
                    self.entry(
                        &mut counts,
                        p,
                        Severity::Warning,
                        format!(
                            "[{net}] is an IPv4-mapped IPv6 block: connections to such addresses are IPv4 \
                             connections and are decided as IPv4, so using {v4}"
                        ),
                    );
                    v4
                }
                None => net,
            };
            let normal = net.trunc();
            if normal != net {
                self.entry(
                    &mut counts,
                    p,
                    Severity::Warning,
                    format!("CIDR block [{net}] has host bits set: using {normal}"),
                );
            }
            if !seen.insert(normal) {
                self.entry(&mut counts, p, Severity::Warning, format!("[{normal}] is listed more than once"));
            }
            if !ipv6 && matches!(net, IpNet::V6(_)) {
                self.entry(
                    &mut counts,
                    p,
                    Severity::Warning,
                    format!("[{normal}] is IPv6 but IPv6 interception is disabled: it has no effect"),
                );
            }
            good.push(normal);
        }
        self.hidden_entries(p, &counts);
        if bad { Slot::Invalid } else { Slot::Valid(good) }
    }

    /// A diagnostic about one entry of a list, unless [`LIST_DIAGNOSTICS_SHOWN`] of its
    /// severity have been shown for that list already.
    fn entry(&mut self, counts: &mut EntryDiagnostics, p: &RawProperty, severity: Severity, message: String) {
        let (shown, hidden) = match severity {
            Severity::Error => &mut counts.errors,
            Severity::Warning => &mut counts.warnings,
        };
        if *shown == LIST_DIAGNOSTICS_SHOWN {
            *hidden += 1;
            return;
        }
        *shown += 1;
        match severity {
            Severity::Error => self.error(p.field(), Some(&p.value), message),
            Severity::Warning => self.warning(p.field(), Some(&p.value), message),
        }
    }

    /// A summary of the per-entry diagnostics [`Self::entry`] held back, by severity.
    fn hidden_entries(&mut self, p: &RawProperty, counts: &EntryDiagnostics) {
        let (_, errors) = counts.errors;
        if errors > 0 {
            let message = format!("{errors} more invalid entries not shown (the first {LIST_DIAGNOSTICS_SHOWN} are)");
            self.error(p.field(), Some(&p.value), message);
        }
        let (_, warnings) = counts.warnings;
        if warnings > 0 {
            let message =
                format!("{warnings} more warnings about entries not shown (the first {LIST_DIAGNOSTICS_SHOWN} are)");
            self.warning(p.field(), Some(&p.value), message);
        }
    }
}

/// Which entry of a port list first covered each port, so that a repeated or overlapping
/// entry can name an earlier one. `jump` links each covered port to a later port that may
/// be uncovered (union-find with path halving), so every port is marked once and a list of
/// any length costs about one step per port and per entry, not per pair of entries.
struct Coverage {
    /// 0: uncovered; otherwise the index of the covering entry + 1.
    owner: Vec<usize>,
    /// 0: uncovered; otherwise a later port to look at. Index 65536 stays uncovered, as a
    /// sentinel past every range.
    jump: Vec<u32>,
}

impl Coverage {
    const SIZE: usize = u16::MAX as usize + 2;

    fn new() -> Self {
        Coverage { owner: vec![0; Self::SIZE], jump: vec![0; Self::SIZE] }
    }

    /// The first uncovered port at or after `p`.
    fn find(&mut self, mut p: u32) -> u32 {
        loop {
            let next = self.jump[p as usize];
            if next == 0 {
                return p;
            }
            let after = self.jump[next as usize];
            let skip = if after == 0 { next } else { after };
            self.jump[p as usize] = skip;
            p = skip;
        }
    }

    /// Marks `range` as covered by entry `index`; returns an earlier entry it overlaps.
    fn cover(&mut self, range: PortRange, index: usize) -> Option<usize> {
        let (mut p, end) = (u32::from(range.start), u32::from(range.end));
        let mut earlier = None;
        loop {
            let free = self.find(p);
            if free != p && earlier.is_none() {
                earlier = Some(self.owner[p as usize] - 1);
            }
            if free > end {
                return earlier;
            }
            self.owner[free as usize] = index + 1;
            self.jump[free as usize] = free + 1;
            p = free + 1;
            if p > end {
                return earlier;
            }
        }
    }
}

/// `::ffff:a.b.c.d/n` (n ≥ 96) as the IPv4 block it stands for; written as IPv6 it would
/// match nothing, because the kernel and the decision model see such connections as IPv4.
fn ipv4_mapped(net: IpNet) -> Option<IpNet> {
    let IpNet::V6(v6) = net else { return None };
    let v4 = v6.addr().to_ipv4_mapped()?;
    let prefix = v6.prefix_len().checked_sub(96)?;
    ipnet::Ipv4Net::new(v4, prefix).ok().map(IpNet::V4)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The quadratic definition `Coverage` must agree with.
    fn first_overlap(earlier: &[PortRange], r: PortRange) -> Option<usize> {
        earlier.iter().position(|e| e.start <= r.end && r.start <= e.end)
    }

    #[test]
    fn coverage_names_an_earlier_overlapping_entry() {
        let r = |start, end| PortRange { start, end };
        let entries = [r(80, 80), r(8000, 8100), r(8050, 8200), r(80, 80), r(7000, 9000), r(1, 65535), r(65535, 65535)];
        let mut coverage = Coverage::new();
        let got: Vec<Option<usize>> = entries.iter().enumerate().map(|(i, e)| coverage.cover(*e, i)).collect();
        assert_eq!(got, [None, None, Some(1), Some(0), Some(1), Some(0), Some(5)]);
    }

    proptest! {
        #[test]
        fn coverage_agrees_with_pairwise_comparison(
            entries in prop::collection::vec((1u16.., 0u16..300), 0..60),
            span in 1u16..2000,
        ) {
            // Squeeze the entries into a small span so that they overlap often.
            let entries: Vec<PortRange> = entries
                .into_iter()
                .map(|(start, len)| {
                    let start = start % span + 1;
                    PortRange { start, end: start.saturating_add(len) }
                })
                .collect();
            let mut coverage = Coverage::new();
            for (i, r) in entries.iter().enumerate() {
                let got = coverage.cover(*r, i);
                prop_assert_eq!(got.is_some(), first_overlap(&entries[..i], *r).is_some());
                if let Some(e) = got {
                    prop_assert!(e < i);
                    prop_assert!(entries[e].start <= r.end && r.start <= entries[e].end);
                }
            }
        }
    }
}
