//! The platform's user-data: fetched over HTTP or read from QEMU's fw_cfg,
//! then classified. This is the provider part Ignition 2.14 lacks for
//! Hetzner (its `hetzner` provider came in 2.17): a 404 or an empty body is
//! "no user-data", and a cloud-config or a script (which Hetzner users also
//! pass) is not an Ignition config and is skipped rather than handed to
//! Ignition, which would reject it as invalid JSON and stop the boot.

use crate::config::UserData;
use crate::Result;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The most user-data we read (Hetzner allows 32 KiB; configs for other
/// platforms may be larger, but never this large).
pub const MAX_BYTES: usize = 4 << 20;

/// What the platform holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// No user-data at all, and why (`HTTP 404`, `no fw_cfg entry …`).
    None(String),
    Bytes(Vec<u8>),
}

/// What the user-data is.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    Empty,
    CloudConfig,
    Script,
    /// Anything else goes to Ignition, which parses and validates it (so a
    /// malformed config is Ignition's error, reported as such).
    Ignition,
}

/// Classifies user-data by its first line, as coreos-cloudinit and
/// Ignition's spec-2 detection did: `#cloud-config` and `#!` are not
/// Ignition configs; whitespace only is empty.
pub fn classify(data: &[u8]) -> Kind {
    let start = data.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else { return Kind::Empty };
    let d = &data[start..];
    if d.starts_with(b"#cloud-config") {
        Kind::CloudConfig
    } else if d.starts_with(b"#!") {
        Kind::Script
    } else {
        Kind::Ignition
    }
}

/// An HTTP response: status and body.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Parses a complete HTTP/1.x response (the server closed the connection
/// after it, as HTTP/1.0 asks): status line, headers, then the body, cut to
/// `Content-Length` when given; chunked bodies are decoded.
pub fn parse_response(raw: &[u8]) -> Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("HTTP response without the end of its headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "HTTP headers are not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x response: '{status_line}'"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status code in '{status_line}'"))?;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().map_err(|_| format!("Content-Length '{v}'"))?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        if rest.len() < n {
            return Err(format!("body cut short: {} of {n} bytes", rest.len()));
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut d: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = d.windows(2).position(|w| w == b"\r\n").ok_or("chunk size line cut short")?;
        let line = std::str::from_utf8(&d[..eol]).map_err(|_| "chunk size is not text")?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let n = usize::from_str_radix(size, 16).map_err(|_| format!("chunk size '{size}'"))?;
        d = &d[eol + 2..];
        if n == 0 {
            return Ok(out);
        }
        if d.len() < n + 2 || out.len() + n > MAX_BYTES {
            return Err("chunk cut short or too large".into());
        }
        out.extend_from_slice(&d[..n]);
        d = &d[n + 2..];
    }
}

/// One GET over HTTP/1.0; the whole response, at most `MAX_BYTES` of body.
fn http_get_once(host: &str, port: u16, path: &str) -> std::io::Result<Vec<u8>> {
    let addr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{host} has no address")))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: forge-init\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    s.take((MAX_BYTES + 64 * 1024) as u64).read_to_end(&mut raw)?;
    Ok(raw)
}

