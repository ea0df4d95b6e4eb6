//! Validated values: once one of these exists, it is known to be good.

use std::{fmt, num::NonZeroU16};

use ipnet::IpNet;

use super::ConfigError;

/// A TCP port, 1 to 65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Port(NonZeroU16);

impl Port {
    pub fn new(port: u16) -> Option<Self> {
        NonZeroU16::new(port).map(Port)
    }

    pub fn get(self) -> u16 {
        self.0.get()
    }

    /// Parses a port given as text (annotations) for `field`.
    pub fn parse(field: &str, text: &str) -> Result<Self, ConfigError> {
        let n: i64 = text.trim().parse().map_err(|_| ConfigError::invalid(field, text, "is not a port number (1-65535)"))?;
        Self::from_i64(field, n)
    }

    pub fn from_i64(field: &str, n: i64) -> Result<Self, ConfigError> {
        u16::try_from(n)
            .ok()
            .and_then(Port::new)
            .ok_or_else(|| ConfigError::invalid(field, n.to_string(), "is not a port number (1-65535)"))
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A CIDR as the user wrote it (that text goes into iptables rules, as
/// fsm-init would write it) and as it parses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Cidr {
    pub text: String,
    #[serde(skip)]
    pub net: IpNet,
}

impl Cidr {
    /// Address ranges must be in CIDR form (`10.0.0.0/8`, `1.1.1.1/32`), as
    /// FSM's `net.ParseCIDR` requires.
    pub fn parse(field: &str, text: &str) -> Result<Self, ConfigError> {
        let text = text.trim();
        let net: IpNet =
            text.parse().map_err(|_| ConfigError::invalid(field, text, "is not an IP address range in CIDR form (e.g. 10.0.0.0/8)"))?;
        Ok(Cidr { text: text.to_owned(), net })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A network interface name, or iptables' prefix pattern `eth+` (every
/// interface whose name starts with `eth`), as both dataplanes read it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct InterfaceName(String);

impl InterfaceName {
    /// At most 15 bytes (IFNAMSIZ with its NUL), of letters, digits, `_`,
    /// `.` and `-`: what interface names are in practice. The kernel would
    /// take more (`$`, `;`, quotes), but the name reaches iptables and the
    /// shell of the printed fsm-init script, where those are syntax.
    pub fn parse(field: &str, text: &str) -> Result<Self, ConfigError> {
        let name = text.strip_suffix('+').unwrap_or(text);
        let ok = text.len() < 16
            && !name.is_empty()
            && name != "."
            && name != ".."
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if ok {
            Ok(InterfaceName(text.to_owned()))
        } else {
            Err(ConfigError::invalid(
                field,
                text,
                "is not a network interface name (1-15 of A-Z a-z 0-9 _ . -, or a prefix ending in + such as eth+)",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the interface `name` is this one, or starts with this prefix
    /// (`eth+`), as iptables' `-i`/`-o` match.
    pub fn matches(&self, name: &str) -> bool {
        match self.0.strip_suffix('+') {
            Some(prefix) => name.starts_with(prefix),
            None => self.0 == name,
        }
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_outside_1_to_65535_are_refused_naming_field_and_value() {
        for bad in ["0", "65536", "-1", "80a", ""] {
            let err = Port::parse("f", bad).unwrap_err().to_string();
            assert!(err.starts_with("f: "), "{err}");
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        assert_eq!(Port::parse("f", " 8080 ").unwrap().get(), 8080);
        assert_eq!(Port::parse("f", "65535").unwrap().get(), 65535);
        assert_eq!(Port::from_i64("f", 1).unwrap().get(), 1);
        assert!(Port::from_i64("f", 70000).is_err());
    }

    #[test]
    fn cidrs_must_be_in_cidr_form() {
        assert!(Cidr::parse("f", "1.1.1.1").is_err());
        assert!(Cidr::parse("f", "10.0.0.0/33").is_err());
        assert!(Cidr::parse("f", "10.0.0.0/8x").is_err());
        let c = Cidr::parse("f", " 2.2.2.2/24").unwrap();
        assert_eq!(c.text, "2.2.2.2/24");
        assert_eq!(c.net.trunc().to_string(), "2.2.2.0/24");
        assert!(Cidr::parse("f", "fd00::/8").is_ok());
    }

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        for good in ["net1", "eth0.100", "flannel.1", "br-1a2b", "cali_x", "eth+", "0123456789abcde"] {
            assert!(InterfaceName::parse("f", good).is_ok(), "{good}");
        }
        for bad in ["", "+", "a/b", "a b", "0123456789abcdef", "eth0:1", "..", "$(reboot)", "a;b", "a'b", "eth+x", "e\nth"] {
            let err = InterfaceName::parse("f", bad).unwrap_err().to_string();
            assert!(err.starts_with("f: ") && err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn a_trailing_plus_matches_every_interface_with_that_prefix() {
        let wildcard = InterfaceName::parse("f", "eth+").unwrap();
        assert!(wildcard.matches("eth0") && wildcard.matches("eth") && wildcard.matches("eth1.5"));
        assert!(!wildcard.matches("net1") && !wildcard.matches("veth0"));
        let exact = InterfaceName::parse("f", "eth0").unwrap();
        assert!(exact.matches("eth0") && !exact.matches("eth01"));
    }
}
