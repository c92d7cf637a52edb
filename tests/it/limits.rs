//! Connection limits: max connections, idle timeout, write timeout for
//! clients that do not read, argument size and count. Each refuses only the
//! offending connection, with a clear error where one can be sent.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::*;

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn ping(s: &mut TcpStream) -> String {
    s.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn max_connections_refuses_the_extra_one_only() {
    let s = Server::start(&["--max-connections", "2"]);
    let mut a = connect(s.port);
    let mut b = connect(s.port);
    assert_eq!(ping(&mut a), "+PONG\r\n");
    assert_eq!(ping(&mut b), "+PONG\r\n");
    let mut c = connect(s.port);
    assert_eq!(
        String::from_utf8(read_all(&mut c)).unwrap(),
        "-ERR max number of clients reached\r\n"
    );
    assert_eq!(ping(&mut a), "+PONG\r\n");
    drop(b);
    // Once one leaves, a new client gets in.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = connect(s.port);
        d.write_all(b"PING\r\n").unwrap();
        let got = read_until_pong_or_eof(&mut d);
        if got == "+PONG\r\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after a client left: {got}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_until_pong_or_eof(s: &mut TcpStream) -> String {
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn idle_connections_are_closed() {
    let s = Server::start(&["--idle-timeout", "200ms"]);
    let mut a = connect(s.port);
    assert_eq!(ping(&mut a), "+PONG\r\n");
    let t = Instant::now();
    assert!(read_all(&mut a).is_empty(), "closed without a reply");
    assert!(t.elapsed() >= Duration::from_millis(150));
    // The server is fine.
    assert_eq!(ping(&mut connect(s.port)), "+PONG\r\n");
}

#[test]
fn argument_size_and_count_limits() {
    let s = Server::start(&["--max-bulk", "100", "--max-args", "3"]);
    let mut a = connect(s.port);
    let ok = format!("*2\r\n$4\r\nECHO\r\n$100\r\n{}\r\n", "x".repeat(100));
    a.write_all(ok.as_bytes()).unwrap();
    let mut buf = vec![0u8; 512];
    let n = a.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"$100\r\n"));
    a.write_all(b"*2\r\n$4\r\nECHO\r\n$101\r\n").unwrap();
    let out = String::from_utf8(read_all(&mut a)).unwrap();
    assert_eq!(out, "-TOOBIG argument of 101 bytes; the limit is 100\r\n");
    let mut b = connect(s.port);
    b.write_all(b"*4\r\n").unwrap();
    let out = String::from_utf8(read_all(&mut b)).unwrap();
    assert_eq!(out, "-TOOBIG request has 4 arguments; the limit is 3\r\n");
    assert_eq!(ping(&mut connect(s.port)), "+PONG\r\n");
}

#[test]
fn a_client_that_does_not_read_is_dropped_after_the_write_timeout() {
    let s = Server::start(&["--write-timeout", "300ms"]);
    let mut a = connect(s.port);
    // 64 echoes of 1 MiB: far more than the socket buffers hold.
    let arg = "y".repeat(1 << 20);
    let req = format!("*2\r\n$4\r\nECHO\r\n${}\r\n{arg}\r\n", arg.len()).repeat(64);
    let mut w = a.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(req.as_bytes()); // fails once the server hangs up
    });
    std::thread::sleep(Duration::from_millis(1500)); // read nothing meanwhile
    let got = read_all(&mut a);
    writer.join().unwrap();
    let full = 64 * ((1 << 20) + 11);
    assert!(
        got.len() < full,
        "the server kept writing to a client that did not read"
    );
    // Others are served.
    assert_eq!(ping(&mut connect(s.port)), "+PONG\r\n");
}
