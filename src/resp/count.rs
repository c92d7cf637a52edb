//! COUNT, TRUNCATE and `RESERVE … TEXT`: token counting on the connection's
//! side, never on the engine. Texts above `INLINE_MAX` bytes are counted on
//! tokio's blocking pool, so a multi-megabyte prompt does not hold up the
//! other connections served by the same worker.

use std::borrow::Cow;

use super::cmd::{self, Args};
use crate::state::{ErrorCode, Value};
use crate::tokens::{self, Encoding};

/// Larger texts go to the blocking pool (about 0.1 ms of counting inline).
const INLINE_MAX: usize = 4096;

async fn off_worker<T: Send + 'static>(
    len: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Value> {
    if len <= INLINE_MAX {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Value::err(ErrorCode::Err, format!("token counting failed: {e}")))
}

fn text_arg(arg: &[u8]) -> Result<String, Value> {
    cmd::text(arg, "text")
}

fn described(enc: Encoding, estimate: bool, mut fields: Vec<(&'static str, Value)>) -> Value {
    fields.push(("encoding", Value::str(enc.name())));
    fields.push(("estimate", Value::Int(estimate as i64)));
    Value::Map(fields)
}

/// The `<model> <text>` both commands start with: the model's encoding,
/// whether counts with it are estimates, and the text.
fn model_and_text(name: &str, args: &Args, n: usize) -> Result<(Encoding, bool, String), Value> {
    if args.len() != n {
        return Err(cmd::syntax(name));
    }
    let (enc, estimate) = tokens::encoding_for(&String::from_utf8_lossy(&args[0]));
    Ok((enc, estimate, text_arg(&args[1])?))
}

/// `COUNT <model> <text>` → tokens, encoding, estimate.
pub async fn count(args: &Args<'_>) -> Value {
    let (enc, estimate, text) = match model_and_text("count", args, 2) {
        Ok(t) => t,
        Err(e) => return e,
    };
    match off_worker(text.len(), move || tokens::count(enc, &text)).await {
        Ok(n) => described(enc, estimate, vec![("tokens", Value::Int(n as i64))]),
        Err(e) => e,
    }
}

/// `TRUNCATE <model> <text> <max-tokens>` → text, tokens, truncated,
/// encoding, estimate.
pub async fn truncate(args: &Args<'_>) -> Value {
    let (enc, estimate, text) = match model_and_text("truncate", args, 3) {
        Ok(t) => t,
        Err(e) => return e,
    };
    let max = match cmd::uint(&args[2], "max-tokens") {
        Ok(m) => m as usize,
        Err(e) => return e,
    };
    let len = text.len();
    match off_worker(len, move || tokens::truncate(enc, &text, max)).await {
        Ok((cut, n)) => {
            let truncated = cut.len() < len;
            described(
                enc,
                estimate,
                vec![
                    ("text", Value::Bulk(cut.into_bytes())),
                    ("tokens", Value::Int(n as i64)),
                    ("truncated", Value::Int(truncated as i64)),
                ],
            )
        }
        Err(e) => e,
    }
}

/// `RESERVE <hold> <scope> <model> … TEXT <prompt> …`: the arguments with
/// `TEXT <prompt>` replaced by `INPUT <its token count>`, ready for
/// `cmd::parse`. None when there is no TEXT option; an error when both
/// INPUT and TEXT are given.
pub async fn reserve_text<'a>(args: &Args<'a>) -> Option<Result<Vec<Cow<'a, [u8]>>, Value>> {
    if args.len() < 3 {
        return None;
    }
    let opts = &args[3..];
    let key = |i: usize| opts.get(i).filter(|_| i.is_multiple_of(2));
    let text_at =
        (0..opts.len()).find(|&i| key(i).is_some_and(|k| k.eq_ignore_ascii_case(b"TEXT")))?;
    if (0..opts.len()).any(|i| key(i).is_some_and(|k| k.eq_ignore_ascii_case(b"INPUT"))) {
        return Some(Err(Value::err(
            ErrorCode::Err,
            "syntax: RESERVE takes INPUT <n> or TEXT <prompt>, not both",
        )));
    }
    let Some(prompt) = opts.get(text_at + 1) else {
        return Some(Err(cmd::syntax("reserve")));
    };
    let text = match text_arg(prompt) {
        Ok(t) => t,
        Err(e) => return Some(Err(e)),
    };
    let (enc, _) = tokens::encoding_for(&String::from_utf8_lossy(&args[2]));
    let n = match off_worker(text.len(), move || tokens::count(enc, &text)).await {
        Ok(n) => n,
        Err(e) => return Some(Err(e)),
    };
    let mut out: Vec<Cow<'a, [u8]>> = args.to_vec();
    out[3 + text_at] = Cow::Borrowed(b"INPUT");
    out[3 + text_at + 1] = Cow::Owned(n.to_string().into_bytes());
    Some(Ok(out))
}
