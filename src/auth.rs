//! Who may connect and what they may run. A password for the `default` user
//! (`--requirepass`) gives every right; users from a TOML file (`--users`)
//! each have a password, the commands they may run and the scope prefixes
//! they may touch (the scope rule itself is the state machine's: see
//! `state::Access`). Passwords are compared in constant time (subtle) and
//! never logged.
//!
//! ```toml
//! [users.agent-acme]
//! password = "…"
//! commands = ["@agent"]        # groups: @agent @read @admin, names, or prefixes like "cache.*"
//! scopes = ["org:acme"]        # prefixes; omitted or empty: every scope
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::state::commands::{resp_commands, Group};
use crate::state::Access;

/// The RESP commands of a group of the command table, by name.
fn group(g: Group) -> impl Iterator<Item = String> {
    resp_commands()
        .filter(move |c| c.in_group(g))
        .map(|c| c.name.to_string())
}

pub struct User {
    pub name: String,
    password: Vec<u8>,
    /// Lower-case command names or `prefix.*` patterns; `*` is all.
    commands: Vec<String>,
    /// None: every scope.
    pub access: Option<Arc<Access>>,
}

impl User {
    /// Whether this user has every right (`@admin` or `*`): what the
    /// server's own commands (SHUTDOWN, CLIENT LIST / KILL, MONITOR, …) ask.
    pub fn is_admin(&self) -> bool {
        self.commands.iter().any(|c| c == "*")
    }

    /// Whether this user may run spendb command `name` (lower-case).
    pub fn may_run(&self, name: &str) -> bool {
        self.commands.iter().any(|c| {
            c == "*" || c == name || c.strip_suffix('*').is_some_and(|p| name.starts_with(p))
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    users: HashMap<String, UserRow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserRow {
    password: String,
    commands: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

/// Parses a users file.
pub fn parse_users(text: &str) -> Result<Vec<User>, String> {
    let file: UsersFile = toml::from_str(text).map_err(|e| format!("users file: {e}"))?;
    let mut users = Vec::new();
    for (name, row) in file.users {
        if name == "default" {
            return Err(
                "users file: 'default' is the --requirepass user; pick another name".into(),
            );
        }
        if row.password.is_empty() {
            return Err(format!("users file: user {name} has an empty password"));
        }
        let mut commands = Vec::new();
        for c in &row.commands {
            let c = c.to_ascii_lowercase();
            match c.as_str() {
                "@agent" => commands.extend(group(Group::Agent)),
                "@read" => commands.extend(group(Group::Read)),
                "@admin" | "*" => commands.push("*".into()),
                _ if c.ends_with('*') || resp_commands().any(|k| k.name == c) => commands.push(c),
                _ => {
                    return Err(format!(
                        "users file: user {name}: unknown command or group '{c}'"
                    ))
                }
            }
        }
        for s in &row.scopes {
            crate::state::scope::validate_scope(s.trim_end_matches('/'))
                .map_err(|e| format!("users file: user {name}: {e}"))?;
        }
        let access = (!row.scopes.is_empty()).then(|| Arc::new(Access::new(row.scopes)));
        users.push(User {
            name,
            password: row.password.into_bytes(),
            commands,
            access,
        });
    }
    Ok(users)
}

#[derive(Default)]
pub struct Auth {
    password: Option<Vec<u8>>,
    users: HashMap<String, Arc<User>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&String> = self.users.keys().collect();
        write!(
            f,
            "Auth {{ password: {}, users: {names:?} }}",
            if self.password.is_some() {
                "<set>"
            } else {
                "none"
            }
        )
    }
}

/// A successful authentication: None is the `default` user (every right).
pub type Grant = Option<Arc<User>>;

fn same(a: &[u8], b: &[u8]) -> bool {
    // ct_eq on slices of different lengths is false without comparing
    // contents: only the length can leak, never a prefix.
    a.ct_eq(b).into()
}

impl Auth {
    pub fn new(password: Option<String>, users: Vec<User>) -> Auth {
        Auth {
            password: password.filter(|p| !p.is_empty()).map(String::into_bytes),
            users: users
                .into_iter()
                .map(|u| (u.name.clone(), Arc::new(u)))
                .collect(),
        }
    }

    /// Whether clients must authenticate before running commands.
    pub fn required(&self) -> bool {
        self.password.is_some() || !self.users.is_empty()
    }

    /// Checks `AUTH [user] password`. Without a user name, the `default` user.
    pub fn check(&self, user: Option<&[u8]>, password: &[u8]) -> Option<Grant> {
        match user {
            None | Some(b"default") => {
                let want = self.password.as_ref()?;
                same(want, password).then_some(None)
            }
            Some(name) => {
                let u = self.users.get(std::str::from_utf8(name).ok()?)?;
                same(&u.password, password).then(|| Some(u.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_user_and_password() {
        let a = Auth::new(Some("s3cret".into()), vec![]);
        assert!(a.required());
        assert!(matches!(a.check(None, b"s3cret"), Some(None)));
        assert!(matches!(a.check(Some(b"default"), b"s3cret"), Some(None)));
        assert!(a.check(Some(b"admin"), b"s3cret").is_none());
        assert!(a.check(None, b"s3cre").is_none());
        assert!(a.check(None, b"").is_none());
        assert!(!Auth::new(None, vec![]).required());
        assert!(!Auth::new(Some(String::new()), vec![]).required());
        assert!(!format!("{a:?}").contains("s3cret"));
    }

    #[test]
    fn users_file() {
        let users = parse_users(
            r#"
            [users.agent]
            password = "pa"
            commands = ["@agent", "cache.*"]
            scopes = ["org:acme/"]
            [users.ops]
            password = "po"
            commands = ["@admin"]
            "#,
        )
        .unwrap();
        let a = Auth::new(None, users);
        assert!(a.required());
        let agent = a.check(Some(b"agent"), b"pa").unwrap().unwrap();
        assert!(
            agent.may_run("reserve") && agent.may_run("cache.get") && !agent.may_run("budget.set")
        );
        assert!(agent.access.as_ref().unwrap().allows("org:acme/team:1"));
        assert!(a.check(Some(b"agent"), b"po").is_none());
        assert!(
            a.check(None, b"pa").is_none(),
            "no default user without --requirepass"
        );
        let ops = a.check(Some(b"ops"), b"po").unwrap().unwrap();
        assert!(ops.may_run("budget.set") && ops.access.is_none());
        assert!(parse_users("[users.x]\npassword = \"p\"\ncommands = [\"flyaway\"]").is_err());
        assert!(parse_users("[users.x]\npassword = \"p\"\ncommands = []\nextra = 1").is_err());
        assert!(
            parse_users("[users.x]\npassword = \"p\"\ncommands = []\nscopes = [\"a//b\"]").is_err()
        );
        assert!(parse_users("[users.default]\npassword = \"p\"\ncommands = []").is_err());
    }
}
