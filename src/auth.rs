//! API keys and who is calling: key generation (OS RNG), hashing, constant-time comparison, and
//! which address a request really comes from. No HTTP here; `api::auth` applies it to requests.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use sha2::{Digest, Sha256};

/// Every key starts with this.
pub const KEY_PREFIX: &str = "ws_key_";
const KEY_CHARS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A new key: `ws_key_` and 32 random url-safe characters from the OS's random source.
pub fn generate_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    // 64 characters: the low 6 bits of a uniform byte are uniform over them.
    let tail: String = bytes
        .iter()
        .map(|b| KEY_CHARS[(b & 63) as usize] as char)
        .collect();
    Ok(format!("{KEY_PREFIX}{tail}"))
}

/// What is stored of a key: its sha256, hex.
pub fn hash_key(key: &str) -> String {
    format!("{:x}", Sha256::digest(key.as_bytes()))
}

/// Compares two hashes without an early exit, so timing says nothing about where they differ.
pub fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A key from the config file, hashed at start.
#[derive(Debug, Clone)]
pub struct ConfigKey {
    pub name: String,
    pub sha256: String,
    pub admin: bool,
}

/// Finds the config key matching `presented`, comparing against every key in constant time.
pub fn match_config_key<'a>(
    keys: &'a [ConfigKey],
    presented_sha256: &str,
) -> Option<&'a ConfigKey> {
    let mut found = None;
    for key in keys {
        if same_hash(&key.sha256, presented_sha256) && found.is_none() {
            found = Some(key);
        }
    }
    found
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the last hop of
/// `X-Forwarded-For` that is not itself a trusted proxy. `lines` are the header's lines in the
/// order they came: together they are one list (RFC 9110, 5.3), each proxy appending its peer
/// at the end, so a client's own lines come first and are reached only through trusted hops.
/// Empty list elements are skipped. `Err` when the hop reached is not an address.
pub fn client_ip(peer: IpAddr, lines: &[&[u8]], trusted: &[IpNetwork]) -> Result<IpAddr, String> {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if lines.is_empty() || !is_trusted(peer) {
        return Ok(peer);
    }
    for line in lines.iter().rev() {
        let line = std::str::from_utf8(line)
            .map_err(|_| "X-Forwarded-For: not ASCII: it must list IP addresses".to_string())?;
        for hop in line.rsplit(',').map(str::trim).filter(|h| !h.is_empty()) {
            let ip: IpAddr = hop
                .parse()
                .map_err(|_| format!("X-Forwarded-For: {hop:?} is not an IP address"))?;
            let ip = ip.to_canonical();
            if !is_trusted(ip) {
                return Ok(ip);
            }
        }
    }
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_look_right_and_differ() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert!(a.starts_with("ws_key_") && a.len() == 7 + 32, "{a}");
        assert!(a[7..].bytes().all(|c| KEY_CHARS.contains(&c)));
        assert_ne!(a, b);
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn constant_time_compare_and_lookup() {
        assert!(same_hash("abcd", "abcd"));
        assert!(!same_hash("abcd", "abce"));
        assert!(!same_hash("abcd", "abc"));
        let keys = vec![
            ConfigKey {
                name: "a".into(),
                sha256: hash_key("k1"),
                admin: false,
            },
            ConfigKey {
                name: "b".into(),
                sha256: hash_key("k2"),
                admin: true,
            },
        ];
        assert_eq!(match_config_key(&keys, &hash_key("k2")).unwrap().name, "b");
        assert!(match_config_key(&keys, &hash_key("k3")).is_none());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNetwork> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let outsider: IpAddr = "192.0.2.7".parse().unwrap();
        let ip = |peer, lines: &[&str]| {
            let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
            client_ip(peer, &lines, &trusted).map(|ip| ip.to_string())
        };
        // A client that is not a trusted proxy cannot claim another address.
        assert_eq!(ip(outsider, &["10.1.1.1"]).unwrap(), "192.0.2.7");
        // Through a trusted proxy: the last hop that is not a trusted proxy.
        assert_eq!(
            ip(peer, &["198.51.100.1, 192.0.2.9, 10.0.0.2"]).unwrap(),
            "192.0.2.9"
        );
        assert_eq!(client_ip(peer, &[], &trusted).unwrap(), peer);
        assert_eq!(ip(peer, &["10.0.0.3"]).unwrap(), "10.0.0.1");
        assert_eq!(
            ip(peer, &["not-an-ip"]).unwrap_err(),
            "X-Forwarded-For: \"not-an-ip\" is not an IP address"
        );
        assert_eq!(
            client_ip(peer, &[b"\xff"], &trusted).unwrap_err(),
            "X-Forwarded-For: not ASCII: it must list IP addresses"
        );
    }

    #[test]
    fn forwarded_for_lines_are_one_list_read_from_its_end() {
        let trusted: Vec<IpNetwork> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let ip = |lines: &[&str]| {
            let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
            client_ip(peer, &lines, &trusted).map(|ip| ip.to_string())
        };
        // The client's own line comes first; the proxy's, with the real client, last.
        assert_eq!(ip(&["192.0.2.7", "198.51.100.1"]).unwrap(), "198.51.100.1");
        assert_eq!(
            ip(&["192.0.2.7, 10.0.0.9", "198.51.100.1, 10.0.0.2"]).unwrap(),
            "198.51.100.1"
        );
        // Trusted hops are passed over across lines.
        assert_eq!(
            ip(&["198.51.100.1", "10.0.0.2, 10.0.0.3"]).unwrap(),
            "198.51.100.1"
        );
        // Empty elements are no hops; a bad hop beyond the answer is never read.
        assert_eq!(ip(&["junk", ",198.51.100.1,", ""]).unwrap(), "198.51.100.1");
        // IPv4-mapped IPv6 is the IPv4 address.
        assert_eq!(ip(&["::ffff:192.0.2.1"]).unwrap(), "192.0.2.1");
    }
}
