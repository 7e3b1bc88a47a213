//! Small parse functions for property values, one per kind of value, each with table tests.
//!
//! They know nothing about which property a value belongs to: [`super::validate`] names
//! the field and the value, these functions say what is wrong with it. Surrounding
//! whitespace is trimmed; everything inside must be exact (no signs, no hex, no inner
//! whitespace), because ECS hands the strings to the CNI plugin unchanged and a lenient
//! reading here would accept task definitions the reference rejects.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{IngressFallback, PortRange};

/// What is wrong with one value or one list entry. The `Display` text is the message
/// without the field name; list entries are quoted in brackets as the reference plugin
/// does (`invalid port [x] specified`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid port: must be a decimal number from 1 to 65535")]
    Port,
    #[error("invalid port [{0}] specified: must be a decimal number from 1 to 65535")]
    PortEntry(String),
    #[error("invalid port range [{0}] specified: must be two ports joined by `-`, e.g. 8000-8100")]
    RangeSyntax(String),
    #[error("invalid port range [{0}] specified: the first port is greater than the last")]
    RangeReversed(String),
    #[error("invalid id: must be a decimal number from 0 to 4294967295")]
    Id,
    #[error(
        "invalid IP or CIDR block [{0}] specified: expected an IPv4 or IPv6 address, or a CIDR block such as 10.0.0.0/8"
    )]
    Ip(String),
    #[error("invalid boolean: must be true, false, 1 or 0")]
    Bool,
    #[error("invalid ingress fallback: must be refuse or app")]
    IngressFallback,
}

/// Values quoted in messages are cut to this many characters: a 10,000-entry list with one
/// bad entry should print the entry, not the list.
const CLIP_CHARS: usize = 100;

/// `s`, or its first [`CLIP_CHARS`] characters and the total length.
pub fn clip(s: &str) -> String {
    match s.char_indices().nth(CLIP_CHARS) {
        None => s.to_owned(),
        Some((end, _)) => format!("{}… ({} bytes)", &s[..end], s.len()),
    }
}

/// Digits only, at least one: `str::parse` alone would accept a leading `+`.
fn decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn port_number(s: &str) -> Option<u16> {
    decimal::<u16>(s).filter(|&p| p != 0)
}

/// A TCP port: decimal 1–65535.
pub fn parse_port(s: &str) -> Result<u16, ParseError> {
    port_number(s.trim()).ok_or(ParseError::Port)
}

/// A uid or gid: decimal, the full `u32` range (0 is root and is allowed).
pub fn parse_id(s: &str) -> Result<u32, ParseError> {
    decimal(s.trim()).ok_or(ParseError::Id)
}

/// `1`/`0`/`true`/`false`, case-insensitive, as the EKS init container reads
/// `APPMESH_ENABLE_IPV6`.
pub fn parse_bool(s: &str) -> Result<bool, ParseError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(ParseError::Bool),
    }
}

/// `refuse` or `app`, exactly as written (lowercase, like every other configuration word).
pub fn parse_ingress_fallback(s: &str) -> Result<IngressFallback, ParseError> {
    let s = s.trim();
    IngressFallback::ALL.into_iter().find(|f| f.name() == s).ok_or(ParseError::IngressFallback)
}

/// Splits a comma-separated list, trimming each entry and dropping empty ones, so `""`,
/// `" "` and `"80,,90,"` are all fine.
pub fn list_entries(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|e| !e.is_empty())
}

/// One entry of a port list: a port or an inclusive range `a-b`.
pub fn parse_port_entry(entry: &str) -> Result<PortRange, ParseError> {
    let entry = entry.trim();
    match entry.split_once('-') {
        None => port_number(entry).map(PortRange::single).ok_or_else(|| ParseError::PortEntry(clip(entry))),
        Some((a, b)) => {
            let (a, b) = (a.trim(), b.trim());
            // A leading `-` reads as a negative number, not as a range.
            if a.is_empty() {
                return Err(ParseError::PortEntry(clip(entry)));
            }
            if b.is_empty() || b.contains('-') {
                return Err(ParseError::RangeSyntax(clip(entry)));
            }
            let start = port_number(a).ok_or_else(|| ParseError::PortEntry(clip(a)))?;
            let end = port_number(b).ok_or_else(|| ParseError::PortEntry(clip(b)))?;
            if start > end {
                return Err(ParseError::RangeReversed(clip(entry)));
            }
            Ok(PortRange { start, end })
        }
    }
}

