//! The one mapping between the decision model's vocabulary and the counters every backend
//! keeps.
//!
//! The eBPF programs count into `COUNTERS` at the index of a [`Counter`]; the rule backends'
//! rules each carry the [`Effect`] their plan gave them, and their packet counters are added
//! up under that effect's counter. So `status`, `verify` and the daemon's metrics read "how
//! many connections were redirected" the same way whatever the backend, and never from a
//! rule's text.

use std::collections::BTreeMap;

pub use intercept_common::Counter;

use crate::model::{Direction, Effect, Reason};

/// Counter values by what they count.
pub type Counters = BTreeMap<Counter, u64>;

/// Every decision a backend counts, and its counter. [`Reason::LocalSource`] and
/// [`Reason::NotAppPort`] have none: no backend looks at those connections at all.
const COUNTED: [(Effect, Counter); 11] = [
    (Effect::Redirect(Direction::Egress), Counter::Redirected),
    (Effect::RedirectDns, Counter::DnsRedirected),
    (Effect::Untouched(Reason::NotIncluded), Counter::NotIncluded),
    (Effect::Redirect(Direction::Ingress), Counter::IngressSteered),
    (Effect::Untouched(Reason::IgnoredUid), Counter::IgnoredUid),
    (Effect::Untouched(Reason::IgnoredGid), Counter::IgnoredGid),
    (Effect::Untouched(Reason::IgnoredPort), Counter::IgnoredPort),
    (Effect::Untouched(Reason::IgnoredIp), Counter::IgnoredIp),
    (Effect::Untouched(Reason::LocalDestination), Counter::LocalDestination),
    (Effect::Untouched(Reason::NotTcp), Counter::NotTcp),
    (Effect::Untouched(Reason::Ipv6Disabled), Counter::Ipv6Disabled),
];

/// The counter that counts the connections decided by `effect`, if any backend counts them.
pub fn counter_of(effect: Effect) -> Option<Counter> {
    COUNTED.iter().find(|(e, _)| *e == effect).map(|(_, c)| *c)
}

/// Adds `packets` to the counter of `effect` (created at 0 when absent, so a rule that is
/// installed but saw nothing still shows up).
pub fn add(counters: &mut Counters, effect: Effect, packets: u64) {
    if let Some(counter) = counter_of(effect) {
        *counters.entry(counter).or_default() += packets;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_counts_one_decision() {
        for (i, (effect, counter)) in COUNTED.iter().enumerate() {
            assert!(COUNTED[..i].iter().all(|(e, c)| e != effect && c != counter), "{effect:?} or {counter:?} twice");
            assert_eq!(counter_of(*effect), Some(*counter));
        }
        assert_eq!(counter_of(Effect::Untouched(Reason::LocalSource)), None);
    }

    #[test]
    fn installed_rules_that_saw_nothing_still_count() {
        let mut counters = Counters::new();
        add(&mut counters, Effect::Untouched(Reason::IgnoredUid), 0);
        add(&mut counters, Effect::Redirect(Direction::Egress), 3);
        add(&mut counters, Effect::Redirect(Direction::Egress), 4);
        add(&mut counters, Effect::Untouched(Reason::NotAppPort), 9);
        assert_eq!(counters, Counters::from([(Counter::Redirected, 7), (Counter::IgnoredUid, 0)]));
    }
}
