//! Password authentication for the Redis port (`--requirepass`). Passwords
//! are compared in constant time (subtle) and never logged.

use subtle::ConstantTimeEq;

#[derive(Clone, Default)]
pub struct Auth {
    password: Option<Vec<u8>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Auth {{ password: {} }}",
            if self.password.is_some() {
                "<set>"
            } else {
                "none"
            }
        )
    }
}

impl Auth {
    pub fn new(password: Option<String>) -> Auth {
        Auth {
            password: password.filter(|p| !p.is_empty()).map(String::into_bytes),
        }
    }

    /// Whether clients must authenticate before running commands.
    pub fn required(&self) -> bool {
        self.password.is_some()
    }

    /// Checks `AUTH [user] password`; the only user is `default`.
    pub fn check(&self, user: Option<&[u8]>, password: &[u8]) -> bool {
        let Some(want) = &self.password else {
            return false;
        };
        let user_ok = user.is_none_or(|u| u == b"default");
        // ct_eq on slices of different lengths is false without comparing
        // contents: only the length can leak, never a prefix.
        let pass_ok: bool = want.as_slice().ct_eq(password).into();
        user_ok & pass_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_user_and_password() {
        let a = Auth::new(Some("s3cret".into()));
        assert!(a.required());
        assert!(a.check(None, b"s3cret"));
        assert!(a.check(Some(b"default"), b"s3cret"));
        assert!(!a.check(Some(b"admin"), b"s3cret"));
        assert!(!a.check(None, b"s3cre"));
        assert!(!a.check(None, b""));
        assert!(!Auth::new(None).required());
        assert!(!Auth::new(Some(String::new())).required());
        assert!(!format!("{a:?}").contains("s3cret"));
    }
}
