//! COMMAND DOCS: Redis-7-style documentation of spendb's commands, derived
//! from the syntax strings of the command table (`state::commands`) (one source of truth), so that
//! redis-cli can show argument hints.
//!
//! Syntax: `<arg>` an argument, `WORD` a keyword, `[ … ]` optional,
//! `( a | b )` one of, `...` repeatable; a keyword followed by an argument
//! is one argument with a token (`INPUT <n>`).

use crate::state::commands::resp_commands;
use crate::state::Value;

#[derive(Debug, PartialEq)]
enum Arg {
    Value {
        name: String,
        token: Option<String>,
        optional: bool,
        multiple: bool,
    },
    Token {
        token: String,
        optional: bool,
    },
    Block {
        items: Vec<Arg>,
        optional: bool,
        multiple: bool,
    },
    OneOf {
        alts: Vec<Vec<Arg>>,
        optional: bool,
    },
}

fn tokenize(syntax: &str) -> Vec<String> {
    let mut spaced = String::new();
    for c in syntax.chars() {
        if "[]()|".contains(c) {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    spaced.split_whitespace().map(str::to_string).collect()
}

/// Parses a sequence until one of `stop` (not consumed) or the end.
fn seq(t: &[String], pos: &mut usize, stop: &[&str]) -> Vec<Arg> {
    let mut out: Vec<Arg> = Vec::new();
    while *pos < t.len() && !stop.contains(&t[*pos].as_str()) {
        let tok = t[*pos].clone();
        *pos += 1;
        match tok.as_str() {
            "[" => {
                let mut items = seq(t, pos, &["]"]);
                *pos += 1;
                let multiple = items
                    .iter()
                    .any(|a| matches!(a, Arg::Token { token, .. } if token == "..."));
                items.retain(|a| !matches!(a, Arg::Token { token, .. } if token == "..."));
                out.push(match items.len() {
                    1 => set_optional(items.pop().unwrap(), multiple),
                    _ => Arg::Block {
                        items,
                        optional: true,
                        multiple,
                    },
                });
            }
            "(" => {
                let mut alts = vec![seq(t, pos, &["|", ")"])];
                while t.get(*pos).map(String::as_str) == Some("|") {
                    *pos += 1;
                    alts.push(seq(t, pos, &["|", ")"]));
                }
                *pos += 1;
                out.push(Arg::OneOf {
                    alts,
                    optional: false,
                });
            }
            _ if tok.starts_with('<') => {
                let name = tok.trim_matches(|c| c == '<' || c == '>').to_string();
                // A keyword right before an argument is that argument's token.
                let token = match out.last() {
                    Some(Arg::Token { token, .. }) if token != "..." => {
                        let t = token.clone();
                        out.pop();
                        Some(t)
                    }
                    _ => None,
                };
                out.push(Arg::Value {
                    name,
                    token,
                    optional: false,
                    multiple: false,
                });
            }
            _ => out.push(Arg::Token {
                token: tok,
                optional: false,
            }),
        }
    }
    out
}

fn set_optional(a: Arg, multiple: bool) -> Arg {
    match a {
        Arg::Value { name, token, .. } => Arg::Value {
            name,
            token,
            optional: true,
            multiple,
        },
        Arg::Token { token, .. } => Arg::Token {
            token,
            optional: true,
        },
        Arg::Block { items, .. } => Arg::Block {
            items,
            optional: true,
            multiple,
        },
        Arg::OneOf { alts, .. } => Arg::OneOf {
            alts,
            optional: true,
        },
    }
}

fn flags(optional: bool, multiple: bool) -> Option<(&'static str, Value)> {
    let mut f = Vec::new();
    if optional {
        f.push(Value::Status("optional"));
    }
    if multiple {
        f.push(Value::Status("multiple"));
    }
    (!f.is_empty()).then_some(("flags", Value::Array(f)))
}

fn arg_value(a: &Arg) -> Value {
    let mut m: Vec<(&'static str, Value)> = Vec::new();
    match a {
        Arg::Value {
            name,
            token,
            optional,
            multiple,
        } => {
            m.push(("name", Value::str(name.clone())));
            m.push(("type", Value::str("string")));
            if let Some(t) = token {
                m.push(("token", Value::str(t.clone())));
            }
            m.extend(flags(*optional, *multiple));
        }
        Arg::Token { token, optional } => {
            m.push(("name", Value::str(token.to_ascii_lowercase())));
            m.push(("type", Value::str("pure-token")));
            m.push(("token", Value::str(token.clone())));
            m.extend(flags(*optional, false));
        }
        Arg::Block {
            items,
            optional,
            multiple,
        } => return block_value(items, *optional, *multiple),
        Arg::OneOf { alts, optional } => {
            m.push(("name", Value::str("choice")));
            m.push(("type", Value::str("oneof")));
            m.extend(flags(*optional, false));
            let alts = alts
                .iter()
                .map(|alt| match alt.as_slice() {
                    [one] => arg_value(one),
                    many => block_value(many, false, false),
                })
                .collect();
            m.push(("arguments", Value::Array(alts)));
        }
    }
    Value::Map(m)
}

fn block_value(items: &[Arg], optional: bool, multiple: bool) -> Value {
    let mut m = vec![("name", Value::str("block")), ("type", Value::str("block"))];
    m.extend(flags(optional, multiple));
    m.push((
        "arguments",
        Value::Array(items.iter().map(arg_value).collect()),
    ));
    Value::Map(m)
}

/// `COMMAND DOCS [name …]`: a map from command name to its docs (all of
/// spendb's commands when none is named; unknown names are left out).
pub fn command_docs(names: &[String]) -> Value {
    let mut out = Vec::new();
    for c in resp_commands() {
        let (name, summary, syntax) = (c.name, c.summary, c.syntax);
        if !names.is_empty() && !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        let toks = tokenize(syntax);
        let args = seq(&toks, &mut 0, &[]);
        let docs = Value::Map(vec![
            ("summary", Value::str(summary)),
            ("since", Value::str("0.1.0")),
            ("group", Value::str("spendb")),
            (
                "arguments",
                Value::Array(args.iter().map(arg_value).collect()),
            ),
        ]);
        out.push((name, docs));
    }
    Value::Map(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_syntax_of_every_command() {
        let toks = tokenize("<hold> <scope> <model> INPUT <n> [OUTPUT <max>] [TTL <ms>]");
        let args = seq(&toks, &mut 0, &[]);
        assert_eq!(args.len(), 6);
        assert_eq!(
            args[3],
            Arg::Value {
                name: "n".into(),
                token: Some("INPUT".into()),
                optional: false,
                multiple: false
            }
        );
        assert_eq!(
            args[4],
            Arg::Value {
                name: "max".into(),
                token: Some("OUTPUT".into()),
                optional: true,
                multiple: false
            }
        );
        let toks =
            tokenize("<scope> <DIM> <amount> (PER <period> | ROLLING <duration>) [<DIM> ...]");
        let args = seq(&toks, &mut 0, &[]);
        assert!(matches!(&args[3], Arg::OneOf { alts, .. } if alts.len() == 2));
        assert!(matches!(
            &args[4],
            Arg::Value {
                optional: true,
                multiple: true,
                ..
            }
        ));
        // Every command's syntax parses without leftovers.
        for c in resp_commands() {
            let toks = tokenize(c.syntax);
            let mut pos = 0;
            seq(&toks, &mut pos, &[]);
            assert_eq!(pos, toks.len(), "{}", c.name);
        }
    }
}
