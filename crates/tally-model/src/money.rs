//! Money: ISO 4217 currencies and exact conversion between decimal strings and
//! integer minor units.
//!
//! Every amount in Tally is an `i64` count of the currency's minor unit (cents for
//! USD, yen for JPY, fils for BHD), paired with a [`Currency`] that knows its ISO 4217
//! exponent. Floats never appear: a sale reported as `"19.99"` must be paid out as
//! exactly 1999 cents, and binary floating point cannot promise that.
//!
//! This module owns the currency table, [`parse_minor`] (decimal string to minor
//! units) and [`format_minor`] (the inverse).

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Why an amount or a currency code was rejected.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum MoneyError {
    /// No digits at all: `""`, `"-"`, `"."`, `"+."`.
    #[error("amount has no digits")]
    Empty,
    /// A byte that is not a digit, or a sign or point in the wrong place.
    #[error("invalid character in amount at byte {position}")]
    InvalidDigit { position: usize },
    /// A non-zero digit beyond the currency's exponent.
    #[error("amount has more than {max} decimal places")]
    TooManyDecimals { max: u8 },
    /// A leading `-` where the caller only accepts non-negative amounts.
    #[error("amount must not be negative")]
    Negative,
    /// The amount does not fit in an `i64` of minor units.
    #[error("amount is too large")]
    Overflow,
    /// Not an active ISO 4217 code with a minor unit.
    #[error("unknown currency code {0:?}")]
    UnknownCurrency(String),
    /// A comma that may be a thousands separator or a decimal comma (`1,234`), or grouped
    /// digits (`1.234,56`, `1,234.56`): reported amounts take a decimal comma only alone.
    #[error("amount {0:?} is ambiguous: send it with a dot as the decimal separator and no thousands separators")]
    Ambiguous(String),
}

/// An active ISO 4217 currency and the exponent of its minor unit.
///
/// Only [`Currency::from_code`] (or deserialization, which goes through it) builds
/// one, so the code is always three uppercase ASCII letters present in the table.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: [u8; 3],
    exponent: u8,
}

