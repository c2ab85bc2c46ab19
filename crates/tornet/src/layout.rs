//! The description of one private network: node names, roles, ports and identities.
//!
//! It is written to `DIR/network.toml` by `up` and read back by `down`, `status` and tests.

use serde::{Deserialize, Serialize};

/// Number of directory authorities in a network.
pub const N_AUTHORITIES: usize = 3;
/// Number of plain relays in a network.
pub const N_RELAYS: usize = 5;
/// Number of relays in the consensus (authorities relay too).
pub const N_CONSENSUS_RELAYS: usize = N_AUTHORITIES + N_RELAYS;
/// Name (and sub-directory) of the C tor client.
pub const CLIENT_NAME: &str = "client";

/// What a tor node does in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A v3 directory authority (also a relay).
    Authority,
    /// A relay (guard, middle, HSDir; never an exit).
    Relay,
}

/// One relay or authority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Nickname, also the name of its sub-directory of the network directory.
    pub name: String,
    /// Authority or relay.
    pub role: Role,
    /// ORPort on 127.0.0.1.
    pub or_port: u16,
    /// DirPort on 127.0.0.1.
    pub dir_port: u16,
    /// RSA identity fingerprint, 40 upper-case hex digits.
    pub rsa_fingerprint: String,
    /// Ed25519 identity, unpadded base64.
    pub ed_identity: String,
    /// The authority's v3 identity (40 hex digits); `None` for relays.
    pub v3ident: Option<String>,
}

/// The whole network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The directory authorities.
    pub authorities: Vec<Node>,
    /// The plain relays.
    pub relays: Vec<Node>,
    /// The C tor client's SocksPort on 127.0.0.1.
    pub socks_port: u16,
}

impl Layout {
    /// Authorities then relays.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.authorities.iter().chain(self.relays.iter())
    }

    /// Names of every tor process of the network: relays and the client.
    pub fn process_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.nodes().map(|n| n.name.clone()).collect();
        v.push(CLIENT_NAME.to_owned());
        v
    }
}

/// Nickname of authority `i`.
pub(crate) fn authority_name(i: usize) -> String {
    format!("auth{i}")
}

/// Nickname of relay `i`.
pub(crate) fn relay_name(i: usize) -> String {
    format!("relay{i}")
}

/// Every sub-directory name `up` may create (used to clean a stale directory).
pub(crate) fn all_process_names() -> Vec<String> {
    let mut v: Vec<String> = (0..N_AUTHORITIES).map(authority_name).collect();
    v.extend((0..N_RELAYS).map(relay_name));
    v.push(CLIENT_NAME.to_owned());
    v
}

/// A fixed layout for unit tests (no keys generated, made-up identities).
#[cfg(test)]
pub(crate) fn sample_layout() -> Layout {
    let node = |i: usize, role: Role| Node {
        name: if role == Role::Authority {
            authority_name(i)
        } else {
            relay_name(i)
        },
        role,
        or_port: 7000 + 10 * i as u16 + if role == Role::Relay { 100 } else { 0 },
        dir_port: 7001 + 10 * i as u16 + if role == Role::Relay { 100 } else { 0 },
        rsa_fingerprint: format!("{:040X}", i + if role == Role::Relay { 100 } else { 1 }),
        ed_identity: format!("ed{i}AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        v3ident: (role == Role::Authority).then(|| format!("{:040X}", 0xA0 + i)),
    };
    Layout {
        authorities: (0..N_AUTHORITIES)
            .map(|i| node(i, Role::Authority))
            .collect(),
        relays: (0..N_RELAYS).map(|i| node(i, Role::Relay)).collect(),
        socks_port: 9050,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trips_through_toml() {
        let l = sample_layout();
        let text = toml::to_string_pretty(&l).unwrap();
        let back: Layout = toml::from_str(&text).unwrap();
        assert_eq!(back, l);
        assert_eq!(l.process_names().len(), N_CONSENSUS_RELAYS + 1);
        assert_eq!(all_process_names(), l.process_names());
    }
}
