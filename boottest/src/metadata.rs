//! The fake metadata service: serves the paths a boot-test file declares.
//!
//! QEMU's user network hands every guest connection to the service's
//! address (e.g. 169.254.169.254:80) to a command (`guestfwd=…-cmd:`) with
//! the connection on its stdin and stdout; [`respond`] serves one HTTP
//! request that way from the boot's rendered paths (a JSON file written by
//! the harness) and appends "METHOD PATH STATUS" to a log the checks read.
//! Nothing here opens a socket, so nothing can reach outside the machine.

use crate::spec::Body;
use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

/// Path → (content type, body), as served during one boot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    pub paths: BTreeMap<String, (String, String)>,
}

impl Served {
    pub fn new(paths: BTreeMap<String, Body>) -> Served {
        Served { paths: paths.into_iter().map(|(p, b)| (p, (b.content_type, b.body))).collect() }
    }

    pub fn read(file: &Path) -> Result<Served> {
        let bytes =
            std::fs::read(file).with_context(|| format!("{}: cannot read", file.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| anyhow!("{}: {e}", file.display()))
    }

    pub fn write(&self, file: &Path) -> Result<()> {
        std::fs::write(file, serde_json::to_vec(self)?)
            .with_context(|| format!("{}: cannot write", file.display()))
    }

    /// The body for a request path (query and trailing '/' ignored), or None for a 404.
    pub fn body(&self, path: &str) -> Option<&(String, String)> {
        let p = path.split('?').next().unwrap_or(path);
        let p = if p.len() > 1 { p.trim_end_matches('/') } else { p };
        self.paths.get(p)
    }
}

/// Serves one HTTP request read from `input`, answering on `output`, and
/// logs "METHOD PATH STATUS" to `log`.
pub fn respond(
    served: &Served,
    input: &mut dyn BufRead,
    output: &mut dyn Write,
    log: Option<&Path>,
) -> Result<()> {
    let mut request = String::new();
    input.read_line(&mut request)?;
    loop {
        let mut h = String::new();
        if input.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body, ctype) = match (method, served.body(path)) {
        ("GET" | "HEAD", Some((t, b))) => ("200 OK", b.clone(), t.clone()),
        ("GET" | "HEAD", None) => ("404 Not Found", "not found\n".to_string(), "text/plain".into()),
        _ => ("405 Method Not Allowed", String::new(), "text/plain".into()),
    };
    write!(output, "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    if method != "HEAD" {
        output.write_all(body.as_bytes())?;
    }
    output.flush()?;
    if let Some(l) = log {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(l)
            .with_context(|| format!("{}: cannot log", l.display()))?;
        writeln!(f, "{method} {path} {}", status.split(' ').next().unwrap_or(""))
            .with_context(|| format!("{}: cannot log", l.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> Served {
        let mut paths = BTreeMap::new();
        paths.insert(
            "/hetzner/v1/metadata/hostname".to_string(),
            ("text/plain".to_string(), "forge-boot-test".to_string()),
        );
        Served { paths }
    }

    #[test]
    fn serves_declared_paths_and_404s_the_rest() {
        let s = served();
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        let mut out = Vec::new();
        respond(
            &s,
            &mut &b"GET /hetzner/v1/metadata/hostname/?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &mut out,
            Some(&log),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.ends_with("\r\n\r\nforge-boot-test"), "{text}");
        assert!(text.contains("Content-Length: 15\r\n"), "{text}");
        let mut out = Vec::new();
        respond(&s, &mut &b"GET /nope HTTP/1.1\r\n\r\n"[..], &mut out, Some(&log)).unwrap();
        assert!(String::from_utf8(out).unwrap().starts_with("HTTP/1.1 404"));
        let mut out = Vec::new();
        respond(
            &s,
            &mut &b"POST /hetzner/v1/metadata/hostname HTTP/1.1\r\n\r\n"[..],
            &mut out,
            None,
        )
        .unwrap();
        assert!(String::from_utf8(out).unwrap().starts_with("HTTP/1.1 405"));
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "GET /hetzner/v1/metadata/hostname/?x=1 200\nGET /nope 404\n"
        );
    }

    #[test]
    fn round_trips_through_its_file() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("served.json");
        served().write(&f).unwrap();
        assert_eq!(Served::read(&f).unwrap(), served());
        std::fs::write(&f, "{").unwrap();
        let e = Served::read(&f).unwrap_err().to_string();
        assert!(e.contains("served.json"), "{e}");
    }
}