/// ISO 4217 List One: active codes with a numeric minor unit, sorted by code.
///
/// Codes whose minor unit is "N.A." (precious metals XAU/XAG/XPD/XPT, bond units
/// XBA–XBD, XDR, XSU, XUA, and the XTS/XXX test codes) are left out: nothing can be
/// sold or paid out in them, and without an exponent they have no minor unit.
/// Withdrawn codes (HRK, CUC, SLL, ZWL, ...) are left out too, except ANG, which ISO
/// keeps listed while Curaçao and Sint Maarten move to XCG and merchants' feeds lag.
static CURRENCIES: &[([u8; 3], u8)] = &[
    (*b"AED", 2),
    (*b"AFN", 2),
    (*b"ALL", 2),
    (*b"AMD", 2),
    (*b"ANG", 2),
    (*b"AOA", 2),
    (*b"ARS", 2),
    (*b"AUD", 2),
    (*b"AWG", 2),
    (*b"AZN", 2),
    (*b"BAM", 2),
    (*b"BBD", 2),
    (*b"BDT", 2),
    (*b"BGN", 2),
    (*b"BHD", 3),
    (*b"BIF", 0),
    (*b"BMD", 2),
    (*b"BND", 2),
    (*b"BOB", 2),
    (*b"BOV", 2),
    (*b"BRL", 2),
    (*b"BSD", 2),
    (*b"BTN", 2),
    (*b"BWP", 2),
    (*b"BYN", 2),
    (*b"BZD", 2),
    (*b"CAD", 2),
    (*b"CDF", 2),
    (*b"CHE", 2),
    (*b"CHF", 2),
    (*b"CHW", 2),
    (*b"CLF", 4),
    (*b"CLP", 0),
    (*b"CNY", 2),
    (*b"COP", 2),
    (*b"COU", 2),
    (*b"CRC", 2),
    (*b"CUP", 2),
    (*b"CVE", 2),
    (*b"CZK", 2),
    (*b"DJF", 0),
    (*b"DKK", 2),
    (*b"DOP", 2),
    (*b"DZD", 2),
    (*b"EGP", 2),
    (*b"ERN", 2),
    (*b"ETB", 2),
    (*b"EUR", 2),
    (*b"FJD", 2),
    (*b"FKP", 2),
    (*b"GBP", 2),
    (*b"GEL", 2),
    (*b"GHS", 2),
    (*b"GIP", 2),
    (*b"GMD", 2),
    (*b"GNF", 0),
    (*b"GTQ", 2),
    (*b"GYD", 2),
    (*b"HKD", 2),
    (*b"HNL", 2),
    (*b"HTG", 2),
    (*b"HUF", 2),
    (*b"IDR", 2),
    (*b"ILS", 2),
    (*b"INR", 2),
    (*b"IQD", 3),
    (*b"IRR", 2),
    (*b"ISK", 0),
    (*b"JMD", 2),
    (*b"JOD", 3),
    (*b"JPY", 0),
    (*b"KES", 2),
    (*b"KGS", 2),
    (*b"KHR", 2),
    (*b"KMF", 0),
    (*b"KPW", 2),
    (*b"KRW", 0),
    (*b"KWD", 3),
    (*b"KYD", 2),
    (*b"KZT", 2),
    (*b"LAK", 2),
    (*b"LBP", 2),
    (*b"LKR", 2),
    (*b"LRD", 2),
    (*b"LSL", 2),
    (*b"LYD", 3),
    (*b"MAD", 2),
    (*b"MDL", 2),
    (*b"MGA", 2),
    (*b"MKD", 2),
    (*b"MMK", 2),
    (*b"MNT", 2),
    (*b"MOP", 2),
    (*b"MRU", 2),
    (*b"MUR", 2),
    (*b"MVR", 2),
    (*b"MWK", 2),
    (*b"MXN", 2),
    (*b"MXV", 2),
    (*b"MYR", 2),
    (*b"MZN", 2),
    (*b"NAD", 2),
    (*b"NGN", 2),
    (*b"NIO", 2),
    (*b"NOK", 2),
    (*b"NPR", 2),
    (*b"NZD", 2),
    (*b"OMR", 3),
    (*b"PAB", 2),
    (*b"PEN", 2),
    (*b"PGK", 2),
    (*b"PHP", 2),
    (*b"PKR", 2),
    (*b"PLN", 2),
    (*b"PYG", 0),
    (*b"QAR", 2),
    (*b"RON", 2),
    (*b"RSD", 2),
    (*b"RUB", 2),
    (*b"RWF", 0),
    (*b"SAR", 2),
    (*b"SBD", 2),
    (*b"SCR", 2),
    (*b"SDG", 2),
    (*b"SEK", 2),
    (*b"SGD", 2),
    (*b"SHP", 2),
    (*b"SLE", 2),
    (*b"SOS", 2),
    (*b"SRD", 2),
    (*b"SSP", 2),
    (*b"STN", 2),
    (*b"SVC", 2),
    (*b"SYP", 2),
    (*b"SZL", 2),
    (*b"THB", 2),
    (*b"TJS", 2),
    (*b"TMT", 2),
    (*b"TND", 3),
    (*b"TOP", 2),
    (*b"TRY", 2),
    (*b"TTD", 2),
    (*b"TWD", 2),
    (*b"TZS", 2),
    (*b"UAH", 2),
    (*b"UGX", 0),
    (*b"USD", 2),
    (*b"USN", 2),
    (*b"UYI", 0),
    (*b"UYU", 2),
    (*b"UYW", 4),
    (*b"UZS", 2),
    (*b"VED", 2),
    (*b"VES", 2),
    (*b"VND", 0),
    (*b"VUV", 0),
    (*b"WST", 2),
    (*b"XAF", 0),
    (*b"XCD", 2),
    (*b"XCG", 2),
    (*b"XOF", 0),
    (*b"XPF", 0),
    (*b"YER", 2),
    (*b"ZAR", 2),
    (*b"ZMW", 2),
    (*b"ZWG", 2),
];

/// Longest input echoed back in [`MoneyError::UnknownCurrency`]; codes come from
/// untrusted postbacks and the error ends up in logs.
const MAX_ECHOED_CODE_CHARS: usize = 16;

