//! Which addresses `http:fetch` may connect to, and the resolver that enforces it.
//!
//! An allowed name is only as trustworthy as its DNS: whoever controls the zone of
//! `api.example.com` (or a stale record) can point it at 127.0.0.1, at the private
//! network the broker sits in, or at a cloud metadata service on 169.254.169.254.
//! Unless the config sets `allow_private_ips`, such addresses are refused, and checked
//! where they are used: the resolver reqwest is built with refuses any answer that
//! contains one, and reqwest connects only to the addresses that resolver returned, so
//! there is no second lookup that a rebinding DNS server could answer differently. IP
//! literals never reach a resolver, so the tool checks those itself
//! ([`non_public`] on the URL's host, at every hop).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// What `addr` is, when it is not a public unicast address: `None` for a public one.
pub fn non_public(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match () {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        _ if ip.is_link_local() => "link-local (cloud metadata services answer there)",
        _ if a == 0 => "\"this network\"",
        _ if a == 100 && (64..128).contains(&b) => "shared (carrier-grade NAT)",
        _ if a == 192 && b == 0 && c == 0 => "IETF protocol",
        _ if ip.is_documentation() => "documentation",
        _ if a == 198 && (18..20).contains(&b) => "benchmarking",
        _ if ip.is_multicast() => "multicast",
        _ if a >= 240 => "reserved",
        _ => return None,
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // Addresses that carry an IPv4 address are what that address is.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64: the gateway connects to the embedded address.
        return non_public_v4(embedded_v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        // 6to4: the relay connects to the embedded address.
        return non_public_v4(embedded_v4(s[1], s[2]));
    }
    Some(match () {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if s[..6] == [0; 6] => "IPv4-compatible (deprecated)",
        _ if s[0] == 0x64 && s[1] == 0xff9b => "local-use NAT64",
        _ if s[..4] == [0x100, 0, 0, 0] => "discard-only",
        _ if s[0] == 0x2001 && s[1] < 0x200 => "IETF protocol (Teredo, benchmarking, ...)",
        _ if s[0] == 0x2001 && s[1] == 0xdb8 => "documentation",
        _ if ip.is_unique_local() => "unique-local",
        _ if ip.is_unicast_link_local() => "link-local",
        _ if s[0] & 0xffc0 == 0xfec0 => "site-local (deprecated)",
        _ if ip.is_multicast() => "multicast",
        _ => return None,
    })
}

/// Why a request was not sent: the address it would have gone to is not public.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{what} {addr}, a {kind} address; http:fetch reaches only public addresses unless the broker's config sets `allow_private_ips = true`"
)]
pub struct NonPublic {
    /// "`localhost` resolves to" or "the URL names".
    what: String,
    addr: IpAddr,
    kind: &'static str,
}

impl NonPublic {
    /// `addr` as the URL names it, if it is not public.
    pub fn literal(addr: IpAddr) -> Option<NonPublic> {
        non_public(addr).map(|kind| NonPublic {
            what: "the URL names".into(),
            addr,
            kind,
        })
    }
}

type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// A name lookup: the system's in the broker, a scripted one in tests.
pub type Lookup = Arc<dyn Fn(String) -> LookupFuture + Send + Sync>;

/// The system resolver (getaddrinfo on a blocking thread, as reqwest's default does).
pub fn system_lookup() -> Lookup {
    Arc::new(|name: String| {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((name.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    })
}

/// The resolver `http:fetch`'s client connects with: an answer that contains any
/// address that is not public is refused whole (a public name that also resolves into
/// a private network is misconfigured at best), so the connection can only go to
/// addresses that were checked.
pub struct PublicOnly {
    lookup: Lookup,
}

impl PublicOnly {
    pub fn new(lookup: Lookup) -> PublicOnly {
        PublicOnly { lookup }
    }
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let lookup = (self.lookup)(host.clone());
        Box::pin(async move {
            let addrs = lookup.await?;
            if addrs.is_empty() {
                return Err(format!("`{host}` has no addresses").into());
            }
            if let Some((addr, kind)) = addrs
                .iter()
                .find_map(|a| non_public(*a).map(|kind| (*a, kind)))
            {
                return Err(Box::new(NonPublic {
                    what: format!("`{host}` resolves to"),
                    addr,
                    kind,
                }) as _);
            }
            // Port 0: reqwest puts in the URL's port.
            let addrs: Addrs = Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_and_non_public_addresses() {
        for (addr, expected) in [
            ("127.0.0.1", Some("loopback")),
            ("127.255.0.9", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.31.255.255", Some("private")),
            ("192.168.1.1", Some("private")),
            ("0.0.0.0", Some("\"this network\"")),
            ("100.64.0.1", Some("shared (carrier-grade NAT)")),
            ("192.0.0.8", Some("IETF protocol")),
            ("192.0.2.1", Some("documentation")),
            ("198.18.0.1", Some("benchmarking")),
            ("224.0.0.1", Some("multicast")),
            ("240.0.0.1", Some("reserved")),
            ("255.255.255.255", Some("reserved")),
            ("::", Some("unspecified")),
            ("::1", Some("loopback")),
            ("::ffff:127.0.0.1", Some("loopback")),
            (
                "::ffff:169.254.169.254",
                Some("link-local (cloud metadata services answer there)"),
            ),
            ("::127.0.0.1", Some("IPv4-compatible (deprecated)")),
            ("64:ff9b::10.0.0.1", Some("private")),
            ("64:ff9b:1::1", Some("local-use NAT64")),
            ("2002:c0a8:0101::1", Some("private")),
            ("2001::1", Some("IETF protocol (Teredo, benchmarking, ...)")),
            ("2001:db8::1", Some("documentation")),
            ("fd00::1", Some("unique-local")),
            ("fe80::1", Some("link-local")),
            ("fec0::1", Some("site-local (deprecated)")),
            ("ff02::1", Some("multicast")),
            ("100::1", Some("discard-only")),
            // Public.
            ("1.1.1.1", None),
            ("172.32.0.1", None),
            ("100.128.0.1", None),
            ("8.8.8.8", None),
            ("2606:4700::1111", None),
            ("2001:4860:4860::8888", None),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::8.8.8.8", None),
        ] {
            let ip: IpAddr = addr.parse().unwrap();
            assert_eq!(non_public(ip), expected, "{addr}");
        }
        assert_eq!(
            non_public("169.254.169.254".parse().unwrap()),
            Some("link-local (cloud metadata services answer there)")
        );
    }

    #[tokio::test]
    async fn an_answer_with_any_private_address_is_refused() {
        let lookup: Lookup = Arc::new(|name: String| {
            Box::pin(async move {
                Ok(match name.as_str() {
                    "mixed.test" => vec!["8.8.8.8".parse().unwrap(), "10.0.0.1".parse().unwrap()],
                    "public.test" => vec!["8.8.8.8".parse().unwrap()],
                    _ => vec![],
                })
            })
        });
        let resolver = PublicOnly::new(lookup);
        let err = resolver
            .resolve("mixed.test".parse().unwrap())
            .await
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "`mixed.test` resolves to 10.0.0.1, a private address; http:fetch reaches only public addresses unless the broker's config sets `allow_private_ips = true`"
        );
        let addrs: Vec<SocketAddr> = resolver
            .resolve("public.test".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert_eq!(addrs, ["8.8.8.8:0".parse().unwrap()]);
        let err = resolver.resolve("none.test".parse().unwrap()).await.err();
        assert_eq!(err.unwrap().to_string(), "`none.test` has no addresses");
    }
}
