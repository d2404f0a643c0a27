//! Who may come in, and who is really asking: the `--allow`/`--deny` IP filter (seed:
//! express-ipfilter) and the trusted-proxy rules that turn `X-Forwarded-For` into a client
//! address.
//!
//! Both are compiled once from their rule strings and then only read, so they can be shared
//! freely between connections. Every rule becomes an inclusive integer range (`u32` for IPv4,
//! `u128` for IPv6); the ranges are sorted and overlapping or adjacent ones merged, so a
//! lookup is one binary search, O(log n) in the number of rules, and allocates nothing.
//!
//! # Rules
//!
//! Surrounding whitespace is ignored. A rule is one of:
//! - a single address: `127.0.0.1`, `::1`;
//! - a CIDR block: `10.0.0.0/8`, `fd00::/8`. Host bits set in the address are masked off
//!   rather than refused: `10.1.2.3/8` means `10.0.0.0/8`;
//! - an inclusive range: `192.168.0.1-192.168.0.200`. Both ends are of the same family and the
//!   start is not after the end.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`) are IPv4 addresses wherever they appear: in
//! rules and in the addresses looked up (a dual-stack listener reports IPv4 peers that way).
//! An IPv6 rule lying wholly inside `::ffff:0:0/96` is therefore the IPv4 rule it maps to
//! (`::ffff:10.0.0.0/104` is `10.0.0.0/8`), and any other IPv6 rule matches IPv6 clients only:
//! `::/0` means "every IPv6 client", not "everyone". A range from a mapped address to an
//! unmapped IPv6 one mixes families and is refused. Zone ids (`fe80::1%eth0`) are refused.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The accepted rule forms, spelled out by the errors for rules that do not parse.
const FORMS: &str = "expected an address (`10.0.0.1`, `::1`), a cidr block (`10.0.0.0/8`, \
                     `fd00::/8`) or an inclusive range (`192.168.0.1-192.168.0.200`)";

/// A rule that could not be compiled. `list` names the rule list it came from (`allow`,
/// `deny` or `trusted-proxy`) and `rule` is the rule exactly as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpFilterError {
    /// The rule is empty or only whitespace.
    #[error("empty {list} rule {rule:?}: {}", FORMS)]
    Empty {
        /// The rule list: `allow`, `deny` or `trusted-proxy`.
        list: &'static str,
        /// The rule as given.
        rule: String,
    },
    /// Part of the rule is not an IPv4 or IPv6 address.
    #[error("invalid address {part:?} in {list} rule {rule:?}: {}", FORMS)]
    BadAddress {
        /// The rule list: `allow`, `deny` or `trusted-proxy`.
        list: &'static str,
        /// The rule as given.
        rule: String,
        /// The part that is not an address.
        part: String,
    },
    /// The prefix length of a CIDR block is not a number in range for its address family.
    #[error(
        "invalid prefix length {prefix:?} in {list} rule {rule:?}: expected 0 to 32 after an \
         ipv4 address or 0 to 128 after an ipv6 address, e.g. `10.0.0.0/8` or `fd00::/8`"
    )]
    BadPrefix {
        /// The rule list: `allow`, `deny` or `trusted-proxy`.
        list: &'static str,
        /// The rule as given.
        rule: String,
        /// The text after the `/`.
        prefix: String,
    },
    /// A range with one IPv4 end and one IPv6 end.
    #[error(
        "{list} range {rule:?} mixes ipv4 and ipv6: both ends must be the same family (a mapped \
         address such as `::ffff:10.0.0.1` counts as ipv4), e.g. `192.168.0.1-192.168.0.200`"
    )]
    MixedFamilies {
        /// The rule list: `allow`, `deny` or `trusted-proxy`.
        list: &'static str,
        /// The rule as given.
        rule: String,
    },
    /// A range whose start comes after its end.
    #[error(
        "{list} range {rule:?} ends before it starts: write the lower address first, \
         e.g. `192.168.0.1-192.168.0.200`"
    )]
    ReversedRange {
        /// The rule list: `allow`, `deny` or `trusted-proxy`.
        list: &'static str,
        /// The rule as given.
        rule: String,
    },
}

/// The precompiled `--allow`/`--deny` filter.
///
/// Invariant: a client is permitted exactly when `inside.contains(ip) == inside_permits`.
/// In allow-mode `inside` is the allowed set minus the denied set and `inside_permits` is
/// true; otherwise `inside` is the denied set and `inside_permits` is false (so with no rules
/// at all, `inside` is empty and everyone is permitted).
#[derive(Debug, Clone)]
pub struct IpFilter {
    /// The compiled set that decides; see the type's invariant.
    inside: Sets,
    /// Whether being inside `inside` means being permitted (allow-mode).
    inside_permits: bool,
    /// No rule was given at all.
    empty: bool,
}

impl IpFilter {
    /// Compiles the filter. `allow`: if non-empty, allow-mode: only listed addresses may
    /// enter. `deny`: listed addresses are refused (in allow-mode, deny carves exceptions out
    /// of the allowed set). Both empty: everyone enters.
    ///
    /// # Errors
    ///
    /// [`IpFilterError`] for the first rule that is not an address, a CIDR block or a range
    /// (see the [module docs](self)).
    pub fn new(allow: &[String], deny: &[String]) -> Result<Self, IpFilterError> {
        let allowed = Sets::compile("allow", allow)?;
        let denied = Sets::compile("deny", deny)?;
        let filter = if allow.is_empty() {
            Self {
                inside: denied,
                inside_permits: false,
                empty: deny.is_empty(),
            }
        } else {
            Self {
                inside: allowed.difference(&denied),
                inside_permits: true,
                empty: false,
            }
        };
        Ok(filter)
    }

