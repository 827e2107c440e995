//! Tenant names: `cg:<id>` or `<id>`, the decimal cgroup v2 id.

use std::{fmt, str::FromStr};

use serde::{Serialize, Serializer};

/// A tenant: the cgroup v2 id (inode number of the cgroup directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(pub u64);

/// Why a tenant name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tenant {given:?}: expected cg:<id> or <id> with a decimal cgroup id above 0")]
pub struct TenantParseError {
    /// The text given.
    pub given: String,
}

impl FromStr for TenantId {
    type Err = TenantParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.trim().strip_prefix("cg:").unwrap_or(s.trim());
        let err = || TenantParseError { given: s.to_owned() };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        match digits.parse::<u64>() {
            Ok(0) | Err(_) => Err(err()),
            Ok(id) => Ok(TenantId(id)),
        }
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cg:{}", self.0)
    }
}

impl Serialize for TenantId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_both_spellings_and_rejects_the_rest() {
        for (text, want) in [("cg:42", Some(42)), ("42", Some(42)), (" 7 ", Some(7))] {
            assert_eq!(text.parse::<TenantId>().ok(), want.map(TenantId), "{text}");
        }
        for bad in [
            "",
            "cg:",
            "cg:0",
            "0",
            "-1",
            "cg:-1",
            "abc",
            "cg:1x",
            "1.5",
            "CG:1",
            "99999999999999999999999",
            "+5",
        ] {
            assert!(bad.parse::<TenantId>().is_err(), "{bad:?} must be refused");
        }
        assert_eq!(TenantId(9).to_string(), "cg:9");
    }
}
