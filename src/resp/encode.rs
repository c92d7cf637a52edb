//! Reply encoding: a structured [`Value`] to RESP2 or RESP3 bytes. Maps are
//! RESP3 maps, or flat field/value arrays in RESP2; money is a decimal USD
//! string in both.

use crate::state::money::write_signed_usd;
use crate::state::Value;

pub fn encode(v: &Value, proto: u8, out: &mut Vec<u8>) {
    match v {
        Value::Ok => out.extend_from_slice(b"+OK\r\n"),
        Value::Status(s) => {
            out.push(b'+');
            out.extend_from_slice(s.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Value::Null => out.extend_from_slice(if proto >= 3 { b"_\r\n" } else { b"$-1\r\n" }),
        Value::Int(n) => {
            out.push(b':');
            out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Value::Bool(b) => out.extend_from_slice(match (proto >= 3, b) {
            (true, true) => b"#t\r\n",
            (true, false) => b"#f\r\n",
            (false, true) => b":1\r\n",
            (false, false) => b":0\r\n",
        }),
        Value::Str(s) => bulk(s.as_bytes(), out),
        Value::Bulk(b) => bulk(b, out),
        Value::Money(n) => {
            // Written in place, then its bulk header put in front (a shift of
            // a few bytes instead of a String per amount).
            let start = out.len();
            write_signed_usd(*n, out);
            let mut head = [0u8; 24];
            let mut digits = itoa::Buffer::new();
            let len = digits.format(out.len() - start).as_bytes();
            head[0] = b'$';
            head[1..1 + len.len()].copy_from_slice(len);
            head[1 + len.len()..3 + len.len()].copy_from_slice(b"\r\n");
            out.splice(start..start, head[..3 + len.len()].iter().copied());
            out.extend_from_slice(b"\r\n");
        }
        Value::Array(items) => {
            header(b'*', items.len(), out);
            for i in items {
                encode(i, proto, out);
            }
        }
        Value::Map(fields) => {
            if proto >= 3 {
                header(b'%', fields.len(), out);
            } else {
                header(b'*', fields.len() * 2, out);
            }
            for (k, v) in fields {
                bulk(k.as_bytes(), out);
                encode(v, proto, out);
            }
        }
        Value::Error { code, msg } => {
            out.push(b'-');
            out.extend_from_slice(code.as_str().as_bytes());
            out.push(b' ');
            // An error line cannot carry CR or LF.
            out.extend(
                msg.bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
            );
            out.extend_from_slice(b"\r\n");
        }
    }
}

pub fn bulk(b: &[u8], out: &mut Vec<u8>) {
    header(b'$', b.len(), out);
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

fn header(kind: u8, n: usize, out: &mut Vec<u8>) {
    out.push(kind);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_by_protocol() {
        let v = Value::Map(vec![
            ("status", Value::str("granted")),
            ("cost", Value::Money(1_500_000_000)),
        ]);
        let mut o2 = Vec::new();
        encode(&v, 2, &mut o2);
        assert_eq!(
            o2,
            b"*4\r\n$6\r\nstatus\r\n$7\r\ngranted\r\n$4\r\ncost\r\n$3\r\n1.5\r\n"
        );
        let mut o3 = Vec::new();
        encode(&v, 3, &mut o3);
        assert!(o3.starts_with(b"%2\r\n"));
        let (mut b2, mut b3) = (Vec::new(), Vec::new());
        encode(&Value::Bool(true), 2, &mut b2);
        encode(&Value::Bool(false), 3, &mut b3);
        assert_eq!((&b2[..], &b3[..]), (&b":1\r\n"[..], &b"#f\r\n"[..]));
        let mut e = Vec::new();
        encode(
            &Value::err(crate::state::ErrorCode::Err, "bad\r\nthing"),
            2,
            &mut e,
        );
        assert_eq!(e, b"-ERR bad  thing\r\n");
    }
}
