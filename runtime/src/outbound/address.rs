//! Which IP addresses an outbound request may reach without an explicit
//! allowance.
//!
//! Resolved addresses are checked after DNS and the connection goes to the
//! checked address itself, so a name that resolves to a private address
//! (DNS rebinding included) is caught as surely as an IP literal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Well-known cloud instance-metadata endpoints.
const METADATA_V4: [Ipv4Addr; 2] = [
    Ipv4Addr::new(169, 254, 169, 254), // AWS, GCP, Azure, OpenStack, ...
    Ipv4Addr::new(100, 100, 100, 200), // Alibaba Cloud
];
const METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)]; // AWS

/// Whether `ip` is a cloud metadata endpoint (in any IPv6 spelling too).
/// These stay refused even under `allow-private` unless the destination
/// names the address itself.
pub fn is_metadata(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => METADATA_V4.contains(&v4),
        IpAddr::V6(v6) => METADATA_V6.contains(&v6) || embedded_v4(v6).is_some_and(|v4| METADATA_V4.contains(&v4)),
    }
}

/// The reason `ip` is not a public unicast address, or `None` if it is.
///
/// Refused classes: cloud metadata, loopback, unspecified, private
/// (RFC 1918, unique local), shared (CGNAT), link-local, multicast,
/// broadcast, documentation, benchmarking and reserved ranges. IPv4 inside
/// IPv6 (mapped, compatible, NAT64, 6to4) is judged by its IPv4 address.
pub fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if METADATA_V4.contains(&ip) {
        return Some("a cloud metadata address");
    }
    let reason = if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_unspecified() || a == 0 {
        "an unspecified (\"this network\") address"
    } else if ip.is_private() {
        "a private address"
    } else if a == 100 && (64..128).contains(&b) {
        "a shared (carrier-grade NAT) address"
    } else if ip.is_link_local() {
        "a link-local address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if ip.is_broadcast() {
        "the broadcast address"
    } else if ip.is_documentation() {
        "a documentation address"
    } else if a == 198 && (b == 18 || b == 19) {
        "a benchmarking address"
    } else if a == 192 && b == 0 && c == 0 {
        "an IETF protocol assignment address"
    } else if a >= 240 {
        "a reserved address"
    } else {
        return None;
    };
    Some(reason)
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    if METADATA_V6.contains(&ip) {
        return Some("a cloud metadata address");
    }
    let seg = ip.segments();
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1 {
        // Local-use NAT64 (RFC 8215): never globally routed, and where the
        // IPv4 address sits depends on the local prefix length.
        return Some("a local-use NAT64 address");
    }
    if let Some(v4) = embedded_v4(ip) {
        return v4_reason(v4);
    }
    let reason = if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_unspecified() {
        "an unspecified address"
    } else if (seg[0] & 0xfe00) == 0xfc00 {
        "a private (unique local) address"
    } else if (seg[0] & 0xffc0) == 0xfe80 || (seg[0] & 0xffc0) == 0xfec0 {
        "a link-local address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
        "a documentation address"
    } else if seg[0] == 0x0100 && seg[1] == 0 && seg[2] == 0 && seg[3] == 0 {
        "a discard-only address"
    } else if (seg[0] & 0xe000) != 0x2000 {
        // Only 2000::/3 is allocated as global unicast.
        "a reserved address"
    } else {
        return None;
    };
    Some(reason)
}

/// The IPv4 address carried inside an IPv6 one, for the transition formats
/// that route to it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = ip.segments();
    let tail = Ipv4Addr::new((seg[6] >> 8) as u8, seg[6] as u8, (seg[7] >> 8) as u8, seg[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    // IPv4-compatible ::a.b.c.d (deprecated, but still routed by some stacks).
    if seg[..6].iter().all(|&s| s == 0) && !ip.is_loopback() && !ip.is_unspecified() {
        return Some(tail);
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6].iter().all(|&s| s == 0) {
        return Some(tail);
    }
    // 6to4 2002:AABB:CCDD::/48.
    if seg[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> Option<&'static str> {
        non_public_reason(s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
    }

    #[test]
    fn refuses_internal_addresses_in_every_spelling() {
        for internal in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "100.100.100.200",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b:1::8.8.8.8",
            "2002:a9fe:a9fe::1",
            "ff02::1",
        ] {
            assert!(reason(internal).is_some(), "{internal} should be refused");
        }
        assert_eq!(reason("169.254.169.254"), Some("a cloud metadata address"));
        for meta in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
            "100.100.100.200",
        ] {
            assert!(
                is_metadata(meta.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))),
                "{meta}"
            );
        }
        assert!(!is_metadata(
            "169.254.1.1".parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        ));
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert_eq!(reason(public), None, "{public} should be allowed");
        }
    }
}
