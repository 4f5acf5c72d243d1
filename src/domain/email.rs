//! A pragmatic email address check: the dot-atom form of RFC 5321/5322 with internationalised
//! (RFC 6531) characters allowed, and a domain that could be resolved on the public internet.
//! Quoted local parts and address literals are refused: no real sign-up form produces them.

/// The longest address SMTP can carry (RFC 5321 forward-path limit).
pub const MAX_EMAIL_LEN: usize = 254;

/// Why an address was refused; the message goes to the client as is.
pub fn check(address: &str) -> Result<(), &'static str> {
    // Characters, as the contract counts (an internationalised address is longer in bytes).
    if address.chars().count() > MAX_EMAIL_LEN {
        return Err("must be at most 254 characters long");
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Err("must be an email address such as name@example.com (no '@' found)");
    };
    check_local(local)?;
    check_domain(domain)
}

fn check_local(local: &str) -> Result<(), &'static str> {
    if local.is_empty() {
        return Err("must have a part before the '@'");
    }
    if local.chars().count() > 64 {
        return Err("the part before the '@' must be at most 64 characters long");
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("the part before the '@' must not start or end with a dot or hold two dots in a row");
    }
    let atext = |c: char| {
        c.is_ascii_alphanumeric()
            || "!#$%&'*+/=?^_`{|}~-.".contains(c)
            || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
    };
    if !local.chars().all(atext) {
        return Err("the part before the '@' holds a character an address cannot have");
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), &'static str> {
    if domain.is_empty() {
        return Err("must have a domain after the '@'");
    }
    if domain.chars().count() > 253 {
        return Err("the domain must be at most 253 characters long");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err("the domain must have at least two labels, such as example.com");
    }
    for label in &labels {
        if label.is_empty() || label.chars().count() > 63 {
            return Err("each domain label must be 1 to 63 characters long");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a domain label must not start or end with a hyphen");
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && c.is_alphanumeric());
        if !label.chars().all(ok) {
            return Err("the domain holds a character a host name cannot have");
        }
    }
    let tld = labels[labels.len() - 1];
    if tld.chars().all(char::is_numeric) {
        return Err("the top-level domain must not be numeric");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_counted_in_characters_not_bytes() {
        // 64 Cyrillic letters: 128 bytes, 64 characters: the longest local part allowed.
        let local = "д".repeat(64);
        assert_eq!(check(&format!("{local}@example.com")), Ok(()));
        assert!(check(&format!("{local}д@example.com")).is_err());
        let label = "ü".repeat(63);
        assert_eq!(check(&format!("a@{label}.de")), Ok(()));
        assert!(check(&format!("a@{label}ü.de")).is_err());
        // 254 characters in all, 3 bytes each in the domain labels.
        let address =
            format!("{}@{}.{}.{}.com", "a".repeat(64), "語".repeat(61), "語".repeat(61), "語".repeat(61));
        assert_eq!(address.chars().count(), 254);
        assert_eq!(check(&address), Ok(()));
        assert!(check(&format!("a{address}")).is_err());
        assert!(check("a@example.١٢٣").is_err(), "a numeric top-level domain in Arabic-Indic digits");
    }

    #[test]
    fn real_addresses_are_accepted() {
        for ok in [
            "ada@example.com",
            "legrandvalentine0@mail.example",
            "first.last+tag@sub.example.co.uk",
            "o'brien@example.ie",
            "用户@例子.广告",
            "x@a-b.example",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn malformed_addresses_are_refused() {
        let long_local = format!("{}@example.com", "a".repeat(65));
        let too_long = format!("{}@{}.com", "a".repeat(60), "b".repeat(200));
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "ada@.com",
            "ada@example..com",
            ".ada@example.com",
            "ada.@example.com",
            "a..b@example.com",
            "ada lovelace@example.com",
            "ada@exa mple.com",
            "ada@-example.com",
            "ada@example-.com",
            "ada@example.123",
            "ada@[127.0.0.1]",
            "ada\n@example.com",
            long_local.as_str(),
            too_long.as_str(),
        ] {
            assert!(check(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
