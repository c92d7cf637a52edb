//! Scopes: paths of segments such as `org:acme/team:search/user:42`. A scope's
//! ancestors are its prefixes at `/` boundaries; a budget on any of them
//! covers it.

pub const MAX_SCOPE_LEN: usize = 256;
pub const MAX_SCOPE_DEPTH: usize = 8;

/// Checks a scope path: non-empty segments of printable non-space ASCII or
/// UTF-8 letters, no empty segment, bounded length and depth.
pub fn validate_scope(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("scope is empty".into());
    }
    if s.len() > MAX_SCOPE_LEN {
        return Err(format!("scope is longer than {MAX_SCOPE_LEN} bytes"));
    }
    let mut depth = 0;
    for seg in s.split('/') {
        depth += 1;
        if seg.is_empty() {
            return Err(format!("scope '{s}' has an empty segment"));
        }
        if seg.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "scope '{s}' contains whitespace or control characters"
            ));
        }
    }
    if depth > MAX_SCOPE_DEPTH {
        return Err(format!(
            "scope '{s}' is deeper than {MAX_SCOPE_DEPTH} segments"
        ));
    }
    Ok(())
}

/// The scope itself, then each ancestor up to the root segment:
/// `a/b/c` → `a/b/c`, `a/b`, `a`.
pub fn chain(scope: &str) -> impl Iterator<Item = &str> {
    let mut end = Some(scope.len());
    std::iter::from_fn(move || {
        let e = end?;
        let s = &scope[..e];
        end = s.rfind('/');
        Some(s)
    })
}

/// The scope cut to its first `level` (≥ 1) segments (`a/b/c`, 2 → `a/b`):
/// how the reports group by scope.
pub fn top(scope: &str, level: usize) -> &str {
    debug_assert!(level >= 1, "a scope level counts from 1");
    match scope.match_indices('/').nth(level.saturating_sub(1)) {
        Some((i, _)) => &scope[..i],
        None => scope,
    }
}

/// Whether `scope` is `prefix` or lies below it (segment-wise).
pub fn is_within(scope: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || scope == prefix
        || (scope.starts_with(prefix) && scope.as_bytes().get(prefix.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_keeps_the_first_segments() {
        assert_eq!(top("a/b/c", 1), "a");
        assert_eq!(top("a/b/c", 2), "a/b");
        assert_eq!(top("a/b/c", 3), "a/b/c");
        assert_eq!(top("a/b/c", 8), "a/b/c");
        assert_eq!(top("a", 1), "a");
    }

    #[test]
    fn chains_to_root() {
        let c: Vec<_> = chain("org:a/team:b/user:1").collect();
        assert_eq!(c, ["org:a/team:b/user:1", "org:a/team:b", "org:a"]);
        assert_eq!(chain("x").collect::<Vec<_>>(), ["x"]);
    }

    #[test]
    fn validates() {
        assert!(validate_scope("org:acme/team:x").is_ok());
        assert!(validate_scope("").is_err());
        assert!(validate_scope("a//b").is_err());
        assert!(validate_scope("a/").is_err());
        assert!(validate_scope("a b").is_err());
        assert!(validate_scope("a/".repeat(8).trim_end_matches('/')).is_ok());
        assert!(validate_scope("a/".repeat(9).trim_end_matches('/')).is_err());
    }

    #[test]
    fn within() {
        assert!(is_within("org:a/team:b", "org:a"));
        assert!(is_within("org:a/team:b", "org:a/"));
        assert!(is_within("org:a", "org:a"));
        assert!(!is_within("org:ab", "org:a"));
        assert!(is_within("anything", ""));
    }
}