    /// True when no rule was given at all, so [`IpFilter::permits`] is always true and the
    /// caller may skip the check.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// Whether a client at `ip` may enter. An IPv4-mapped IPv6 address is judged as its
    /// IPv4 form. O(log n) in the number of rules; allocates nothing.
    #[must_use]
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.inside.contains(ip) == self.inside_permits
    }
}

/// The precompiled set of proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone)]
pub struct TrustedProxies {
    /// The trusted addresses.
    trusted: Sets,
    /// No rule was given, so no peer is trusted.
    empty: bool,
}

impl TrustedProxies {
    /// Compiles the trusted-proxy rules (addresses, CIDR blocks or ranges, as for
    /// [`IpFilter`]). Empty: no peer is trusted and `X-Forwarded-For` is always ignored.
    ///
    /// # Errors
    ///
    /// [`IpFilterError`] for the first rule that is not an address, a CIDR block or a range
    /// (see the [module docs](self)).
    pub fn new(cidrs: &[String]) -> Result<Self, IpFilterError> {
        Ok(Self {
            trusted: Sets::compile("trusted-proxy", cidrs)?,
            empty: cidrs.is_empty(),
        })
    }

    /// True when no proxy is trusted, so [`TrustedProxies::client_ip`] always returns the
    /// peer.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// Whether `ip` (an IPv4-mapped address judged as IPv4) is a trusted proxy.
    #[must_use]
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.contains(ip)
    }

    /// The client address: the TCP peer, unless the peer is a trusted proxy, in which case
    /// walk the X-Forwarded-For hops right to left (all X-Forwarded-For header values,
    /// comma-separated, in order) and return the rightmost address that is not a trusted
    /// proxy (if every hop is trusted, the leftmost hop). Garbage hops stop the walk: return
    /// the last trusted/valid address reached. An untrusted peer's X-Forwarded-For is ignored
    /// entirely (anti-spoofing).
    ///
    /// A hop is an address, optionally with a port (`203.0.113.7:4711`, `[2001:db8::1]:443`)
    /// or in brackets (`[2001:db8::1]`); empty list elements (`a,,b`, an empty header) are
    /// skipped; anything else (`unknown`, `_hidden`, bad UTF-8) is garbage. The result is in
    /// canonical form: an IPv4-mapped address comes back as IPv4.
    ///
    /// One pass over the header bytes, allocation-free: the walk from the right is decided
    /// by the last hop that stops it, so the hops are read left to right, remembering only
    /// that hop and the first trusted hop after it.
    #[must_use]
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl Iterator<Item = &'a [u8]>,
    ) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusted.contains(peer) {
            return peer;
        }
        // The rightmost untrusted hop, if the rightmost hop that stops the walk is one.
        let mut untrusted: Option<IpAddr> = None;
        // The leftmost trusted hop to the right of the rightmost stopping hop (of all hops if
        // none stops the walk): where a walk from the right ends when it stops on garbage or
        // runs out of hops.
        let mut first_trusted: Option<IpAddr> = None;
        for value in forwarded_for {
            for hop in value.split(|&b| b == b',') {
                let hop = hop.trim_ascii();
                if hop.is_empty() {
                    continue;
                }
                match parse_hop(hop) {
                    Some(ip) if self.trusted.contains(ip) => {
                        first_trusted = first_trusted.or(Some(ip));
                    }
                    Some(ip) => {
                        untrusted = Some(ip);
                        first_trusted = None;
                    }
                    None => {
                        untrusted = None;
                        first_trusted = None;
                    }
                }
            }
        }
        untrusted.or(first_trusted).unwrap_or(peer)
    }
}

/// One `X-Forwarded-For` hop (already trimmed, non-empty) as a canonical address, or `None`
/// for garbage.
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(hop).ok()?;
    let ip = if let Ok(ip) = text.parse::<IpAddr>() {
        ip
    } else if let Ok(addr) = text.parse::<SocketAddr>() {
        addr.ip() // `203.0.113.7:4711`, `[2001:db8::1]:443`
    } else {
        let inner = text.strip_prefix('[')?.strip_suffix(']')?; // `[2001:db8::1]`
        IpAddr::V6(inner.parse::<Ipv6Addr>().ok()?)
    };
    Some(ip.to_canonical())
}

/// An integer address space: `u32` for IPv4, `u128` for IPv6.
trait Point: Copy + Ord {
    /// The next address, `None` at the top of the space.
    fn next(self) -> Option<Self>;
    /// The previous address, `None` at the bottom of the space.
    fn prev(self) -> Option<Self>;
}

impl Point for u32 {
    fn next(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn prev(self) -> Option<Self> {
        self.checked_sub(1)
    }
}

impl Point for u128 {
    fn next(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn prev(self) -> Option<Self> {
        self.checked_sub(1)
    }
}

/// A set of addresses as inclusive ranges.
///
/// Invariant: sorted by start; every range has `start <= end`; ranges neither overlap nor
/// touch (there is at least one address between one range's end and the next one's start).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RangeSet<T> {
    /// The normalized ranges, `(start, end)` inclusive.
    ranges: Vec<(T, T)>,
}

impl<T: Point> RangeSet<T> {
    /// Normalizes arbitrary ranges (each `start <= end`): sort, then merge overlapping and
    /// adjacent ones.
    fn from_ranges(mut ranges: Vec<(T, T)>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            if let Some(last) = merged.last_mut() {
                let joins = match last.1.next() {
                    Some(after) => start <= after,
                    None => true, // `last` reaches the top of the space: it covers the rest
                };
                if joins {
                    last.1 = last.1.max(end);
                    continue;
                }
            }
            merged.push((start, end));
        }
        merged.shrink_to_fit();
        Self { ranges: merged }
    }

    /// Whether `x` is in the set: one binary search.
    fn contains(&self, x: T) -> bool {
        let after = self.ranges.partition_point(|&(start, _)| start <= x);
        after
            .checked_sub(1)
            .and_then(|i| self.ranges.get(i))
            .is_some_and(|&(_, end)| x <= end)
    }