impl Currency {
    /// Looks up an ISO 4217 code, ignoring ASCII case (`"usd"` is USD).
    pub fn from_code(code: &str) -> Result<Currency, MoneyError> {
        let unknown = || MoneyError::UnknownCurrency(code.chars().take(MAX_ECHOED_CODE_CHARS).collect());
        let [a, b, c] = <[u8; 3]>::try_from(code.as_bytes()).map_err(|_| unknown())?;
        let upper = [a.to_ascii_uppercase(), b.to_ascii_uppercase(), c.to_ascii_uppercase()];
        CURRENCIES
            .binary_search_by(|(entry, _)| entry.cmp(&upper))
            .map(|i| {
                let (code, exponent) = CURRENCIES[i];
                Currency { code, exponent }
            })
            .map_err(|_| unknown())
    }

    /// The three-letter uppercase code, e.g. `"USD"`.
    pub fn code(&self) -> &str {
        // Always ASCII because it came from the table; the fallback is unreachable.
        std::str::from_utf8(&self.code).unwrap_or("???")
    }

    /// Number of decimal places in one major unit: 2 for USD, 0 for JPY, 3 for BHD.
    pub fn exponent(&self) -> u8 {
        self.exponent
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.code())
    }
}

impl fmt::Debug for Currency {
    // Hand-written so the code shows as "USD" rather than a byte array.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Currency").field("code", &self.code()).field("exponent", &self.exponent).finish()
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CodeVisitor;

        impl de::Visitor<'_> for CodeVisitor {
            type Value = Currency;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an ISO 4217 currency code")
            }

            // A visitor rather than `<&str>::deserialize` so owned strings (TOML,
            // JSON with escapes) are accepted too.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Currency, E> {
                Currency::from_code(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(CodeVisitor)
    }
}

/// Parses a decimal amount into minor units of `currency`, exactly.
///
/// Accepted: an optional sign (`-` only when `allow_negative`; `-0` is 0), then
/// digits, then optionally `.` and more digits; at least one digit overall, so
/// `".5"` and `"5."` are fine but `"."` is not. No whitespace, thousands separators
/// or exponent notation.
///
/// Digits past the currency's exponent are accepted when they are all zero, so USD
/// `"12.5000"` is 1250: several sale platforms pad amounts to four places, and the
/// value is still exact. A non-zero digit there is [`MoneyError::TooManyDecimals`]
/// rather than being rounded, because rounding money silently is how ledgers drift.
///
/// When several things are wrong, a bad character wins over too many decimals, which
/// wins over overflow, so the error names the most basic problem.
pub fn parse_minor(s: &str, currency: Currency, allow_negative: bool) -> Result<i64, MoneyError> {
    let bytes = s.as_bytes();
    let (negative, start) = match bytes.first() {
        None => return Err(MoneyError::Empty),
        Some(b'-') if !allow_negative => return Err(MoneyError::Negative),
        Some(b'-') => (true, 1),
        Some(b'+') => (false, 1),
        Some(_) => (false, 0),
    };
    let exponent = currency.exponent;

    // The magnitude is built in u64 because |i64::MIN| does not fit in i64.
    let mut magnitude: Option<u64> = Some(0);
    let mut seen_digit = false;
    let mut seen_point = false;
    let mut fraction_digits: u8 = 0;
    let mut too_many_decimals = false;

    for (position, &byte) in bytes.iter().enumerate().skip(start) {
        match byte {
            b'0'..=b'9' => {
                seen_digit = true;
                let digit = u64::from(byte - b'0');
                if !seen_point {
                    magnitude = magnitude.and_then(|m| m.checked_mul(10)?.checked_add(digit));
                } else if fraction_digits < exponent {
                    fraction_digits += 1;
                    magnitude = magnitude.and_then(|m| m.checked_mul(10)?.checked_add(digit));
                } else if digit != 0 {
                    too_many_decimals = true;
                }
            }
            b'.' if !seen_point => seen_point = true,
            _ => return Err(MoneyError::InvalidDigit { position }),
        }
    }

    if !seen_digit {
        return Err(MoneyError::Empty);
    }
    if too_many_decimals {
        return Err(MoneyError::TooManyDecimals { max: exponent });
    }
    // Scale up for fraction digits the input left out ("5.5" USD is 550).
    for _ in fraction_digits..exponent {
        magnitude = magnitude.and_then(|m| m.checked_mul(10));
    }
    let magnitude = magnitude.ok_or(MoneyError::Overflow)?;
    if negative {
        0i64.checked_sub_unsigned(magnitude).ok_or(MoneyError::Overflow)
    } else {
        i64::try_from(magnitude).map_err(|_| MoneyError::Overflow)
    }
}

