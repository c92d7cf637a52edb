//! Money: integer nano-dollars (1e-9 USD) inside, exact decimal strings at the
//! edges. No floats ever touch a balance.

/// An amount of money in nano-USD.
pub type Nanos = u64;

pub const NANOS_PER_USD: u64 = 1_000_000_000;

/// Parses a non-negative decimal USD amount ("10", "0.5", "0.000000001")
/// exactly. More than 9 fractional digits, signs, exponents or overflow are
/// errors rather than roundings.
pub fn parse_usd(s: &str) -> Result<Nanos, String> {
    let bad = || format!("'{s}' is not a USD amount (a decimal like 12.50, at most 9 decimals)");
    let s = s.strip_prefix('$').unwrap_or(s);
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, f),
        None => (s, ""),
    };
    if (whole.is_empty() && frac.is_empty())
        || frac.len() > 9
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let mut frac_nanos: u64 = 0;
    for (i, b) in frac.bytes().enumerate() {
        frac_nanos += u64::from(b - b'0') * 10u64.pow(8 - i as u32);
    }
    whole
        .checked_mul(NANOS_PER_USD)
        .and_then(|n| n.checked_add(frac_nanos))
        .ok_or_else(bad)
}

/// Formats nano-USD as the shortest exact decimal: 1_500_000_000 → "1.5".
pub fn format_usd(n: Nanos) -> String {
    format_signed_usd(n as i128)
}

/// Formats a signed nano-USD amount (remaining can be negative after an overrun).
pub fn format_signed_usd(n: i128) -> String {
    let mut out = Vec::with_capacity(24);
    write_signed_usd(n, &mut out);
    String::from_utf8(out).expect("digits, sign and point are ASCII")
}

/// `format_signed_usd` appended to a buffer, without allocating (replies
/// format several amounts each; this was 15 % of a request's instructions).
pub fn write_signed_usd(n: i128, out: &mut Vec<u8>) {
    if n < 0 {
        out.push(b'-');
    }
    let a = n.unsigned_abs();
    let whole = a / NANOS_PER_USD as u128;
    let mut frac = (a % NANOS_PER_USD as u128) as u64;
    out.extend_from_slice(itoa::Buffer::new().format(whole).as_bytes());
    if frac == 0 {
        return;
    }
    out.push(b'.');
    let mut digits = 9;
    while frac.is_multiple_of(10) {
        frac /= 10;
        digits -= 1;
    }
    let mut buf = itoa::Buffer::new();
    let s = buf.format(frac);
    out.extend(std::iter::repeat_n(b'0', digits - s.len()));
    out.extend_from_slice(s.as_bytes());
}

/// Cost of `tokens` at `per_million` nano-USD per million tokens, summed over
/// several parts and rounded up once, so a call is never undercharged.
pub fn cost_of(parts: &[(u64, u64)]) -> Nanos {
    let total: u128 = parts
        .iter()
        .map(|&(tokens, per_m)| tokens as u128 * per_m as u128)
        .sum();
    let nanos = total.div_ceil(1_000_000);
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly() {
        assert_eq!(parse_usd("10").unwrap(), 10 * NANOS_PER_USD);
        assert_eq!(parse_usd("0.5").unwrap(), 500_000_000);
        assert_eq!(parse_usd(".25").unwrap(), 250_000_000);
        assert_eq!(parse_usd("$2.50").unwrap(), 2_500_000_000);
        assert_eq!(parse_usd("0.000000001").unwrap(), 1);
        assert!(parse_usd("0.0000000001").is_err());
        assert!(parse_usd("-1").is_err());
        assert!(parse_usd("1e3").is_err());
        assert!(parse_usd("").is_err());
        assert!(parse_usd(".").is_err());
        assert!(parse_usd("99999999999999999999").is_err());
    }

    #[test]
    fn formats_shortest() {
        assert_eq!(format_usd(0), "0");
        assert_eq!(format_usd(1_500_000_000), "1.5");
        assert_eq!(format_usd(1), "0.000000001");
        assert_eq!(format_signed_usd(-2_500_000_000), "-2.5");
        for s in ["12.34", "0.000123", "7"] {
            assert_eq!(format_usd(parse_usd(s).unwrap()), s);
        }
    }

    #[test]
    fn cost_rounds_up_once() {
        // 1 token at $2.50/M = 2500 nano-USD exactly.
        assert_eq!(cost_of(&[(1, 2_500_000_000)]), 2500);
        // 1 token at $0.0000015/M is a fraction of a nano: rounds up to 1.
        assert_eq!(cost_of(&[(1, 1500)]), 1);
        assert_eq!(
            cost_of(&[(1000, 2_500_000_000), (500, 10_000_000_000)]),
            2_500_000 + 5_000_000
        );
    }
}
