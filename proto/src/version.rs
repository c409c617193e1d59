//! Agent versions: which strings name one, and their order. The server refuses an agent release
//! that is not newer than every other; the device refuses a downgrade unless told; both by
//! this one rule.

/// Why `version` cannot name an agent version (a slot directory on devices, a release
/// version on the server).
pub fn check(version: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_');
    if version.is_empty() || version.len() > 64 {
        return Err(format!("version {version:?}: 1 to 64 characters"));
    }
    if !version.chars().all(ok_char) || version.starts_with('.') {
        return Err(format!(
            "version {version:?}: only letters, digits, '.', '-', '+' and '_', not starting with '.'"
        ));
    }
    Ok(())
}

/// Semantic-version order of `a` and `b` (`MAJOR.MINOR.PATCH[-PRE][+BUILD]`): numeric parts
/// compared as numbers, a pre-release before its release. `None` if either is not of that form.
pub fn compare(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    fn parse(v: &str) -> Option<([u64; 3], Option<&str>)> {
        let v = v.split('+').next()?;
        let (core, pre) = match v.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (v, None),
        };
        let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
        let n = [parts.next()??, parts.next()??, parts.next()??];
        parts.next().is_none().then_some((n, pre))
    }
    let (na, pa) = parse(a)?;
    let (nb, pb) = parse(b)?;
    Some(na.cmp(&nb).then_with(|| match (pa, pb) {
        (None, None) => std::cmp::Ordering::Equal,
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (Some(x), Some(y)) => x.cmp(y),
    }))
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use super::*;

    #[test]
    fn versions_order_as_semver_and_odd_ones_do_not_order() {
        assert_eq!(compare("1.10.0", "1.9.3"), Some(Ordering::Greater));
        assert_eq!(compare("1.0.0-rc.1", "1.0.0"), Some(Ordering::Less));
        assert_eq!(compare("1.0.0+build.7", "1.0.0"), Some(Ordering::Equal));
        assert_eq!(compare("1.0", "1.0.0"), None);
        assert!(check("0.2.0-e2e").is_ok());
        assert!(check("../x").is_err());
        assert!(check(".hidden").is_err());
        assert!(check("").is_err());
    }
}
