//! Sizes as users write and read them: `10G`, `512M`, `1024` (MiB, as `rbd`
//! reads it), `4096B`; `1 GiB`, `4 MiB`.

/// A size string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size '{0}': use a number of MiB, or a number with B, K, M, G or T (e.g. 10G)")]
pub struct BadSize(pub String);

/// Parse `N` followed by B/K/M/G/T (binary units, optionally followed by
/// `B` or `iB`, any case), or a bare `N`, which is MiB: `rbd create -s 1024`
/// makes a 1 GiB image, and a script written for it must not make a 1 KiB
/// one here (or shrink an image to that).
pub fn parse_size(s: &str) -> Result<u64, BadSize> {
    let bad = || BadSize(s.to_string());
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let unit = t[digits..].trim().to_ascii_uppercase();
    let shift = match unit.as_str() {
        "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "" | "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Format bytes the way `rbd` does: `0 B`, `4 MiB`, `1 GiB`, `1.5 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    let scale = 1u64 << (10 * unit);
    if bytes % scale == 0 {
        format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        format!("{:.1} {}", bytes as f64 / scale as f64, UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_size_suffixes_are_binary() {
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("4096 b"), Ok(4096));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("3K"), Ok(3072));
    }

    #[test]
    fn test_parse_size_bare_number_is_mib_as_in_rbd() {
        assert_eq!(parse_size("1024"), Ok(1 << 30));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn test_parse_size_garbage_is_error() {
        for s in ["", "G", "-1", "1.5G", "10X", "99999999999999999999"] {
            assert!(parse_size(s).is_err(), "{s:?} parsed");
        }
        assert!(
            parse_size("17179869184G").is_err(),
            "overflow must not wrap"
        );
    }

    #[test]
    fn test_format_size_matches_rbd() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(4 << 20), "4 MiB");
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(1000), "1000 B");
    }
}
