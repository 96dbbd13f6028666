//! The syntax of duration flags: `2s`, `500ms`, `1.5s`, `100us`, `1m`, or a
//! bare number of seconds (`0`, `2`).

use std::time::Duration;

/// Parses a duration flag; the error says what was expected.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected a number with a unit, like 2s, 500ms or 0"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "ns" => value / 1e9,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("invalid duration {text:?}: unknown unit {other:?} (use h, m, s, ms, us or ns)")),
    };
    if !seconds.is_finite() || seconds > 365.0 * 24.0 * 3600.0 {
        return Err(format!("invalid duration {text:?}: at most one year"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_bare_seconds() {
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert!(parse("fast").unwrap_err().contains("expected a number"));
        assert!(parse("2 weeks").unwrap_err().contains("unknown unit"));
        assert!(parse("-1s").is_err());
        assert!(parse("99999999999h").unwrap_err().contains("at most"));
    }
}
