//! Token counting and truncation with tiktoken-rs, for COUNT, TRUNCATE and
//! `RESERVE … TEXT`. Pure computation, used by the front ends (never on the
//! engine: counting a large text takes milliseconds).
//!
//! Models map to encodings by family (docs/PROTOCOL.md, "Tokens"):
//! - `o200k_base`: gpt-4o, gpt-4.1, gpt-4.5, gpt-5, chatgpt-4o, o1, o3, o4,
//!   gpt-oss, codex;
//! - `cl100k_base`: gpt-4 (not 4o / 4.1 / 4.5), gpt-3.5, the
//!   text-embedding-3 and ada-002 embeddings;
//! - anything else (Claude, Gemini, Llama, unknown names): `o200k_base`, and
//!   the reply says `estimate 1`: their own tokenizers are not public or not
//!   tiktoken, and a modern BPE vocabulary is the nearest stand-in.
//!
//! Encoders are built once per process (tiktoken-rs singletons) and shared.

use tiktoken_rs::CoreBPE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    O200kBase,
    Cl100kBase,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }

    fn bpe(self) -> &'static CoreBPE {
        match self {
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        }
    }
}

/// The encoding for a model, and whether counts with it are an estimate
/// (the model is not an OpenAI model tiktoken covers).
pub fn encoding_for(model: &str) -> (Encoding, bool) {
    let lower = model.to_ascii_lowercase();
    // Provider prefixes: "openai/gpt-4o", "azure/gpt-4".
    let name = lower.rsplit('/').next().unwrap_or(&lower);
    const O200K: [&str; 11] = [
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "chatgpt-4o",
        "o1",
        "o3",
        "o4",
        "gpt-oss",
        "codex",
        "omni",
    ];
    const CL100K: [&str; 4] = [
        "gpt-4",
        "gpt-3.5",
        "text-embedding-3",
        "text-embedding-ada-002",
    ];
    if O200K.iter().any(|p| family(name, p)) {
        (Encoding::O200kBase, false)
    } else if CL100K.iter().any(|p| family(name, p)) {
        (Encoding::Cl100kBase, false)
    } else {
        (Encoding::O200kBase, true)
    }
}

/// `name` is `prefix` or `prefix-…` / `prefix.…` (so "o1" covers "o1-mini"
/// but not "o10x", and "gpt-4" does not swallow "gpt-4o": that is checked
/// first).
fn family(name: &str, prefix: &str) -> bool {
    name == prefix
        || name
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('-') || rest.starts_with('.'))
}

/// Tokens in `text` (special-token strings count as ordinary text: the text
/// is a user's prompt, not a control sequence).
pub fn count(enc: Encoding, text: &str) -> usize {
    enc.bpe().encode_ordinary(text).len()
}

/// The longest prefix of `text` that is whole tokens and at most
/// `max_tokens` of them, cut on a character boundary. Returns it with its own
/// token count.
pub fn truncate(enc: Encoding, text: &str, max_tokens: usize) -> (String, usize) {
    let bpe = enc.bpe();
    let tokens = bpe.encode_ordinary(text);
    if tokens.len() <= max_tokens {
        return (text.to_string(), tokens.len());
    }
    let mut n = max_tokens;
    loop {
        let bytes = bpe.decode_bytes(&tokens[..n]).unwrap_or_default();
        // A token can end inside a multi-byte character: keep whole ones.
        let valid = match std::str::from_utf8(&bytes) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        let prefix = &text[..valid];
        // Re-tokenising a prefix can merge differently at its end; the
        // returned text must itself be within the limit.
        let c = count(enc, prefix);
        if c <= max_tokens || n == 0 {
            return (prefix.to_string(), c);
        }
        n -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_map_to_their_encodings() {
        for m in [
            "gpt-4o",
            "gpt-4o-mini-2024-07-18",
            "openai/gpt-4.1",
            "o3-mini",
            "gpt-5",
            "o1",
        ] {
            assert_eq!(encoding_for(m), (Encoding::O200kBase, false), "{m}");
        }
        for m in [
            "gpt-4",
            "gpt-4-0613",
            "gpt-3.5-turbo",
            "GPT-4-turbo",
            "azure/gpt-4",
        ] {
            assert_eq!(encoding_for(m), (Encoding::Cl100kBase, false), "{m}");
        }
        for m in ["claude-sonnet-4", "gemini-2.5-pro", "llama-3", "o10x"] {
            assert_eq!(encoding_for(m), (Encoding::O200kBase, true), "{m}");
        }
    }

    #[test]
    fn truncation_cuts_whole_characters_within_the_limit() {
        let text = "héllo wörld 你好世界 🙂🙂🙂 end";
        for enc in [Encoding::O200kBase, Encoding::Cl100kBase] {
            let total = count(enc, text);
            for max in 0..=total + 1 {
                let (cut, n) = truncate(enc, text, max);
                assert!(text.starts_with(&cut));
                assert!(n <= max, "{max}: {n}");
                assert_eq!(n, count(enc, &cut));
                if max >= total {
                    assert_eq!(cut, text);
                }
            }
        }
    }
}
