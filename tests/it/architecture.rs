//! The architecture invariants of docs/ARCHITECTURE.md, checked by reading
//! the sources: a change that breaks one fails here, naming the file, the
//! line and the rule. Comments and `#[cfg(test)]` modules are not checked
//! (tests may use threads and clocks).

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A source file's code lines (1-based numbers): comments and everything
/// from the first `#[cfg(test)]` on left out.
fn code(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
        .map(|(i, l)| (i + 1, l.split("//").next().unwrap_or("").to_string()))
        .filter(|(_, l)| !l.trim().is_empty())
        .collect()
}

struct Rule {
    /// Which files it covers (path relative to the crate, `/` separated).
    applies: fn(&str) -> bool,
    /// What their code must not contain.
    forbidden: &'static [&'static str],
    /// (file, line text) pairs let through, each with its reason above.
    allowed: &'static [(&'static str, &'static str)],
    why: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        applies: |p| p.starts_with("src/state/"),
        forbidden: &[
            "crate::engine",
            "crate::store",
            "crate::resp",
            "crate::admin",
            "crate::metrics",
            "crate::webhook",
            "crate::auth",
            "crate::tokens",
            "crate::embedded",
            "tokio",
            "std::thread",
            "thread::spawn",
            "std::fs",
            "std::net",
            "SystemTime",
            "Instant::now",
            "rand::",
            "RandomState::new",
            "RandomState::default",
            "std::collections::HashMap<",
            "std::collections::HashSet",
            "HashMap::new",
            "HashSet::new",
            "process::exit",
            "Serialize",
            "Deserialize",
        ],
        // `state::Map` itself: std's HashMap with the fixed-key hasher; the
        // shipped price table is TOML parsed with serde (not a format
        // spendb writes).
        allowed: &[
            ("src/state/mod.rs", "HashMap<K, V, FixedHasher>"),
            ("src/state/price.rs", "Deserialize"),
        ],
        why: "src/state/ is the pure state machine: no I/O, clock, threads, randomness \
              (std's HashMap is randomly seeded: use state::Map or a BTreeMap), no layer above it, \
              and no serde: the formats on disk and in the API are store::format's types",
    },
    Rule {
        applies: |p| p == "src/engine.rs" || p == "src/metrics.rs",
        forbidden: &[
            "crate::resp",
            "crate::admin",
            "crate::auth",
            "crate::webhook",
            "crate::node",
            "crate::cluster",
        ],
        allowed: &[],
        why: "the engine (and the metrics it keeps) sit below the front ends, and know \
              cluster mode only as the ClusterLink trait",
    },
    Rule {
        applies: |p| p.starts_with("src/store/"),
        forbidden: &[
            "crate::engine",
            "crate::resp",
            "crate::admin",
            "crate::metrics",
        ],
        allowed: &[],
        why: "the store knows entries and files, not the layers above it",
    },
    Rule {
        applies: |p| !p.starts_with("src/store/"),
        forbidden: &[
            "log_store::read_page",
            "log_store::scan",
            "all_segments",
            "\".seg\"",
            "\".snap\"",
            "frame::decode",
        ],
        allowed: &[],
        why: "only src/store/ reads ledger and snapshot files (others use store::reader)",
    },
    Rule {
        applies: |p| p.starts_with("src/cluster/"),
        forbidden: &[
            "crate::engine",
            "crate::node",
            "crate::resp",
            "crate::admin",
            "crate::embedded",
            "SystemTime",
            "Instant::now",
            "rand::",
            "std::thread",
        ],
        allowed: &[],
        why: "cluster mode sits beside the engine behind the GlobalStore trait, with no clock \
              or randomness of its own, so the simulation drives it on MemStore",
    },
    Rule {
        applies: |p| p.starts_with("src/admin/"),
        forbidden: &["crate::resp"],
        allowed: &[],
        why:
            "the admin API builds typed commands itself; it does not go through the Redis front end",
    },
    Rule {
        applies: |p| p != "src/bin/spendb/main.rs",
        forbidden: &["process::exit"],
        allowed: &[],
        why: "only main decides the process's exit; below it errors are returned",
    },
];

#[test]
fn architecture_invariants_hold() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    assert!(files.len() > 30, "found only {} source files", files.len());
    let mut broken = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let lines = code(f);
        for rule in RULES.iter().filter(|r| (r.applies)(&rel)) {
            for (n, line) in &lines {
                let excused = rule
                    .allowed
                    .iter()
                    .any(|(file, text)| *file == rel && line.contains(text));
                for bad in rule.forbidden {
                    if line.contains(bad) && !excused {
                        broken.push(format!("{rel}:{n}: `{bad}`: {}", rule.why));
                    }
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "architecture invariants broken:\n{}",
        broken.join("\n")
    );
}

/// The checker itself: a planted violation is found.
#[test]
fn a_planted_violation_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.rs");
    std::fs::write(
        &f,
        "use std::thread; // fine in a comment: std::fs\nfn f() {}\n#[cfg(test)]\nmod t { use std::fs; }\n",
    )
    .unwrap();
    let lines = code(&f);
    assert_eq!(lines.len(), 2);
    assert!(lines[0].1.contains("std::thread") && !lines[0].1.contains("std::fs"));
    let state = RULES
        .iter()
        .find(|r| (r.applies)("src/state/x.rs"))
        .unwrap();
    assert!(state.forbidden.iter().any(|b| lines[0].1.contains(b)));
}
