//! Request framing: finds one complete request (a multibulk array of bulk
//! strings, or an inline command line) in a buffer without copying it.
//! Lengths are checked against limits before anything is buffered for them.

use std::ops::Range;

#[derive(Clone, Copy, Debug)]
pub struct FrameLimits {
    /// Largest single argument.
    pub max_bulk: usize,
    /// Most arguments in one request.
    pub max_args: usize,
    /// Longest inline command line.
    pub max_inline: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_bulk: 16 * 1024 * 1024,
            max_args: 1024 * 1024,
            max_inline: 64 * 1024,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Malformed bytes: the connection cannot be resynchronised.
    Protocol(String),
    /// Well-formed but over a limit.
    TooBig(String),
}

/// A parsed request: argument byte ranges inside the buffer, and how many
/// bytes the request took.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub args: Vec<Range<usize>>,
    pub len: usize,
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

/// Parses a decimal integer line starting at `at` (after the type byte).
/// Returns (value, index after CRLF).
fn int_line(buf: &[u8], at: usize) -> Result<Option<(i64, usize)>, FrameError> {
    let Some(end) = find_crlf(buf, at) else {
        if buf.len() - at > 20 {
            return Err(FrameError::Protocol("length line too long".into()));
        }
        return Ok(None);
    };
    let s = std::str::from_utf8(&buf[at..end])
        .map_err(|_| FrameError::Protocol("invalid length".into()))?;
    let n: i64 = s
        .parse()
        .map_err(|_| FrameError::Protocol(format!("invalid length '{s}'")))?;
    Ok(Some((n, end + 2)))
}

/// Parses one request from the front of `buf`; Ok(None) if more bytes are needed.
pub fn parse(buf: &[u8], limits: &FrameLimits) -> Result<Option<Request>, FrameError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != b'*' {
        return parse_inline(buf, limits);
    }
    let Some((n, mut pos)) = int_line(buf, 1)? else {
        return Ok(None);
    };
    if n < 0 {
        // A null array: nothing to run.
        return Ok(Some(Request {
            args: vec![],
            len: pos,
        }));
    }
    let n = n as usize;
    if n > limits.max_args {
        return Err(FrameError::TooBig(format!(
            "request has {n} arguments; the limit is {}",
            limits.max_args
        )));
    }
    let mut args = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        match buf.get(pos) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&b) => {
                return Err(FrameError::Protocol(format!(
                    "expected '$', got '{}'",
                    b as char
                )))
            }
        }
        let Some((len, start)) = int_line(buf, pos + 1)? else {
            return Ok(None);
        };
        if len < 0 {
            return Err(FrameError::Protocol("null bulk string in a request".into()));
        }
        let len = len as usize;
        if len > limits.max_bulk {
            return Err(FrameError::TooBig(format!(
                "argument of {len} bytes; the limit is {}",
                limits.max_bulk
            )));
        }
        let end = start + len;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(FrameError::Protocol(
                "bulk string not terminated by CRLF".into(),
            ));
        }
        args.push(start..end);
        pos = end + 2;
    }
    Ok(Some(Request { args, len: pos }))
}

/// An inline command: words separated by spaces, ended by LF or CRLF, with
/// Redis-style quoting ("..." with escapes, '...').
fn parse_inline(buf: &[u8], limits: &FrameLimits) -> Result<Option<Request>, FrameError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > limits.max_inline {
            return Err(FrameError::TooBig(format!(
                "inline command longer than {} bytes",
                limits.max_inline
            )));
        }
        return Ok(None);
    };
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let line = &buf[..line_end];
    let mut args = Vec::new();
    let mut i = 0;
    while i < line.len() {
        if line[i] == b' ' || line[i] == b'\t' {
            i += 1;
            continue;
        }
        if line[i] == b'"' || line[i] == b'\'' {
            // Quoted words are unescaped by the caller via `unquote`; here we
            // only find the extent.
            let q = line[i];
            let start = i;
            i += 1;
            while i < line.len() && line[i] != q {
                if line[i] == b'\\' && q == b'"' {
                    i += 1;
                }
                i += 1;
            }
            if i >= line.len() {
                return Err(FrameError::Protocol("unbalanced quotes in request".into()));
            }
            i += 1;
            args.push(start..i);
        } else {
            let start = i;
            while i < line.len() && line[i] != b' ' && line[i] != b'\t' {
                i += 1;
            }
            args.push(start..i);
        }
    }
    Ok(Some(Request { args, len: nl + 1 }))
}

/// The bytes of an argument: inline words in quotes are unescaped.
pub fn arg_bytes<'a>(buf: &'a [u8], r: &Range<usize>, inline: bool) -> std::borrow::Cow<'a, [u8]> {
    let b = &buf[r.clone()];
    if !inline || b.len() < 2 || !(b[0] == b'"' || b[0] == b'\'') {
        return std::borrow::Cow::Borrowed(b);
    }
    let inner = &b[1..b.len() - 1];
    if b[0] == b'\'' {
        return std::borrow::Cow::Borrowed(inner);
    }
    let mut out = Vec::with_capacity(inner.len());
    let mut it = inner.iter().copied();
    while let Some(c) = it.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b't') => out.push(b'\t'),
            Some(o) => out.push(o),
            None => {}
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(buf: &[u8]) -> Vec<Vec<u8>> {
        let r = parse(buf, &FrameLimits::default()).unwrap().unwrap();
        r.args
            .iter()
            .map(|a| arg_bytes(buf, a, buf[0] != b'*').into_owned())
            .collect()
    }

    #[test]
    fn multibulk_and_partial() {
        let full = b"*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n";
        assert_eq!(args(full), vec![b"PING".to_vec(), b"hi".to_vec()]);
        for cut in 0..full.len() {
            assert_eq!(
                parse(&full[..cut], &FrameLimits::default()).unwrap(),
                None,
                "cut at {cut}"
            );
        }
        let r = parse(full, &FrameLimits::default()).unwrap().unwrap();
        assert_eq!(r.len, full.len());
    }

    #[test]
    fn inline_with_quotes() {
        assert_eq!(args(b"PING\r\n"), vec![b"PING".to_vec()]);
        assert_eq!(
            args(b"ECHO \"a b\\n\" 'c d'\n"),
            vec![b"ECHO".to_vec(), b"a b\n".to_vec(), b"c d".to_vec()]
        );
        assert!(parse(b"ECHO \"open\n", &FrameLimits::default()).is_err());
    }

    #[test]
    fn limits_before_buffering() {
        let l = FrameLimits {
            max_bulk: 10,
            max_args: 3,
            max_inline: 8,
        };
        assert!(matches!(parse(b"*4\r\n", &l), Err(FrameError::TooBig(_))));
        assert!(matches!(
            parse(b"*1\r\n$11\r\n", &l),
            Err(FrameError::TooBig(_))
        ));
        assert!(matches!(
            parse(b"PINGPINGPING", &l),
            Err(FrameError::TooBig(_))
        ));
        assert!(matches!(
            parse(b"*1\r\n$x\r\n", &l),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            parse(b"*1\r\n+OK\r\n", &l),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            parse(b"*1\r\n$2\r\nabcd", &l),
            Err(FrameError::Protocol(_))
        ));
    }
}