/// [`parse_minor`] for an amount a merchant reported (pixel, postback): a decimal comma is
/// also accepted where it cannot be anything else, as trackers such as Everflow accept it:
/// one comma, no dot, and one or two digits after it (`12,34` and `12,5` are `12.34` and
/// `12.50`). Three digits after a lone comma (`1,234`) could be a thousands separator, and two
/// separators (`1.234,56`) are grouping: both are refused as [`MoneyError::Ambiguous`] rather
/// than guessed, since a wrong guess is a thousandfold commission.
pub fn parse_reported_minor(s: &str, currency: Currency) -> Result<i64, MoneyError> {
    let commas = s.bytes().filter(|&b| b == b',').count();
    if commas == 0 {
        return parse_minor(s, currency, false);
    }
    let ambiguous = || MoneyError::Ambiguous(s.to_owned());
    let (int, frac) = s.split_once(',').ok_or_else(ambiguous)?;
    if commas > 1 || s.contains('.') || !(1..=2).contains(&frac.len()) {
        return Err(ambiguous());
    }
    parse_minor(&format!("{int}.{frac}"), currency, false)
}

/// Formats minor units as an exact decimal string with exactly `exponent` decimal
/// places: 1250 USD is `"12.50"`, -5 USD is `"-0.05"`, 1000 JPY is `"1000"`.
///
/// The output always parses back to the same value with [`parse_minor`].
pub fn format_minor(minor: i64, currency: Currency) -> String {
    // unsigned_abs so i64::MIN does not overflow on negation.
    let magnitude = minor.unsigned_abs();
    let exponent = u32::from(currency.exponent);
    let sign = if minor < 0 { "-" } else { "" };
    if exponent == 0 {
        return format!("{sign}{magnitude}");
    }
    let scale = 10u64.pow(exponent);
    let width = usize::from(currency.exponent);
    format!("{sign}{}.{:0width$}", magnitude / scale, magnitude % scale)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cur(code: &str) -> Currency {
        Currency::from_code(code).unwrap()
    }

    /// A decimal comma is taken only where it cannot be a thousands separator.
    #[test]
    fn reported_amounts_take_an_unambiguous_decimal_comma() {
        let (usd, jpy, bhd) = (cur("USD"), cur("JPY"), cur("BHD"));
        for (s, c, minor) in [
            ("12,34", usd, 1234),
            ("12,5", usd, 1250),
            (",5", usd, 50),
            ("12.34", usd, 1234),
            ("12", usd, 1200),
            ("1,23", bhd, 1230),
            ("1000", jpy, 1000),
        ] {
            assert_eq!(parse_reported_minor(s, c), Ok(minor), "{s} {}", c.code());
        }
        for s in ["1,234", "1,234.56", "1.234,56", "1,2,3", "12,", "1,2345"] {
            assert_eq!(parse_reported_minor(s, usd), Err(MoneyError::Ambiguous(s.into())), "{s}");
        }
        assert_eq!(parse_reported_minor("1,234", bhd), Err(MoneyError::Ambiguous("1,234".into())));
        // The currency's places still bound it, and signs are refused as before.
        assert_eq!(parse_reported_minor("12,5", jpy), Err(MoneyError::TooManyDecimals { max: 0 }));
        assert_eq!(parse_reported_minor("-1,50", usd), Err(MoneyError::Negative));
        assert!(MoneyError::Ambiguous("1,234".into()).to_string().contains("dot as the decimal separator"));
        // Program files keep the strict parser.
        assert!(parse_minor("12,34", usd, false).is_err());
    }

    #[test]
    fn table_is_sorted_without_duplicates() {
        for pair in CURRENCIES.windows(2) {
            assert!(
                pair[0].0 < pair[1].0,
                "{:?} must sort before {:?}",
                std::str::from_utf8(&pair[0].0),
                std::str::from_utf8(&pair[1].0),
            );
        }
    }

    #[test]
    fn table_entries_are_uppercase_letters_with_sane_exponents() {
        for (code, exponent) in CURRENCIES {
            assert!(code.iter().all(u8::is_ascii_uppercase), "{code:?}");
            assert!(*exponent <= 4, "{code:?}");
        }
        assert!(CURRENCIES.len() >= 150);
    }

    #[test]
    fn known_exponents() {
        let cases = [
            ("USD", 2),
            ("EUR", 2),
            ("GBP", 2),
            ("JPY", 0),
            ("KRW", 0),
            ("ISK", 0),
            ("VND", 0),
            ("CLP", 0),
            ("XAF", 0),
            ("XOF", 0),
            ("BHD", 3),
            ("KWD", 3),
            ("JOD", 3),
            ("OMR", 3),
            ("TND", 3),
            ("LYD", 3),
            ("IQD", 3),
            ("CLF", 4),
            ("UYW", 4),
        ];
        for (code, exponent) in cases {
            assert_eq!(cur(code).exponent(), exponent, "{code}");
        }
    }

    #[test]
    fn from_code_is_case_insensitive() {
        assert_eq!(cur("usd"), cur("USD"));
        assert_eq!(cur("uSd").code(), "USD");
    }

    #[test]
    fn from_code_rejects_unknown_and_malformed() {
        for code in ["", "US", "USDX", "XYZ", "XAU", "XXX", "HRK", "U$D", "ÜSD", "12 "] {
            assert_eq!(Currency::from_code(code), Err(MoneyError::UnknownCurrency(code.to_owned())), "{code:?}");
        }
        let long = "A".repeat(1000);
        let Err(MoneyError::UnknownCurrency(echoed)) = Currency::from_code(&long) else {
            panic!("long code must be rejected");
        };
        assert_eq!(echoed.len(), MAX_ECHOED_CODE_CHARS);
    }

    #[test]
    fn display_debug_and_messages() {
        let usd = cur("USD");
        assert_eq!(usd.to_string(), "USD");
        assert_eq!(format!("{usd:?}"), r#"Currency { code: "USD", exponent: 2 }"#);
        assert_eq!(MoneyError::TooManyDecimals { max: 2 }.to_string(), "amount has more than 2 decimal places");
        assert_eq!(MoneyError::UnknownCurrency("XYZ".into()).to_string(), "unknown currency code \"XYZ\"");
    }

    #[test]
    fn serde_as_code_string() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Row {
            currency: Currency,
        }
        let row = Row { currency: cur("BHD") };
        let text = toml::to_string(&row).unwrap();
        assert_eq!(text.trim(), r#"currency = "BHD""#);
        assert_eq!(toml::from_str::<Row>(r#"currency = "bhd""#).unwrap(), row);
        assert!(toml::from_str::<Row>(r#"currency = "XYZ""#).is_err());

        let bytes = postcard::to_stdvec(&row).unwrap();
        assert_eq!(bytes, b"\x03BHD");
        assert_eq!(postcard::from_bytes::<Row>(&bytes).unwrap(), row);
    }

    #[test]
    fn parses_valid_amounts() {
        let cases: &[(&str, &str, i64)] = &[
            ("12.50", "USD", 1250),
            ("12.5", "USD", 1250),
            ("12", "USD", 1200),
            ("12.", "USD", 1200),
            (".5", "USD", 50),
            ("0.05", "USD", 5),
            ("+3.01", "USD", 301),
            ("-0.05", "USD", -5),
            ("-0", "USD", 0),
            ("-0.00", "USD", 0),
            ("007.10", "USD", 710),
            ("5.000", "USD", 500),
            ("12.5000", "USD", 1250),
            ("1000", "JPY", 1000),
            ("5.0", "JPY", 5),
            ("5.", "JPY", 5),
            ("1.234", "BHD", 1234),
            ("1.2", "BHD", 1200),
            ("1.2340", "BHD", 1234),
            ("0.0001", "CLF", 1),
        ];
        for &(input, code, expected) in cases {
            assert_eq!(parse_minor(input, cur(code), true), Ok(expected), "{input} {code}");
        }
    }

    #[test]
    fn rejects_invalid_amounts() {
        use MoneyError::*;
        let cases: &[(&str, &str, bool, MoneyError)] = &[
            ("", "USD", true, Empty),
            ("-", "USD", true, Empty),
            ("+", "USD", true, Empty),
            (".", "USD", true, Empty),
            ("-.", "USD", true, Empty),
            ("1,000.00", "USD", true, InvalidDigit { position: 1 }),
            (" 1", "USD", true, InvalidDigit { position: 0 }),
            ("1 ", "USD", true, InvalidDigit { position: 1 }),
            ("1e3", "USD", true, InvalidDigit { position: 1 }),
            ("1.2.3", "USD", true, InvalidDigit { position: 3 }),
            ("+-1", "USD", true, InvalidDigit { position: 1 }),
            ("--1", "USD", true, InvalidDigit { position: 1 }),
            ("1-", "USD", true, InvalidDigit { position: 1 }),
            ("€5", "USD", true, InvalidDigit { position: 0 }),
            ("5€", "USD", true, InvalidDigit { position: 1 }),
            ("١٢", "USD", true, InvalidDigit { position: 0 }),
            ("5.001", "USD", true, TooManyDecimals { max: 2 }),
            ("5.0010", "USD", true, TooManyDecimals { max: 2 }),
            ("5.5", "JPY", true, TooManyDecimals { max: 0 }),
            ("1.2345", "BHD", true, TooManyDecimals { max: 3 }),
            ("-1", "USD", false, Negative),
            ("-0", "USD", false, Negative),
            ("92233720368547758.08", "USD", true, Overflow),
            ("-92233720368547758.09", "USD", true, Overflow),
            ("9223372036854775808", "JPY", true, Overflow),
            ("99999999999999999999999", "JPY", true, Overflow),
            ("999999999999999999999.999", "USD", true, TooManyDecimals { max: 2 }),
            ("99999999999999999999999x", "USD", true, InvalidDigit { position: 23 }),
        ];
        for (input, code, allow_negative, expected) in cases {
            assert_eq!(parse_minor(input, cur(code), *allow_negative), Err(expected.clone()), "{input:?} {code}");
        }
    }

    #[test]
    fn overflow_boundary() {
        let usd = cur("USD");
        assert_eq!(parse_minor("92233720368547758.07", usd, false), Ok(i64::MAX));
        assert_eq!(parse_minor("-92233720368547758.08", usd, true), Ok(i64::MIN));
        let jpy = cur("JPY");
        assert_eq!(parse_minor("9223372036854775807", jpy, false), Ok(i64::MAX));
        assert_eq!(parse_minor("-9223372036854775808", jpy, true), Ok(i64::MIN));
        // Trailing zeros that would overflow if scaled are ignored, not multiplied in.
        assert_eq!(parse_minor("9223372036854775807.000", jpy, false), Ok(i64::MAX));
    }

    #[test]
    fn formats_exactly() {
        let cases: &[(i64, &str, &str)] = &[
            (1250, "USD", "12.50"),
            (-5, "USD", "-0.05"),
            (0, "USD", "0.00"),
            (1000, "JPY", "1000"),
            (-1000, "JPY", "-1000"),
            (1234, "BHD", "1.234"),
            (1, "CLF", "0.0001"),
            (i64::MAX, "USD", "92233720368547758.07"),
            (i64::MIN, "USD", "-92233720368547758.08"),
            (i64::MIN, "JPY", "-9223372036854775808"),
        ];
        for &(minor, code, expected) in cases {
            assert_eq!(format_minor(minor, cur(code)), expected);
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(
            minor in any::<i64>(),
            code in prop::sample::select(vec!["USD", "JPY", "BHD", "CLF", "EUR", "KRW"]),
        ) {
            let currency = cur(code);
            let text = format_minor(minor, currency);
            prop_assert_eq!(parse_minor(&text, currency, true), Ok(minor));
        }

        #[test]
        fn parse_never_panics(s in any::<String>(), allow_negative in any::<bool>()) {
            let _ = parse_minor(&s, cur("USD"), allow_negative);
        }

        #[test]
        fn parse_never_panics_on_number_like_input(
            s in "[-+.0-9]{0,40}",
            allow_negative in any::<bool>(),
            code in prop::sample::select(vec!["USD", "JPY", "CLF"]),
        ) {
            let _ = parse_minor(&s, cur(code), allow_negative);
        }

        #[test]
        fn from_code_never_panics(s in any::<String>()) {
            let _ = Currency::from_code(&s);
        }
    }
}
