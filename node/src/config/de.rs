//! Deserializers for the values the schema writes as text: durations, addresses, ports.
//!
//! Each one works through a `Visitor`, so its error is raised inside the TOML deserializer, which
//! then tags it with the span of the value; an error raised after deserializing a `String` would
//! only get the span of the enclosing array or table.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::de::{Deserialize, Deserializer, Error, Visitor};

use super::schema::PortRange;

const DURATION: &str = r#"a duration like "500ms" or "30s""#;
const IP: &str = r#"an IPv4 or IPv6 address like "10.0.0.1""#;
const SOCKET_ADDR: &str = r#"an address and port like "10.0.0.1:9010" or "[fd00::1]:9010""#;
const PORT: &str = "a port number from 1 to 65535";
const PORT_RANGE: &str = r#"a port number from 1 to 65535 or a range like "8000-8100""#;

/// Parses `"100ms"`, `"30s"`, `"5m"`, `"24h"` or `"7d"`: whole numbers, one unit.
pub(super) fn parse_duration(text: &str) -> Option<Duration> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits == 0 {
        return None;
    }
    let count: u64 = text[..digits].parse().ok()?;
    let millis_per_unit = match &text[digits..] {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    count
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
}

/// Writes a duration the way the configuration does, in its largest exact unit.
pub(super) fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    let units = [(3_600_000, "h"), (60_000, "m"), (1_000, "s")];
    for (size, unit) in units {
        if millis != 0 && millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

fn parse_port_range(text: &str) -> Option<PortRange> {
    let port = |s: &str| s.trim().parse::<u16>().ok().filter(|&p| p != 0);
    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (port(first)?, port(last)?),
        None => (port(text)?, port(text)?),
    };
    (first <= last).then_some(PortRange { first, last })
}

/// A visitor of strings that `parse` turns into a `T`.
struct Text<T> {
    expecting: &'static str,
    parse: fn(&str) -> Option<T>,
}

impl<T> Visitor<'_> for Text<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: Error>(self, text: &str) -> Result<T, E> {
        (self.parse)(text)
            .ok_or_else(|| E::custom(format!("expected {}, found \"{text}\"", self.expecting)))
    }
}

/// A visitor of port numbers, and of port ranges written as strings when `range` is given.
struct Port<T> {
    expecting: &'static str,
    single: fn(u16) -> T,
    range: Option<fn(&str) -> Option<T>>,
}

impl<T> Visitor<'_> for Port<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_i64<E: Error>(self, number: i64) -> Result<T, E> {
        match u16::try_from(number) {
            Ok(port) if port != 0 => Ok((self.single)(port)),
            _ => Err(E::custom(format!(
                "expected {}, found {number}",
                self.expecting
            ))),
        }
    }

    fn visit_str<E: Error>(self, text: &str) -> Result<T, E> {
        match self.range {
            Some(range) => range(text)
                .ok_or_else(|| E::custom(format!("expected {}, found \"{text}\"", self.expecting))),
            None => Err(E::invalid_type(serde::de::Unexpected::Str(text), &self)),
        }
    }
}

/// An IP address that can sit in a `Vec`, `Option` or map and still be read by its visitor.
struct Ip(IpAddr);

impl<'de> Deserialize<'de> for Ip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Text {
            expecting: IP,
            parse: |s| s.parse().ok(),
        })
        .map(Ip)
    }
}

/// A port range that can sit in an `Option` and still be read by its visitor.
struct Ports(PortRange);

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Port {
            expecting: PORT_RANGE,
            single: |port| PortRange {
                first: port,
                last: port,
            },
            range: Some(parse_port_range),
        })
        .map(Ports)
    }
}

/// A duration, `"500ms"`.
pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_str(Text {
        expecting: DURATION,
        parse: parse_duration,
    })
}

/// An IP address, `"10.0.0.1"` or `"fd00::1"`.
pub(super) fn opt_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    Option::<Ip>::deserialize(d).map(|ip| ip.map(|Ip(ip)| ip))
}

/// A list of IP addresses.
pub(super) fn ips<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    Vec::<Ip>::deserialize(d).map(|ips| ips.into_iter().map(|v| v.0).collect())
}

/// A table of IP addresses by name.
pub(super) fn ip_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, IpAddr>, D::Error> {
    BTreeMap::<String, Ip>::deserialize(d)
        .map(|ips| ips.into_iter().map(|(k, v)| (k, v.0)).collect())
}

/// An address and port, `"10.0.0.1:9010"` or `"[fd00::1]:9010"`.
pub(super) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    d.deserialize_str(Text {
        expecting: SOCKET_ADDR,
        parse: |s| s.parse().ok(),
    })
}

/// A port number, 1 to 65535.
pub(super) fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    d.deserialize_i64(Port {
        expecting: PORT,
        single: |port| port,
        range: None,
    })
}

/// A port, `443`, or a range of ports, `"8000-8100"`.
pub(super) fn opt_port_range<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<PortRange>, D::Error> {
    Option::<Ports>::deserialize(d).map(|r| r.map(|Ports(r)| r))
}