/// A comma-separated port list, each entry parsed on its own, in order, so that every bad
/// entry is reported and warnings can point at the entry they are about.
pub fn parse_port_list(s: &str) -> Vec<Result<PortRange, ParseError>> {
    list_entries(s).map(parse_port_entry).collect()
}

/// One IP address or CIDR block, as written: host bits are kept so the caller can warn
/// before normalising. A bare address is a host route (/32 or /128).
pub fn parse_ip_entry(entry: &str) -> Result<IpNet, ParseError> {
    let entry = entry.trim();
    entry
        .parse::<IpNet>()
        .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| ParseError::Ip(clip(entry)))
}

/// A comma-separated list of IP addresses and CIDR blocks, IPv4 and IPv6 mixed, each entry
/// parsed on its own, in order.
pub fn parse_ip_list(s: &str) -> Vec<Result<IpNet, ParseError>> {
    list_entries(s).map(parse_ip_entry).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u16, end: u16) -> PortRange {
        PortRange { start, end }
    }

    /// The good entries, or the bad ones when there are any.
    fn all_or_errors<T>(entries: Vec<Result<T, ParseError>>) -> Result<Vec<T>, Vec<ParseError>> {
        let (ok, bad): (Vec<_>, Vec<_>) = entries.into_iter().partition(Result::is_ok);
        if bad.is_empty() {
            Ok(ok.into_iter().filter_map(Result::ok).collect())
        } else {
            Err(bad.into_iter().filter_map(Result::err).collect())
        }
    }

    #[test]
    fn ports() {
        let good: &[(&str, u16)] =
            &[("1", 1), ("80", 80), ("65535", 65535), (" 15001 ", 15001), ("\t22\n", 22), ("08080", 8080)];
        for (input, want) in good {
            assert_eq!(parse_port(input), Ok(*want), "{input:?}");
        }
        let bad = [
            "",
            " ",
            "0",
            "00",
            "65536",
            "70000",
            "99999999999999999999",
            "-1",
            "+80",
            "0x50",
            "8 0",
            "80a",
            "eighty",
            "80.0",
            "١٢",
            "80,81",
            "80-81",
        ];
        for input in bad {
            assert_eq!(parse_port(input), Err(ParseError::Port), "{input:?}");
        }
    }

    #[test]
    fn ids() {
        let good: &[(&str, u32)] = &[("0", 0), ("1337", 1337), (" 1337\t", 1337), ("4294967295", u32::MAX)];
        for (input, want) in good {
            assert_eq!(parse_id(input), Ok(*want), "{input:?}");
        }
        for input in ["", "4294967296", "-1", "+1337", "0x539", "13 37", "1337.0", "root", "1e3"] {
            assert_eq!(parse_id(input), Err(ParseError::Id), "{input:?}");
        }
    }

    #[test]
    fn bools() {
        let good: &[(&str, bool)] = &[
            ("1", true),
            ("true", true),
            ("TRUE", true),
            (" True ", true),
            ("0", false),
            ("false", false),
            ("False", false),
        ];
        for (input, want) in good {
            assert_eq!(parse_bool(input), Ok(*want), "{input:?}");
        }
        for input in ["", "yes", "no", "on", "2", "tru", "-1"] {
            assert_eq!(parse_bool(input), Err(ParseError::Bool), "{input:?}");
        }
    }

    #[test]
    fn ingress_fallbacks() {
        let good: &[(&str, IngressFallback)] =
            &[("refuse", IngressFallback::Refuse), ("app", IngressFallback::App), (" app\t", IngressFallback::App)];
        for (input, want) in good {
            assert_eq!(parse_ingress_fallback(input), Ok(*want), "{input:?}");
        }
        for input in ["", "App", "REFUSE", "drop", "application", "refuse,app", "0", "1"] {
            assert_eq!(parse_ingress_fallback(input), Err(ParseError::IngressFallback), "{input:?}");
        }
    }

    #[test]
    fn port_lists() {
        let good: &[(&str, Vec<PortRange>)] = &[
            ("", vec![]),
            (" , ,", vec![]),
            ("9080", vec![r(9080, 9080)]),
            ("80, 443 ,8080", vec![r(80, 80), r(443, 443), r(8080, 8080)]),
            ("80,,90,", vec![r(80, 80), r(90, 90)]),
            ("8000-8100", vec![r(8000, 8100)]),
            ("8000 - 8100", vec![r(8000, 8100)]),
            ("5-5", vec![r(5, 5)]),
            ("1-65535", vec![r(1, 65535)]),
            ("80,80", vec![r(80, 80), r(80, 80)]),
        ];
        for (input, want) in good {
            assert_eq!(all_or_errors(parse_port_list(input)).as_ref(), Ok(want), "{input:?}");
        }
        let bad: &[(&str, Vec<ParseError>)] = &[
            ("0", vec![ParseError::PortEntry("0".into())]),
            ("65536", vec![ParseError::PortEntry("65536".into())]),
            ("80 81", vec![ParseError::PortEntry("80 81".into())]),
            ("80;81", vec![ParseError::PortEntry("80;81".into())]),
            ("8100-8000", vec![ParseError::RangeReversed("8100-8000".into())]),
            ("0-10", vec![ParseError::PortEntry("0".into())]),
            ("10-70000", vec![ParseError::PortEntry("70000".into())]),
            ("8000-", vec![ParseError::RangeSyntax("8000-".into())]),
            ("-8000", vec![ParseError::PortEntry("-8000".into())]),
            ("-", vec![ParseError::PortEntry("-".into())]),
            ("80--90", vec![ParseError::RangeSyntax("80--90".into())]),
            ("1-2-3", vec![ParseError::RangeSyntax("1-2-3".into())]),
            ("x,80,y", vec![ParseError::PortEntry("x".into()), ParseError::PortEntry("y".into())]),
        ];
        for (input, want) in bad {
            assert_eq!(all_or_errors(parse_port_list(input)).as_ref(), Err(want), "{input:?}");
        }
    }

    #[test]
    fn ip_lists() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let good: &[(&str, Vec<IpNet>)] = &[
            ("", vec![]),
            ("169.254.170.2,169.254.169.254", vec![net("169.254.170.2/32"), net("169.254.169.254/32")]),
            (" 10.0.0.0/8 , 2001:db8::/32 ", vec![net("10.0.0.0/8"), net("2001:db8::/32")]),
            ("::1", vec![net("::1/128")]),
            ("::ffff:10.0.0.1", vec![net("::ffff:10.0.0.1/128")]),
            // Host bits are kept as written; the caller warns and normalises.
            ("10.1.2.3/8", vec![net("10.1.2.3/8")]),
            ("0.0.0.0/0", vec![net("0.0.0.0/0")]),
        ];
        for (input, want) in good {
            assert_eq!(all_or_errors(parse_ip_list(input)).as_ref(), Ok(want), "{input:?}");
        }
        let bad: &[(&str, Vec<ParseError>)] = &[
            ("10.0.0", vec![ParseError::Ip("10.0.0".into())]),
            ("10.0.0.256", vec![ParseError::Ip("10.0.0.256".into())]),
            ("010.0.0.1", vec![ParseError::Ip("010.0.0.1".into())]),
            ("10.0.0.0/33", vec![ParseError::Ip("10.0.0.0/33".into())]),
            ("2001:db8::/129", vec![ParseError::Ip("2001:db8::/129".into())]),
            ("10.0.0.0/", vec![ParseError::Ip("10.0.0.0/".into())]),
            ("10.0.0.1 /8", vec![ParseError::Ip("10.0.0.1 /8".into())]),
            ("fe80::1%eth0", vec![ParseError::Ip("fe80::1%eth0".into())]),
            ("example.com", vec![ParseError::Ip("example.com".into())]),
            ("10.0.0.1-10.0.0.9", vec![ParseError::Ip("10.0.0.1-10.0.0.9".into())]),
            ("a,10.0.0.1,b", vec![ParseError::Ip("a".into()), ParseError::Ip("b".into())]),
        ];
        for (input, want) in bad {
            assert_eq!(all_or_errors(parse_ip_list(input)).as_ref(), Err(want), "{input:?}");
        }
    }

    #[test]
    fn messages() {
        assert_eq!(ParseError::Port.to_string(), "invalid port: must be a decimal number from 1 to 65535");
        assert_eq!(
            ParseError::PortEntry("x".into()).to_string(),
            "invalid port [x] specified: must be a decimal number from 1 to 65535"
        );
        assert_eq!(
            ParseError::Ip("x".into()).to_string(),
            "invalid IP or CIDR block [x] specified: expected an IPv4 or IPv6 address, or a CIDR block such as 10.0.0.0/8"
        );
    }
}
