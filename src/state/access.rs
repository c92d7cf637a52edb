//! Which scopes a caller may touch, and the keyspace its ids live in.
//!
//! A caller limited to scope prefixes is a *tenant*. A scope is allowed when
//! it is one of the prefixes or lies below one (segment-wise, so `org:acme`
//! does not cover `org:acme2`). Hold ids, spend ids, run ids and cache
//! namespaces a tenant names are qualified with its tenant key
//! (`{org:acme}call-1`), so two tenants can neither see nor collide with each
//! other's: the same id in two tenants is two different holds. Callers with
//! no prefixes (the default user, admins, the embedded API) use ids as they
//! are, and so see every tenant's ids in their qualified form.

use super::scope::is_within;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// Empty: every scope.
    pub prefixes: Vec<String>,
    /// `{prefix,prefix…}` (sorted, `/` trimmed): what this caller's ids
    /// are qualified with; empty for an unrestricted caller.
    tenant: String,
}

impl Access {
    /// Access limited to `prefixes` (empty: every scope). Callers with the
    /// same set of prefixes share one keyspace.
    pub fn new(prefixes: Vec<String>) -> Access {
        let tenant = if prefixes.is_empty() {
            String::new()
        } else {
            let mut keys: Vec<&str> = prefixes.iter().map(|p| p.trim_end_matches('/')).collect();
            keys.sort_unstable();
            keys.dedup();
            format!("{{{}}}", keys.join(","))
        };
        Access { prefixes, tenant }
    }

    pub fn allows(&self, scope: &str) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| is_within(scope, p))
    }

    /// The tenant key ids are qualified with (`{org:acme}`); None for an
    /// unrestricted caller.
    pub fn tenant(&self) -> Option<&str> {
        (!self.tenant.is_empty()).then_some(self.tenant.as_str())
    }

    /// `id` in this caller's keyspace.
    pub fn qualify(&self, id: &str) -> String {
        let mut q = String::with_capacity(self.tenant.len() + id.len());
        q.push_str(&self.tenant);
        q.push_str(id);
        q
    }

    /// `id` as this caller named it (the tenant key taken off).
    pub fn unqualify<'a>(&self, id: &'a str) -> &'a str {
        id.strip_prefix(self.tenant.as_str()).unwrap_or(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_segment_wise() {
        let a = Access::new(vec!["org:acme/".into(), "org:b/team:x".into()]);
        assert!(a.allows("org:acme"));
        assert!(a.allows("org:acme/team:1/user:2"));
        assert!(!a.allows("org:acme2"));
        assert!(a.allows("org:b/team:x/agent:y"));
        assert!(!a.allows("org:b"));
        assert!(!a.allows("org:b/team:y"));
        assert!(Access::default().allows("anything"));
    }

    #[test]
    fn tenants_have_their_own_keyspace() {
        let a = Access::new(vec!["org:b".into(), "org:a/".into()]);
        let same = Access::new(vec!["org:a".into(), "org:b".into()]);
        let other = Access::new(vec!["org:c".into()]);
        assert_eq!(a.tenant(), Some("{org:a,org:b}"));
        assert_eq!(a.qualify("h1"), same.qualify("h1"));
        assert_ne!(a.qualify("h1"), other.qualify("h1"));
        assert_eq!(a.unqualify(&a.qualify("h1")), "h1");
        let all = Access::new(vec![]);
        assert_eq!(all.tenant(), None);
        assert_eq!(all.qualify("h1"), "h1");
    }

    #[test]
    fn replies_lose_the_tenant_key_in_lists_too() {
        use crate::state::Value;
        let a = Access::new(vec!["org:a".into()]);
        let item = |id: &str| Value::Map(vec![("hold", Value::Str(a.qualify(id)))]);
        let mut list = Value::Array(vec![item("h1"), item("h2")]);
        list.unqualify(&a);
        let ids: Vec<_> = match &list {
            Value::Array(items) => items.iter().map(|v| v.field("hold").cloned()).collect(),
            _ => unreachable!(),
        };
        assert_eq!(ids, [Some(Value::str("h1")), Some(Value::str("h2"))]);
    }
}
