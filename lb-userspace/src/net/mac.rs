//! Ethernet addresses as text: `02:aa:bb:cc:dd:ee`.

/// Parses six colon-separated hex bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Prints six lower-case hex bytes separated by colons.
pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_print() {
        assert_eq!(
            parse_mac("02:aa:bb:cc:dd:0e"),
            Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0x0e])
        );
        assert_eq!(parse_mac("02:aa:bb:cc:dd"), None);
        assert_eq!(parse_mac("02:aa:bb:cc:dd:ee:ff"), None);
        assert_eq!(format_mac(&[2, 0xaa, 0, 1, 2, 3]), "02:aa:00:01:02:03");
    }
}
