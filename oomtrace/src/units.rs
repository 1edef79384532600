//! Units and display rules shared by every stage: one way to print a size,
//! one page size, one Kubernetes quantity parser, one escape for names that
//! people read.

use std::fmt;

/// A size in bytes, printed the one way oomtrace prints sizes: binary units,
/// one decimal below 10 (and below 100 from GiB up), whole numbers above.
///
/// `32 MiB`, `6.9 MiB`, `512 MiB`, `14.2 GiB`, `900 KiB`, `17 B`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    /// Honours width and alignment (`{:>8}`), for tables.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.text())
    }
}

impl Bytes {
    fn text(self) -> String {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < 1024 {
            return format!("{} B", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        let decimals = usize::from(value < 9.95 || (unit >= 2 && value < 99.95));
        let shown = format!("{value:.decimals$}");
        // Rounding up into the next unit ("1024 MiB") reads as the next unit.
        if shown == "1024" && unit + 1 < UNITS.len() {
            return format!("1.0 {}", UNITS[unit + 1]);
        }
        format!("{shown} {}", UNITS[unit])
    }
}

/// The system page size in bytes.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).ok().filter(|&v| v > 0).unwrap_or(4096)
}

/// A Kubernetes memory quantity in bytes: `128974848`, `129e6`, `129M`,
/// `123Mi`, `1.5Gi`, `500m` (milli-bytes, rounded up). `None` for anything
/// else, negative values and values beyond `u64`.
pub fn parse_quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    let v = (num * mult).ceil();
    (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
}

/// `text` with every control character (C0, DEL, C1) written as `\xNN` and
/// the backslash itself as `\\`, so a process or cgroup name can neither
/// move the cursor, clear the screen nor start a new line where people read
/// it (the text format, `rank`, Kubernetes Event messages). JSON needs none of
/// this: serde escapes control characters there.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    let needs = |c: char| c.is_control() || c == '\\';
    if !text.chars().any(needs) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let n = u32::from(c);
                out.push_str(&format!("\\x{n:02x}"));
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_one_way() {
        let cases: &[(u64, &str)] = &[
            (0, "0 B"),
            (17, "17 B"),
            (900 << 10, "900 KiB"),
            (33_554_432, "32 MiB"),
            (7_430_762, "7.1 MiB"),
            (512 << 20, "512 MiB"),
            (1023 << 20, "1023 MiB"),
            ((1024 << 20) - 1, "1.0 GiB"),
            (15_247_757_312, "14.2 GiB"),
            (3 << 30, "3.0 GiB"),
            (15360 << 20, "15.0 GiB"),
            (150 << 30, "150 GiB"),
            (u64::MAX, "16.0 EiB"),
        ];
        for (bytes, want) in cases {
            assert_eq!(Bytes(*bytes).to_string(), *want, "{bytes}");
        }
        assert_eq!(format!("[{:>8}]", Bytes(32 << 20)), "[  32 MiB]");
    }

    #[test]
    fn kubernetes_quantities() {
        assert_eq!(parse_quantity("128974848"), Some(128_974_848));
        assert_eq!(parse_quantity("129e6"), Some(129_000_000));
        assert_eq!(parse_quantity("129M"), Some(129_000_000));
        assert_eq!(parse_quantity("123Mi"), Some(123 << 20));
        assert_eq!(parse_quantity("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_quantity("500m"), Some(1));
        assert_eq!(parse_quantity("-1Mi"), None);
        assert_eq!(parse_quantity("1Xi"), None);
        assert_eq!(parse_quantity(""), None);
        assert_eq!(parse_quantity("20Ei"), None, "beyond u64");
    }

    #[test]
    fn control_characters_are_escaped_and_nothing_else_changes() {
        // The hostile comm of issue 9: clear screen, then a fake second line.
        assert_eq!(escape("\x1b[2Jx\nFAKE"), "\\x1b[2Jx\\x0aFAKE");
        assert_eq!(escape("python3"), "python3");
        assert!(matches!(
            escape("kube-apiserver"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(escape("a\u{7f}b\u{85}c"), "a\\x7fb\\x85c", "DEL and C1");
        assert_eq!(
            escape("c:\\x"),
            "c:\\\\x",
            "a backslash cannot fake an escape"
        );
        assert_eq!(escape("naïve ✓"), "naïve ✓");
    }
}