    /// The addresses in `self` but not in `other`, in normalized form. O(n + m).
    fn difference(&self, other: &Self) -> Self {
        let mut out = Vec::with_capacity(self.ranges.len());
        let mut first = 0; // first range of `other` that may overlap the current range
        for &(start, end) in &self.ranges {
            while other.ranges.get(first).is_some_and(|&(_, e)| e < start) {
                first += 1;
            }
            // The lowest address of [start, end] not yet covered or carved out; `None` once
            // the rest of the range is carved out.
            let mut uncovered = Some(start);
            for &(cut_start, cut_end) in other.ranges.iter().skip(first) {
                let Some(from) = uncovered else { break };
                if cut_start > end {
                    break;
                }
                if cut_start > from {
                    if let Some(to) = cut_start.prev() {
                        out.push((from, to));
                    }
                }
                uncovered = if cut_end >= end { None } else { cut_end.next() };
            }
            if let Some(from) = uncovered {
                out.push((from, end));
            }
        }
        out.shrink_to_fit();
        Self { ranges: out }
    }
}

/// One address set per family.
#[derive(Debug, Clone)]
struct Sets {
    /// IPv4 addresses, including every mapped one named in a rule.
    v4: RangeSet<u32>,
    /// IPv6 addresses; the mapped block is never looked up here.
    v6: RangeSet<u128>,
}

impl Sets {
    /// Compiles a rule list; `list` names it in errors.
    fn compile(list: &'static str, rules: &[String]) -> Result<Self, IpFilterError> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for rule in rules {
            match parse_rule(list, rule)? {
                Span::V4(start, end) => v4.push((start, end)),
                Span::V6(start, end) => v6.push((start, end)),
            }
        }
        Ok(Self {
            v4: RangeSet::from_ranges(v4),
            v6: RangeSet::from_ranges(v6),
        })
    }

    /// Whether `ip`, judged in canonical form, is in the set.
    fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => self.v4.contains(u32::from(a)),
            IpAddr::V6(a) => self.v6.contains(u128::from(a)),
        }
    }

    /// The addresses in `self` but not in `other`.
    fn difference(&self, other: &Self) -> Self {
        Self {
            v4: self.v4.difference(&other.v4),
            v6: self.v6.difference(&other.v6),
        }
    }
}

/// One compiled rule: an inclusive range in one family, `start <= end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Span {
    /// IPv4 addresses (including those written as mapped IPv6).
    V4(u32, u32),
    /// IPv6 addresses.
    V6(u128, u128),
}

impl Span {
    /// The span for an IPv6 range: IPv4 if it lies wholly inside the mapped block.
    fn from_v6(start: u128, end: u128) -> Self {
        let mapped = |x: u128| Ipv6Addr::from(x).to_ipv4_mapped().map(u32::from);
        match (mapped(start), mapped(end)) {
            (Some(start), Some(end)) => Self::V4(start, end),
            _ => Self::V6(start, end),
        }
    }
}

