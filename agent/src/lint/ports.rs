//! Port ranges as the lint compares them with the task definition's port mappings.

use crate::config::{PortRange, PortSet};

pub(super) fn parse_range(s: &str) -> Option<PortRange> {
    let (start, end) = s.split_once('-')?;
    let (start, end) = (start.parse().ok()?, end.parse().ok()?);
    (start <= end).then_some(PortRange { start, end })
}

/// The ports of `range` that `set` does not contain.
pub(super) fn difference(range: PortRange, set: &PortSet) -> Vec<PortRange> {
    let mut left = Vec::new();
    let mut next = u32::from(range.start);
    for r in set.ranges() {
        if u32::from(r.end) < next || r.start > range.end {
            continue;
        }
        if u32::from(r.start) > next {
            left.push(PortRange { start: next as u16, end: r.start - 1 });
        }
        next = u32::from(r.end) + 1;
    }
    if next <= u32::from(range.end) {
        left.push(PortRange { start: next as u16, end: range.end });
    }
    left
}

pub(super) fn intersection(range: PortRange, set: &PortSet) -> Vec<PortRange> {
    set.ranges()
        .iter()
        .filter_map(|r| {
            let (start, end) = (r.start.max(range.start), r.end.min(range.end));
            (start <= end).then_some(PortRange { start, end })
        })
        .collect()
}