/// Fetches the user-data, retrying connection errors and server errors
/// (the network may still be coming up) until `deadline` has passed.
pub fn fetch(src: &UserData, deadline: Duration, log: &dyn Fn(&str)) -> Result<Fetched> {
    match src {
        UserData::FwCfg(name) => {
            let p = format!("/sys/firmware/qemu_fw_cfg/by_name/{name}/raw");
            match std::fs::read(&p) {
                Ok(b) if b.len() > MAX_BYTES => {
                    Err(format!("{p}: {} bytes, more than {MAX_BYTES}", b.len()))
                }
                Ok(b) => Ok(Fetched::Bytes(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if std::path::Path::new("/sys/firmware/qemu_fw_cfg").exists() {
                        Ok(Fetched::None(format!("no fw_cfg entry {name}")))
                    } else {
                        Ok(Fetched::None("no fw_cfg device".into()))
                    }
                }
                Err(e) => Err(format!("{p}: {e}")),
            }
        }
        UserData::Http { host, port, path } => {
            let start = Instant::now();
            let mut tries = 0;
            loop {
                tries += 1;
                let outcome = http_get_once(host, *port, path)
                    .map_err(|e| e.to_string())
                    .and_then(|raw| parse_response(&raw));
                let last = match outcome {
                    Ok(r) if r.status == 200 || r.status == 204 => {
                        if r.body.len() > MAX_BYTES {
                            return Err(format!("{src}: more than {MAX_BYTES} bytes"));
                        }
                        return Ok(Fetched::Bytes(r.body));
                    }
                    Ok(r) if r.status == 404 => return Ok(Fetched::None("HTTP 404".into())),
                    Ok(r) if r.status >= 500 => format!("HTTP {}", r.status),
                    Ok(r) => return Err(format!("{src}: HTTP {}", r.status)),
                    Err(e) => e,
                };
                if start.elapsed() >= deadline {
                    return Err(format!(
                        "{src}: no answer after {tries} tries in {}s (last: {last})",
                        start.elapsed().as_secs()
                    ));
                }
                if tries == 1 || tries % 10 == 0 {
                    log(&format!("user-data: {src}: {last}; retrying"));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(classify(b""), Kind::Empty);
        assert_eq!(classify(b" \n\t\r\n"), Kind::Empty);
        assert_eq!(classify(b"#cloud-config\nusers: []\n"), Kind::CloudConfig);
        assert_eq!(classify(b"\n#cloud-config\n"), Kind::CloudConfig);
        assert_eq!(classify(b"#!/bin/sh\necho hi\n"), Kind::Script);
        assert_eq!(classify(b"{\"ignition\":{\"version\":\"3.3.0\"}}"), Kind::Ignition);
        // Not JSON is still Ignition's to judge (and to reject, by name).
        assert_eq!(classify(b"hello"), Kind::Ignition);
        assert_eq!(classify(b"# a comment\n"), Kind::Ignition);
    }

    #[test]
    fn responses() {
        let r =
            parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello, and more").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.len()), (404, 0));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nserver: x\r\n\r\nto the end\n").unwrap();
        assert_eq!(r.body, b"to the end\n");
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;x=y\r\n!\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"hello!");
        for bad in [
            &b"HTTP/1.0 200 OK\r\n"[..],
            b"SSH-2.0-x\r\n\r\n",
            b"HTTP/1.0 abc\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nshort",
            b"HTTP/1.0 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(parse_response(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn fetch_from_a_local_server() {
        use std::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let answers: [&[u8]; 3] = [
                b"HTTP/1.0 503 Busy\r\n\r\n",
                b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
                b"HTTP/1.0 404 Not Found\r\n\r\n",
            ];
            let mut requests = Vec::new();
            for a in answers {
                let (mut s, _) = l.accept().unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0, "request cut short");
                    req.extend_from_slice(&buf[..n]);
                }
                requests.push(String::from_utf8_lossy(&req).into_owned());
                s.write_all(a).unwrap();
            }
            requests
        });
        let src =
            UserData::Http { host: "127.0.0.1".into(), port, path: "/hetzner/v1/userdata".into() };
        let logged = std::cell::RefCell::new(Vec::new());
        let log = |s: &str| logged.borrow_mut().push(s.to_string());
        // 503 is retried, then the body arrives.
        assert_eq!(
            fetch(&src, Duration::from_secs(30), &log).unwrap(),
            Fetched::Bytes(b"{}".to_vec())
        );
        assert_eq!(
            fetch(&src, Duration::from_secs(30), &log).unwrap(),
            Fetched::None("HTTP 404".into())
        );
        let requests = server.join().unwrap();
        assert!(
            requests[0].starts_with("GET /hetzner/v1/userdata HTTP/1.0\r\n"),
            "{}",
            requests[0]
        );
        assert!(logged.borrow()[0].contains("HTTP 503"), "{:?}", logged.borrow());
        // Nothing listening: an error naming the source once the deadline passes.
        let dead = UserData::Http { host: "127.0.0.1".into(), port, path: "/x".into() };
        let e = fetch(&dead, Duration::ZERO, &log).unwrap_err();
        assert!(
            e.starts_with(&format!("http://127.0.0.1:{port}/x: no answer after 1 tries")),
            "{e}"
        );
    }
}