/// Compiles one rule; see the module docs for the forms.
fn parse_rule(list: &'static str, rule: &str) -> Result<Span, IpFilterError> {
    let text = rule.trim();
    if text.is_empty() {
        return Err(IpFilterError::Empty {
            list,
            rule: rule.to_owned(),
        });
    }
    let address = |part: &str| {
        part.trim()
            .parse::<IpAddr>()
            .map_err(|_| IpFilterError::BadAddress {
                list,
                rule: rule.to_owned(),
                part: part.trim().to_owned(),
            })
    };
    if let Some((addr, prefix)) = text.split_once('/') {
        let addr = address(addr)?;
        let bits = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix_text = prefix.trim();
        let prefix = prefix_text
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| prefix_text.parse::<u32>().ok())
            .flatten()
            .filter(|&p| p <= bits)
            .ok_or_else(|| IpFilterError::BadPrefix {
                list,
                rule: rule.to_owned(),
                prefix: prefix_text.to_owned(),
            })?;
        let span = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                let start = u32::from(a) & mask;
                Span::V4(start, start | !mask)
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                let start = u128::from(a) & mask;
                Span::from_v6(start, start | !mask)
            }
        };
        return Ok(span);
    }
    let (start, end) = match text.split_once('-') {
        Some((start, end)) => (address(start)?, address(end)?),
        None => {
            let addr = address(text)?;
            (addr, addr)
        }
    };
    let reversed = || IpFilterError::ReversedRange {
        list,
        rule: rule.to_owned(),
    };
    match (start.to_canonical(), end.to_canonical()) {
        (IpAddr::V4(s), IpAddr::V4(e)) => {
            let (s, e) = (u32::from(s), u32::from(e));
            if s > e {
                return Err(reversed());
            }
            Ok(Span::V4(s, e))
        }
        (IpAddr::V6(s), IpAddr::V6(e)) => {
            let (s, e) = (u128::from(s), u128::from(e));
            if s > e {
                return Err(reversed());
            }
            Ok(Span::from_v6(s, e))
        }
        _ => Err(IpFilterError::MixedFamilies {
            list,
            rule: rule.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn rules(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn filter(allow: &[&str], deny: &[&str]) -> IpFilter {
        IpFilter::new(&rules(allow), &rules(deny)).unwrap()
    }

    // --- the seed's examples -------------------------------------------------------------

    #[test]
    fn it_should_allow_only_the_listed_addresses_in_allow_mode() {
        // ipfilter(['127.0.0.1', ['192.168.0.1', '192.168.0.200']], {mode: 'allow'})
        let f = filter(&["127.0.0.1", "192.168.0.1-192.168.0.200"], &[]);
        assert!(!f.is_empty());
        for yes in ["127.0.0.1", "192.168.0.1", "192.168.0.100", "192.168.0.200"] {
            assert!(f.permits(ip(yes)), "{yes} should be allowed");
        }
        for no in [
            "127.0.0.2",
            "192.168.0.0",
            "192.168.0.201",
            "10.0.0.1",
            "::1",
            "::",
        ] {
            assert!(!f.permits(ip(no)), "{no} should be refused");
        }
    }

    #[test]
    fn it_should_refuse_only_the_listed_addresses_in_deny_mode() {
        // ipfilter(['127.0.0.1', ['192.168.0.1', '192.168.0.200']], {mode: 'deny'})
        let f = filter(&[], &["127.0.0.1", "192.168.0.1-192.168.0.200"]);
        assert!(!f.is_empty());
        for no in ["127.0.0.1", "192.168.0.1", "192.168.0.100", "192.168.0.200"] {
            assert!(!f.permits(ip(no)), "{no} should be refused");
        }
        for yes in [
            "127.0.0.2",
            "192.168.0.0",
            "192.168.0.201",
            "10.0.0.1",
            "::1",
        ] {
            assert!(f.permits(ip(yes)), "{yes} should be allowed");
        }
    }

    #[test]
    fn it_should_let_everyone_in_without_rules() {
        let f = filter(&[], &[]);
        assert!(f.is_empty());
        for any in [
            "0.0.0.0",
            "255.255.255.255",
            "::",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert!(f.permits(ip(any)));
        }
    }

    #[test]
    fn it_should_carve_deny_exceptions_out_of_allow() {
        let f = filter(
            &["10.0.0.0/8", "fd00::/8"],
            &["10.1.0.0/16", "10.255.255.255", "fd00::1"],
        );
        assert!(f.permits(ip("10.0.0.0")));
        assert!(f.permits(ip("10.0.255.255")));
        assert!(!f.permits(ip("10.1.0.0")));
        assert!(!f.permits(ip("10.1.255.255")));
        assert!(f.permits(ip("10.2.0.0")));
        assert!(f.permits(ip("10.255.255.254")));
        assert!(!f.permits(ip("10.255.255.255")));
        assert!(!f.permits(ip("11.0.0.0")));
        assert!(f.permits(ip("fd00::")));
        assert!(!f.permits(ip("fd00::1")));
        assert!(f.permits(ip("fd00::2")));
        assert!(!f.permits(ip("fe00::")));
        // deny outside allow changes nothing; deny covering all of allow refuses everyone
        let all_denied = filter(&["10.0.0.0/8"], &["0.0.0.0/0"]);
        assert!(!all_denied.is_empty());
        assert!(!all_denied.permits(ip("10.0.0.1")));
        assert!(!all_denied.permits(ip("::1")));
    }

    // --- rule forms ----------------------------------------------------------------------

    #[test]
    fn it_should_match_cidr_edges_exactly() {
        let f = filter(&["192.168.4.0/22", "0.0.0.0/32", "255.255.255.255/32"], &[]);
        assert!(!f.permits(ip("192.168.3.255")));
        assert!(f.permits(ip("192.168.4.0")));
        assert!(f.permits(ip("192.168.7.255")));
        assert!(!f.permits(ip("192.168.8.0")));
        assert!(f.permits(ip("0.0.0.0")));
        assert!(!f.permits(ip("0.0.0.1")));
        assert!(f.permits(ip("255.255.255.255")));
        assert!(!f.permits(ip("255.255.255.254")));

        let v6 = filter(&["2001:db8:1::/48"], &[]);
        assert!(!v6.permits(ip("2001:db8:0:ffff:ffff:ffff:ffff:ffff")));
        assert!(v6.permits(ip("2001:db8:1::")));
        assert!(v6.permits(ip("2001:db8:1:ffff:ffff:ffff:ffff:ffff")));
        assert!(!v6.permits(ip("2001:db8:2::")));
        assert!(!v6.permits(ip("10.0.0.1")));
    }

    #[test]
    fn it_should_treat_slash_zero_as_a_whole_family() {
        let v4 = filter(&["0.0.0.0/0"], &[]);
        assert!(v4.permits(ip("0.0.0.0")) && v4.permits(ip("255.255.255.255")));
        assert!(!v4.permits(ip("::1")));
        let v6 = filter(&["::/0"], &[]);
        assert!(v6.permits(ip("::")) && v6.permits(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        // `::/0` is every IPv6 client; IPv4 ones (mapped or not) are not among them
        assert!(!v6.permits(ip("10.0.0.1")));
        assert!(!v6.permits(ip("::ffff:10.0.0.1")));
    }

    #[test]
    fn it_should_mask_host_bits_of_a_cidr_block() {
        let f = filter(&["10.1.2.3/8", "fd00::1/8"], &[]);
        assert!(f.permits(ip("10.0.0.0")));
        assert!(f.permits(ip("10.255.255.255")));
        assert!(!f.permits(ip("11.0.0.0")));
        assert!(f.permits(ip("fd00::")));
        assert!(f.permits(ip("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
    }

    #[test]
    fn it_should_match_ipv6_addresses_and_ranges() {
        let f = filter(&["::1", "fe80::1-fe80::ff"], &[]);
        assert!(f.permits(ip("::1")));
        assert!(!f.permits(ip("::2")));
        assert!(!f.permits(ip("127.0.0.1")));
        assert!(!f.permits(ip("fe80::")));
        assert!(f.permits(ip("fe80::1")));
        assert!(f.permits(ip("fe80::ff")));
        assert!(!f.permits(ip("fe80::100")));
    }

    #[test]
    fn it_should_treat_mapped_addresses_as_ipv4() {
        // mapped queries against IPv4 rules
        let f = filter(&["10.0.0.0/8"], &["10.0.0.7"]);
        assert!(f.permits(ip("::ffff:10.1.2.3")));
        assert!(!f.permits(ip("::ffff:10.0.0.7")));
        assert!(!f.permits(ip("::ffff:11.0.0.0")));
        // mapped rules against IPv4 queries, in every form
        let g = filter(
            &[
                "::ffff:10.0.0.0/104",
                "::ffff:192.168.0.1-::ffff:192.168.0.3",
                "::ffff:1.2.3.4",
            ],
            &[],
        );
        assert!(g.permits(ip("10.200.0.1")));
        assert!(!g.permits(ip("11.0.0.0")));
        assert!(g.permits(ip("192.168.0.3")));
        assert!(!g.permits(ip("192.168.0.4")));
        assert!(g.permits(ip("1.2.3.4")));
        assert!(g.permits(ip("::ffff:1.2.3.4")));
        // a range may mix written forms as long as both ends are IPv4
        let h = filter(&["10.0.0.1-::ffff:10.0.0.5"], &[]);
        assert!(h.permits(ip("10.0.0.5")) && !h.permits(ip("10.0.0.6")));
        // the whole mapped block is all of IPv4
        let all = filter(&["::ffff:0:0/96"], &[]);
        assert!(all.permits(ip("0.0.0.0")) && all.permits(ip("255.255.255.255")));
        assert!(!all.permits(ip("::1")));
        // IPv4-compatible (not mapped) addresses stay IPv6
        let compat = filter(&["::10.0.0.1"], &[]);
        assert!(!compat.permits(ip("10.0.0.1")));
        assert!(compat.permits(ip("::10.0.0.1")));
    }

    #[test]
    fn it_should_trim_whitespace() {
        let f = filter(
            &["  10.0.0.1 ", "\t10.1.0.0 / 16", "10.2.0.1 - 10.2.0.3\n"],
            &[],
        );
        assert!(f.permits(ip("10.0.0.1")));
        assert!(f.permits(ip("10.1.255.255")));
        assert!(f.permits(ip("10.2.0.3")));
        assert!(!f.permits(ip("10.2.0.4")));
    }

    #[test]
    fn it_should_refuse_bad_rules_quoting_them() {
        let cases: &[(&str, &str)] = &[
            ("", "empty allow rule"),
            ("   ", "empty allow rule"),
            ("10.0.0", "invalid address"),
            ("localhost", "invalid address"),
            ("010.0.0.1", "invalid address"),
            ("fe80::1%eth0", "invalid address"),
            ("10.0.0.0/33", "invalid prefix length"),
            ("fd00::/129", "invalid prefix length"),
            ("10.0.0.0/", "invalid prefix length"),
            ("10.0.0.0/+8", "invalid prefix length"),
            ("10.0.0.0/8/8", "invalid prefix length"),
            ("10.0.0.0/-1", "invalid prefix length"),
            ("10.0.0.9-10.0.0.1", "ends before it starts"),
            ("::2-::1", "ends before it starts"),
            ("10.0.0.1-::1", "mixes ipv4 and ipv6"),
            ("::ffff:10.0.0.1-::1:0:0:0", "mixes ipv4 and ipv6"),
            ("10.0.0.1-10.0.0.2-10.0.0.3", "invalid address"),
            ("-10.0.0.1", "invalid address"),
        ];
        for &(rule, what) in cases {
            let err = IpFilter::new(&rules(&[rule]), &[]).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(what), "{rule:?}: {msg}");
            assert!(
                msg.contains(&format!("{rule:?}")),
                "{rule:?} is not quoted: {msg}"
            );
            assert!(!msg.contains('\n'), "{msg}");
            assert_eq!(
                msg.chars().next().map(|c| c.is_lowercase()),
                Some(true),
                "{msg}"
            );
            assert!(msg.contains("e.g.") || msg.contains("expected"), "{msg}");
        }
        let err = IpFilter::new(&[], &rules(&["nope"])).unwrap_err();
        assert!(err.to_string().contains("deny rule \"nope\""), "{err}");
        let err = TrustedProxies::new(&rules(&["10.0.0.0/99"])).unwrap_err();
        assert!(
            err.to_string()
                .contains("trusted-proxy rule \"10.0.0.0/99\""),
            "{err}"
        );
        assert_eq!(
            IpFilter::new(&rules(&["10.0.0.1", "bad"]), &[]).unwrap_err(),
            IpFilterError::BadAddress {
                list: "allow",
                rule: "bad".into(),
                part: "bad".into()
            }
        );
    }

    // --- the compiled structure -------------------------------------------------------------

    #[test]
    fn it_should_merge_overlapping_and_adjacent_ranges() {
        let set =
            RangeSet::from_ranges(vec![(5u32, 9), (1, 2), (3, 4), (8, 12), (20, 20), (14, 14)]);
        assert_eq!(set.ranges, vec![(1, 12), (14, 14), (20, 20)]);
        let top =
            RangeSet::from_ranges(vec![(u32::MAX - 1, u32::MAX), (u32::MAX, u32::MAX), (0, 0)]);
        assert_eq!(top.ranges, vec![(0, 0), (u32::MAX - 1, u32::MAX)]);
        let diff =
            RangeSet::from_ranges(vec![(0u32, u32::MAX)]).difference(&RangeSet::from_ranges(vec![
                (0, 0),
                (5, 6),
                (u32::MAX, u32::MAX),
            ]));
        assert_eq!(diff.ranges, vec![(1, 4), (7, u32::MAX - 1)]);
    }

    /// A deliberately naive rule for the reference: a family, and an inclusive range computed
    /// with shifts rather than masks.
    #[derive(Debug, Clone)]
    enum RefRule {
        V4 {
            text: String,
            start: u32,
            end: u32,
        },
        V6 {
            text: String,
            start: u128,
            end: u128,
        },
    }

    impl RefRule {
        fn v4_cidr(net: u32, prefix: u32, mapped: bool) -> Self {
            let shift = 32 - prefix;
            let (start, end) = if shift == 32 {
                (0, u32::MAX)
            } else {
                (
                    (net >> shift) << shift,
                    ((net >> shift) << shift) + ((1u64 << shift) - 1) as u32,
                )
            };
            let text = if mapped {
                format!("::ffff:{}/{}", Ipv4Addr::from(net), prefix + 96)
            } else {
                format!("{}/{prefix}", Ipv4Addr::from(net))
            };
            RefRule::V4 { text, start, end }
        }
        fn v4_range(a: u32, b: u32, form: u8) -> Self {
            let (start, end) = (a.min(b), a.max(b));
            let show = |x: u32, mapped: bool| {
                if mapped {
                    Ipv4Addr::from(x).to_ipv6_mapped().to_string()
                } else {
                    Ipv4Addr::from(x).to_string()
                }
            };
            let text = if start == end && form % 2 == 0 {
                show(start, form >= 2)
            } else {
                format!(
                    "{}-{}",
                    show(start, form & 1 == 1),
                    show(end, form & 2 == 2)
                )
            };
            RefRule::V4 { text, start, end }
        }
        fn v6_cidr(net: u128, prefix: u32) -> Self {
            let shift = 128 - prefix;
            let (start, end) = if shift == 128 {
                (0, u128::MAX)
            } else {
                let start = (net >> shift) << shift;
                (start, start + ((1u128 << shift) - 1))
            };
            RefRule::V6 {
                text: format!("{}/{prefix}", Ipv6Addr::from(net)),
                start,
                end,
            }
        }
        fn v6_range(a: u128, b: u128, single: bool) -> Self {
            let (start, end) = (a.min(b), a.max(b));
            let text = if single || start == end {
                Ipv6Addr::from(start).to_string()
            } else {
                format!("{}-{}", Ipv6Addr::from(start), Ipv6Addr::from(end))
            };
            let end = if single { start } else { end };
            RefRule::V6 { text, start, end }
        }
        fn text(&self) -> String {
            match self {
                RefRule::V4 { text, .. } | RefRule::V6 { text, .. } => text.clone(),
            }
        }
        fn matches(&self, q: IpAddr) -> bool {
            let q = match q {
                IpAddr::V6(a) => match a.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(a),
                },
                v4 => v4,
            };
            match (self, q) {
                (RefRule::V4 { start, end, .. }, IpAddr::V4(a)) => {
                    *start <= u32::from(a) && u32::from(a) <= *end
                }
                (RefRule::V6 { start, end, .. }, IpAddr::V6(a)) => {
                    *start <= u128::from(a) && u128::from(a) <= *end
                }
                _ => false,
            }
        }
        /// Addresses just inside and just outside the rule's edges.
        fn edges(&self) -> Vec<IpAddr> {
            match *self {
                RefRule::V4 { start, end, .. } => {
                    [start.wrapping_sub(1), start, end, end.wrapping_add(1)]
                        .into_iter()
                        .map(|x| IpAddr::V4(Ipv4Addr::from(x)))
                        .collect()
                }
                RefRule::V6 { start, end, .. } => {
                    [start.wrapping_sub(1), start, end, end.wrapping_add(1)]
                        .into_iter()
                        .map(|x| IpAddr::V6(Ipv6Addr::from(x)))
                        .collect()
                }
            }
        }
    }

    /// The reference filter: a linear scan over every rule.
    fn reference_permits(allow: &[RefRule], deny: &[RefRule], q: IpAddr) -> bool {
        (allow.is_empty() || allow.iter().any(|r| r.matches(q)))
            && !deny.iter().any(|r| r.matches(q))
    }

    fn texts(rules: &[RefRule]) -> Vec<String> {
        rules.iter().map(RefRule::text).collect()
    }

    /// A small deterministic generator (xorshift64*), so the 10,000-rule test needs no seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn it_should_agree_with_a_linear_scan_on_ten_thousand_rules() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let make = |rng: &mut Rng| -> RefRule {
            // crowd the rules into 10.0.0.0/12 and fd00::/108 so they overlap and touch
            let v4 = 0x0a00_0000 | (rng.below(1 << 20) as u32);
            let v6 = 0xfd00_u128 << 112 | u128::from(rng.below(1 << 20));
            match rng.below(7) {
                0 => RefRule::v4_cidr(v4, 20 + rng.below(13) as u32, rng.below(4) == 0),
                1 | 2 => RefRule::v4_range(v4, v4 + rng.below(300) as u32, rng.below(4) as u8),
                3 => RefRule::v4_range(v4, v4, 0),
                4 => RefRule::v6_cidr(v6, 110 + rng.below(19) as u32),
                5 => RefRule::v6_range(v6, v6 + u128::from(rng.below(300)), false),
                _ => RefRule::v6_range(v6, v6, true),
            }
        };
        let allow: Vec<RefRule> = (0..10_000).map(|_| make(&mut rng)).collect();
        let deny: Vec<RefRule> = (0..2_000).map(|_| make(&mut rng)).collect();
        let allow_mode = IpFilter::new(&texts(&allow), &texts(&deny)).unwrap();
        let deny_mode = IpFilter::new(&[], &texts(&allow)).unwrap();
        assert!(
            allow_mode.inside.v4.ranges.len() < allow.len(),
            "rules should merge"
        );

        // every edge of every 5th allow and 2nd deny rule, plus random addresses in and around the crowded blocks
        let mut queries: Vec<IpAddr> = allow
            .iter()
            .step_by(5)
            .chain(deny.iter().step_by(2))
            .flat_map(RefRule::edges)
            .collect();
        for _ in 0..1_000 {
            queries.push(IpAddr::V4(Ipv4Addr::from(
                0x0a00_0000 | rng.below(1 << 20) as u32,
            )));
            queries.push(IpAddr::V6(Ipv6Addr::from(
                0xfd00_u128 << 112 | u128::from(rng.below(1 << 20)),
            )));
            queries.push(IpAddr::V4(Ipv4Addr::from(rng.next() as u32)));
        }

        let (mut allowed, mut refused) = (0, 0);
        for &q in &queries {
            let in_allow = allow.iter().any(|r| r.matches(q));
            let in_deny = deny.iter().any(|r| r.matches(q));
            assert_eq!(
                allow_mode.permits(q),
                in_allow && !in_deny,
                "allow-mode, {q}"
            );
            assert_eq!(deny_mode.permits(q), !in_allow, "deny-mode, {q}");
            if let IpAddr::V4(a) = q {
                let mapped = IpAddr::V6(a.to_ipv6_mapped());
                assert_eq!(
                    allow_mode.permits(mapped),
                    in_allow && !in_deny,
                    "allow-mode, {mapped}"
                );
                assert_eq!(deny_mode.permits(mapped), !in_allow, "deny-mode, {mapped}");
            }
            if in_allow && !in_deny {
                allowed += 1;
            } else {
                refused += 1;
            }
        }
        // the queries exercise both answers, not just one
        assert!(
            allowed > 2_000 && refused > 2_000,
            "{allowed} allowed, {refused} refused"
        );
    }

    // --- X-Forwarded-For ---------------------------------------------------------------------

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(&rules(list)).unwrap()
    }

    fn client(t: &TrustedProxies, peer: &str, headers: &[&str]) -> IpAddr {
        t.client_ip(ip(peer), headers.iter().map(|h| h.as_bytes()))
    }

    #[test]
    fn it_should_ignore_forwarded_for_from_an_untrusted_peer() {
        let t = proxies(&["10.0.0.0/8"]);
        assert_eq!(client(&t, "203.0.113.9", &["1.2.3.4"]), ip("203.0.113.9"));
        assert_eq!(
            client(&t, "203.0.113.9", &["1.2.3.4, 10.0.0.1"]),
            ip("203.0.113.9")
        );
        let none = proxies(&[]);
        assert!(none.is_empty());
        assert_eq!(client(&none, "10.0.0.1", &["1.2.3.4"]), ip("10.0.0.1"));
        assert_eq!(
            client(&none, "::ffff:10.0.0.1", &["1.2.3.4"]),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn it_should_return_the_client_behind_trusted_proxies() {
        let t = proxies(&["10.0.0.0/8", "::1"]);
        assert!(!t.is_empty());
        // client, proxy1 -> peer proxy2; proxy1 trusted
        assert_eq!(
            client(&t, "10.0.0.2", &["198.51.100.7, 10.0.0.1"]),
            ip("198.51.100.7")
        );
        // the rightmost untrusted hop wins over anything the client prepended
        assert_eq!(
            client(&t, "10.0.0.2", &["6.6.6.6, 198.51.100.7, 10.0.0.1"]),
            ip("198.51.100.7")
        );
        // every hop trusted: the leftmost one
        assert_eq!(
            client(&t, "10.0.0.2", &["10.9.9.9, 10.0.0.1"]),
            ip("10.9.9.9")
        );
        // no header: the peer
        assert_eq!(client(&t, "::1", &[]), ip("::1"));
        assert_eq!(client(&t, "::ffff:10.0.0.2", &[" , "]), ip("10.0.0.2"));
        // mapped hops come back as IPv4 and are judged as such
        assert_eq!(
            client(&t, "::1", &["::ffff:198.51.100.7, ::ffff:10.0.0.1"]),
            ip("198.51.100.7")
        );
        // ports and brackets
        assert_eq!(
            client(&t, "::1", &["198.51.100.7:4711, 10.0.0.1:80"]),
            ip("198.51.100.7")
        );
        assert_eq!(client(&t, "::1", &["[2001:db8::7]:443"]), ip("2001:db8::7"));
        assert_eq!(client(&t, "::1", &["[2001:db8::7]"]), ip("2001:db8::7"));
        assert_eq!(client(&t, "::1", &["2001:db8::7"]), ip("2001:db8::7"));
    }

    #[test]
    fn it_should_read_multiple_headers_in_order() {
        let t = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            client(&t, "10.0.0.3", &["198.51.100.7", "10.0.0.1, 10.0.0.2"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            client(&t, "10.0.0.3", &["6.6.6.6", "198.51.100.7,10.0.0.1", ""]),
            ip("198.51.100.7")
        );
        assert_eq!(
            client(&t, "10.0.0.3", &["10.0.0.1", "10.0.0.2"]),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn it_should_stop_at_a_garbage_hop() {
        let t = proxies(&["10.0.0.0/8"]);
        // garbage right behind the peer: the peer
        assert_eq!(
            client(&t, "10.0.0.3", &["198.51.100.7, unknown"]),
            ip("10.0.0.3")
        );
        // garbage behind a trusted hop: that hop
        assert_eq!(
            client(&t, "10.0.0.3", &["198.51.100.7, nonsense, 10.0.0.1"]),
            ip("10.0.0.1")
        );
        assert_eq!(
            client(
                &t,
                "10.0.0.3",
                &["198.51.100.7, 300.1.1.1, 10.0.0.1, 10.0.0.2"]
            ),
            ip("10.0.0.1")
        );
        // garbage to the left of the client does not matter
        assert_eq!(
            client(&t, "10.0.0.3", &["garbage, 198.51.100.7, 10.0.0.1"]),
            ip("198.51.100.7")
        );
        // bad UTF-8 is garbage
        let bytes: [&[u8]; 2] = [b"198.51.100.7", b"\xff\xfe, 10.0.0.1"];
        assert_eq!(
            t.client_ip(ip("10.0.0.3"), bytes.into_iter()),
            ip("10.0.0.1")
        );
    }

    /// The reference walk: collect the hops, then walk them right to left as documented.
    fn reference_client(t: &TrustedProxies, peer: IpAddr, headers: &[String]) -> IpAddr {
        let peer = peer.to_canonical();
        if !t.is_trusted(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .iter()
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        let mut current = peer;
        for hop in hops.iter().rev() {
            match parse_hop(hop.as_bytes()) {
                None => return current,
                Some(ip) if !t.is_trusted(ip) => return ip,
                Some(ip) => current = ip,
            }
        }
        current
    }

    // --- properties ------------------------------------------------------------------------

    fn v4_point() -> impl Strategy<Value = u32> {
        prop_oneof![
            3 => (0u32..1024).prop_map(|x| 0x0a00_0000 | x),
            1 => any::<u32>(),
            1 => prop_oneof![Just(0u32), Just(u32::MAX), Just(u32::MAX - 1), Just(1u32)],
        ]
    }

    fn v6_point() -> impl Strategy<Value = u128> {
        prop_oneof![
            3 => (0u128..1024).prop_map(|x| 0xfd00_u128 << 112 | x),
            1 => any::<u128>(),
            1 => prop_oneof![Just(0u128), Just(u128::MAX), Just(1u128), Just(u128::MAX - 1)],
        ]
    }

    fn rule() -> impl Strategy<Value = RefRule> {
        prop_oneof![
            (
                v4_point(),
                prop_oneof![3 => 22u32..=32, 1 => 0u32..=32],
                any::<bool>()
            )
                .prop_map(|(net, p, mapped)| RefRule::v4_cidr(net, p, mapped)),
            (v4_point(), 0u32..64, 0u8..4).prop_map(|(a, len, form)| RefRule::v4_range(
                a,
                a.saturating_add(len),
                form
            )),
            (v4_point(), v4_point(), 0u8..4).prop_map(|(a, b, form)| RefRule::v4_range(a, b, form)),
            (v6_point(), prop_oneof![3 => 118u32..=128, 1 => 0u32..=128])
                .prop_map(|(net, p)| RefRule::v6_cidr(net, p)),
            (v6_point(), 0u128..64, any::<bool>()).prop_map(|(a, len, single)| RefRule::v6_range(
                a,
                a.saturating_add(len),
                single
            )),
        ]
    }

    fn query() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            v4_point().prop_map(|x| IpAddr::V4(Ipv4Addr::from(x))),
            v4_point().prop_map(|x| IpAddr::V6(Ipv4Addr::from(x).to_ipv6_mapped())),
            v6_point().prop_map(|x| IpAddr::V6(Ipv6Addr::from(x))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn prop_filter_agrees_with_a_linear_scan(
            allow in prop::collection::vec(rule(), 0..12),
            deny in prop::collection::vec(rule(), 0..12),
            queries in prop::collection::vec(query(), 0..64),
        ) {
            let f = IpFilter::new(&texts(&allow), &texts(&deny)).unwrap();
            prop_assert_eq!(f.is_empty(), allow.is_empty() && deny.is_empty());
            let edges = allow.iter().chain(&deny).flat_map(RefRule::edges);
            for q in queries.into_iter().chain(edges) {
                prop_assert_eq!(f.permits(q), reference_permits(&allow, &deny, q), "query {}", q);
            }
        }

        #[test]
        fn prop_range_sets_stay_normalized(
            a in prop::collection::vec((0u32..200, 0u32..20), 0..20),
            b in prop::collection::vec((0u32..200, 0u32..20), 0..20),
        ) {
            let set = |v: &[(u32, u32)]| RangeSet::from_ranges(v.iter().map(|&(s, l)| (s, s + l)).collect());
            let (sa, sb) = (set(&a), set(&b));
            let diff = sa.difference(&sb);
            for s in [&sa, &sb, &diff] {
                for w in s.ranges.windows(2) {
                    prop_assert!(w[0].1 + 1 < w[1].0, "not normalized: {:?}", s.ranges);
                }
                prop_assert!(s.ranges.iter().all(|&(s, e)| s <= e));
            }
            for x in 0..230u32 {
                let naive = |v: &[(u32, u32)]| v.iter().any(|&(s, l)| s <= x && x <= s + l);
                prop_assert_eq!(sa.contains(x), naive(&a));
                prop_assert_eq!(diff.contains(x), naive(&a) && !naive(&b), "x = {}", x);
            }
        }

        #[test]
        fn prop_client_ip_agrees_with_a_right_to_left_walk(
            peer in 0usize..6,
            hops in prop::collection::vec(0usize..12, 0..10),
            cuts in prop::collection::vec(any::<bool>(), 10),
        ) {
            // trusted: 10.0.0.0/8 and fd00::/8
            const POOL: [&str; 12] = [
                "10.0.0.1", "::ffff:10.0.0.2", "fd00::1", "198.51.100.7", "2001:db8::7",
                "::ffff:203.0.113.5", "unknown", "10.0.0.3:8080", "[fd00::2]:443", "", " ",
                "1.2.3",
            ];
            let t = proxies(&["10.0.0.0/8", "fd00::/8"]);
            let peer = ip(["10.0.0.9", "::ffff:10.0.0.9", "fd00::9", "198.51.100.1", "2001:db8::1", "::ffff:1.1.1.1"][peer]);
            // split the hops into headers at random places
            let mut headers = vec![String::new()];
            for (i, &h) in hops.iter().enumerate() {
                let last = headers.len() - 1;
                if i > 0 && cuts[i] {
                    headers.push(String::new());
                } else if i > 0 {
                    headers[last].push(',');
                }
                let last = headers.len() - 1;
                headers[last].push_str(POOL[h]);
            }
            let got = t.client_ip(peer, headers.iter().map(|h| h.as_bytes()));
            prop_assert_eq!(got, reference_client(&t, peer, &headers), "headers {:?}", headers);
        }
    }
}
