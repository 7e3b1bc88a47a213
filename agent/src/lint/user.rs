//! A container definition's `user` (`user`, `uid`, `user:group`, `uid:gid`, `user:gid`,
//! `uid:group`) and whether it makes the container's traffic exempt from interception.

use std::fmt;

use crate::config::ProxyConfig;

/// A user or group as written: a number, or a name only the image's `/etc/passwd` or
/// `/etc/group` can resolve (intercept never sees the image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Id<'a> {
    Numeric(u32),
    Name(&'a str),
}

impl<'a> Id<'a> {
    fn parse(s: &'a str) -> Id<'a> {
        // Only plain decimal counts as numeric; Docker would resolve "+1" as a name too.
        match s.parse::<u32>() {
            Ok(n) if s.bytes().all(|b| b.is_ascii_digit()) => Id::Numeric(n),
            _ => Id::Name(s),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct User<'a> {
    pub(super) user: Id<'a>,
    /// `None`: the process gets the user's primary group from the image.
    pub(super) group: Option<Id<'a>>,
}

pub(super) fn parse(s: &str) -> Result<User<'_>, &'static str> {
    let (user, group) = match s.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (s, None),
    };
    if user.is_empty() {
        return Err("has no user part: write \"uid\" or \"uid:gid\", e.g. \"1337\"");
    }
    if group.is_some_and(str::is_empty) {
        return Err("has an empty group after ':': write \"uid:gid\", e.g. \"1337:1337\", or leave out the ':'");
    }
    if group.is_some_and(|g| g.contains(':')) {
        return Err("has more than one ':': write \"uid\" or \"uid:gid\"");
    }
    if s.chars().any(char::is_whitespace) {
        return Err("contains whitespace: write \"uid\" or \"uid:gid\" without spaces");
    }
    Ok(User { user: Id::parse(user), group: group.map(Id::parse) })
}

/// Whether a container running as some `user` is exempt from egress interception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Exemption {
    /// Exempt; the text says by which identity (`uid 1337 (IgnoredUID)`).
    Exempt(String),
    NotExempt,
    /// Depends on a name or primary group that only the image can resolve; the text says which.
    Unknown(String),
}

impl fmt::Display for Id<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Numeric(n) => write!(f, "{n}"),
            Id::Name(name) => write!(f, "\"{name}\""),
        }
    }
}

pub(super) fn exemption(user: &User<'_>, config: &ProxyConfig) -> Exemption {
    let mut unknown = Vec::new();
    if !config.ignored_uids.is_empty() {
        let uids = ids(&config.ignored_uids);
        match user.user {
            Id::Numeric(n) if config.ignored_uids.contains(&n) => {
                return Exemption::Exempt(format!("uid {n} (IgnoredUID)"));
            }
            Id::Numeric(_) => {}
            Id::Name(name) => {
                unknown.push(format!("the user name \"{name}\" may or may not be uid {uids} (IgnoredUID)"))
            }
        }
    }
    if !config.ignored_gids.is_empty() {
        let gids = ids(&config.ignored_gids);
        match user.group {
            Some(Id::Numeric(n)) if config.ignored_gids.contains(&n) => {
                return Exemption::Exempt(format!("gid {n} (IgnoredGID)"));
            }
            Some(Id::Numeric(_)) => {}
            Some(Id::Name(name)) => {
                unknown.push(format!("the group name \"{name}\" may or may not be gid {gids} (IgnoredGID)"))
            }
            None => unknown.push(format!(
                "no group is given, so the user's primary group in the image decides whether it is gid {gids} \
                 (IgnoredGID)"
            )),
        }
    }
    if unknown.is_empty() { Exemption::NotExempt } else { Exemption::Unknown(unknown.join("; ")) }
}

/// `1337`, or `1337 or 1338` for several.
pub(super) fn ids(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(uid: Option<u32>, gid: Option<u32>) -> ProxyConfig {
        ProxyConfig {
            ignored_uids: uid.into_iter().collect(),
            ignored_gids: gid.into_iter().collect(),
            ..ProxyConfig::new(15001)
        }
    }

    #[test]
    fn parses_every_ecs_form() {
        use Id::*;
        let table: [(&str, Id<'_>, Option<Id<'_>>); 6] = [
            ("1337", Numeric(1337), None),
            ("1337:1338", Numeric(1337), Some(Numeric(1338))),
            ("envoy", Name("envoy"), None),
            ("envoy:mesh", Name("envoy"), Some(Name("mesh"))),
            ("envoy:1338", Name("envoy"), Some(Numeric(1338))),
            ("1337:mesh", Numeric(1337), Some(Name("mesh"))),
        ];
        for (input, user, group) in table {
            assert_eq!(parse(input), Ok(User { user, group }), "{input}");
        }
    }

    #[test]
    fn numbers_with_signs_or_beyond_u32_are_names() {
        assert_eq!(parse("+1337").unwrap().user, Id::Name("+1337"));
        assert_eq!(parse("4294967296").unwrap().user, Id::Name("4294967296"));
    }

    #[test]
    fn rejects_malformed_users() {
        for input in ["", ":1337", "1337:", "1:2:3", "13 37"] {
            assert!(parse(input).is_err(), "{input:?}");
        }
    }

    #[test]
    fn exemption_by_uid_or_gid() {
        let uid = config(Some(1337), None);
        assert_eq!(exemption(&parse("1337").unwrap(), &uid), Exemption::Exempt("uid 1337 (IgnoredUID)".into()));
        assert_eq!(exemption(&parse("1000").unwrap(), &uid), Exemption::NotExempt);
        assert!(matches!(exemption(&parse("envoy").unwrap(), &uid), Exemption::Unknown(_)));

        let gid = config(None, Some(1337));
        assert_eq!(exemption(&parse("0:1337").unwrap(), &gid), Exemption::Exempt("gid 1337 (IgnoredGID)".into()));
        assert_eq!(exemption(&parse("1337:0").unwrap(), &gid), Exemption::NotExempt);
        // The primary group lives in the image.
        assert!(matches!(exemption(&parse("1337").unwrap(), &gid), Exemption::Unknown(_)));

        // Either identity suffices, as in the reference rules (uid-owner, then gid-owner).
        let both = config(Some(1337), Some(2000));
        assert!(matches!(exemption(&parse("envoy:2000").unwrap(), &both), Exemption::Exempt(_)));
        assert_eq!(exemption(&parse("1000:1000").unwrap(), &both), Exemption::NotExempt);
    }
}
