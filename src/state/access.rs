//! Which scopes a caller may touch: a list of scope prefixes. A scope is
//! allowed when it is one of them or lies below one (segment-wise, so
//! `org:acme` does not cover `org:acme2`).

use super::scope::is_within;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// Empty: every scope.
    pub prefixes: Vec<String>,
}

impl Access {
    pub fn allows(&self, scope: &str) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| is_within(scope, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_segment_wise() {
        let a = Access {
            prefixes: vec!["org:acme/".into(), "org:b/team:x".into()],
        };
        assert!(a.allows("org:acme"));
        assert!(a.allows("org:acme/team:1/user:2"));
        assert!(!a.allows("org:acme2"));
        assert!(a.allows("org:b/team:x/agent:y"));
        assert!(!a.allows("org:b"));
        assert!(!a.allows("org:b/team:y"));
        assert!(Access::default().allows("anything"));
    }
}
