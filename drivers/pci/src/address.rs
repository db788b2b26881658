//! PCI function addresses: `DDDD:BB:DD.F`.

use std::fmt;
use std::str::FromStr;

/// A PCI function address (domain, bus, device, function), written `0000:00:04.0`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct PciAddress {
    /// PCI domain (segment).
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub device: u8,
    /// Function number (0..8).
    pub function: u8,
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{:x}", self.domain, self.bus, self.device, self.function)
    }
}

/// A string that is not a PCI address (it also converts into
/// [`PciError::InvalidAddress`](crate::PciError::InvalidAddress)).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a PCI address: write it as DDDD:BB:DD.F, for example 0000:00:04.0")]
pub struct AddressError(pub String);

impl FromStr for PciAddress {
    type Err = AddressError;

    /// Parses `DDDD:BB:DD.F` or `BB:DD.F` (domain 0), hex, case-insensitive.
    fn from_str(s: &str) -> Result<Self, AddressError> {
        let bad = || AddressError(s.to_string());
        let s2 = s.trim();
        let (rest, func) = s2.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (dom, bus, dev) = match parts.as_slice() {
            [d, b, v] => (*d, *b, *v),
            [b, v] => ("0", *b, *v),
            _ => return Err(bad()),
        };
        let hex = |t: &str, max_len: usize| -> Result<u32, AddressError> {
            if t.is_empty() || t.len() > max_len || !t.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u32::from_str_radix(t, 16).map_err(|_| bad())
        };
        let a = PciAddress {
            domain: hex(dom, 4)? as u16,
            bus: hex(bus, 2)? as u8,
            device: hex(dev, 2)? as u8,
            function: hex(func, 1)? as u8,
        };
        if a.device >= 32 || a.function >= 8 {
            return Err(bad());
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let a: PciAddress = "0000:00:04.0".parse().unwrap();
        assert_eq!(a, PciAddress { domain: 0, bus: 0, device: 4, function: 0 });
        assert_eq!(a.to_string(), "0000:00:04.0");
        let b: PciAddress = "3A:1f.7".parse().unwrap();
        assert_eq!(b.to_string(), "0000:3a:1f.7");
        for bad in [
            "",
            "00:04",
            "0000:00:20.0",
            "0000:00:04.8",
            "x:00:04.0",
            "00000:00:04.0",
            "0:0:0:0.0",
            "00:04.-1",
        ] {
            assert!(bad.parse::<PciAddress>().is_err(), "{bad}");
        }
    }
}
