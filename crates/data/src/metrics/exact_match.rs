//! Exact match after normalisation, for short answers (math, GSM8K).
//!
//! [`normalize_answer`] applies, in order:
//! 1. trim surrounding whitespace, then strip one trailing `.`;
//! 2. if the rest is a decimal number (optional sign, digits with optional
//!    thousands commas in groups of exactly three, optional fraction), write it
//!    canonically: commas removed, leading `+` and leading zeros dropped,
//!    trailing fractional zeros and a bare `.` dropped, `-0` → `0`
//!    (so `1,080` == `1080`, `3.50` == `3.5`, `-0.0` == `0`, `.5` == `0.5`);
//!    this is string arithmetic, so long numbers never lose digits;
//! 3. otherwise remove all whitespace (`3 / 4` == `3/4`, `1, 2` == `1,2`); the
//!    comparison stays case-sensitive and fractions are not reduced
//!    (`6/8` != `3/4`).
//!
//! Caveat: `1,234` is read as one thousand two hundred thirty-four, never as a
//! two-item list.

/// The canonical form compared by [`exact_match`]; see the module docs.
pub fn normalize_answer(text: &str) -> String {
    let trimmed = text.trim();
    let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed).trim();
    match canonical_number(trimmed) {
        Some(number) => number,
        None => trimmed.chars().filter(|c| !c.is_whitespace()).collect(),
    }
}

/// True when the two answers normalise to the same string.
pub fn exact_match(prediction: &str, reference: &str) -> bool {
    normalize_answer(prediction) == normalize_answer(reference)
}

fn canonical_number(text: &str) -> Option<String> {
    let (negative, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (int_part, frac_part) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let int_digits = integer_digits(int_part)?;
    let frac = match frac_part {
        Some(f) if !f.bytes().all(|b| b.is_ascii_digit()) => return None,
        Some(f) => f.trim_end_matches('0'),
        None => "",
    };
    if int_digits.is_empty() && frac_part.is_none_or(str::is_empty) {
        return None;
    }
    let int_trimmed = int_digits.trim_start_matches('0');
    let int_trimmed = if int_trimmed.is_empty() {
        "0"
    } else {
        int_trimmed
    };
    let is_zero = int_trimmed == "0" && frac.is_empty();
    let mut out = String::new();
    if negative && !is_zero {
        out.push('-');
    }
    out.push_str(int_trimmed);
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    Some(out)
}

/// The digits of an integer part, accepting thousands commas only in groups of
/// three after a first group of one to three digits.
fn integer_digits(int_part: &str) -> Option<String> {
    if !int_part.contains(',') {
        return int_part
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| int_part.to_string());
    }
    let mut groups = int_part.split(',');
    let first = groups.next()?;
    if first.is_empty() || first.len() > 3 || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits = first.to_string();
    for group in groups {
        if group.len() != 3 || !group.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.push_str(group);
    }
    Some(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_rules() {
        assert!(exact_match(" 1,080. ", "1080"));
        assert!(exact_match("3.50", "3.5"));
        assert!(exact_match("3.0", "3"));
        assert!(exact_match("-0", "0"));
        assert!(exact_match("-0.00", "0"));
        assert!(exact_match("+7", "007"));
        assert!(exact_match(".5", "0.5"));
        assert!(exact_match("1,234,567.250", "1234567.25"));
        assert!(!exact_match("3.5", "35"));
        assert!(!exact_match("-3", "3"));
        assert_eq!(normalize_answer("-30.971"), "-30.971");
        assert_eq!(
            normalize_answer("12345678901234567890.10"),
            "12345678901234567890.1"
        );
    }

    #[test]
    fn non_numeric_rules() {
        assert!(exact_match("3 / 4", "3/4"));
        assert!(exact_match("-6/5", "-6/5"));
        assert!(!exact_match("6/8", "3/4"));
        assert!(exact_match("-3, 1, 5", "-3,1,5"));
        assert!(exact_match("4:25 AM", "4:25AM"));
        assert!(!exact_match("True", "true"));
        // Bad thousands grouping is not a number, so commas stay.
        assert_eq!(normalize_answer("12,34"), "12,34");
        assert_eq!(normalize_answer("1,2345"), "1,2345");
        assert_eq!(normalize_answer("."), "");
        assert_eq!(normalize_answer("-"), "-");
    }
}
