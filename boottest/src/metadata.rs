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
use std::path::{Path, PathBuf};

/// Path → (content type, body), as served during one boot; and path →
/// (content type, file) for artifacts, served byte for byte from the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    pub paths: BTreeMap<String, (String, String)>,
    #[serde(default)]
    pub files: BTreeMap<String, (String, PathBuf)>,
}

impl Served {
    /// The rendered bodies, with each artifact body resolved to the file
    /// `artifacts` names for it (an artifact without a file is an error).
    pub fn new(
        paths: BTreeMap<String, Body>,
        artifacts: &BTreeMap<String, PathBuf>,
    ) -> Result<Served> {
        let mut s = Served::default();
        for (p, b) in paths {
            match &b.artifact {
                Some(a) => {
                    let f = artifacts
                        .get(a)
                        .ok_or_else(|| anyhow!("{p}: the artifact {a:?} was not built"))?;
                    s.files.insert(p, (b.content_type, f.clone()));
                }
                None => {
                    s.paths.insert(p, (b.content_type, b.body));
                }
            }
        }
        Ok(s)
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
        self.paths.get(plain(path))
    }

    /// The file served for a request path, if it is an artifact's.
    pub fn file(&self, path: &str) -> Option<&(String, PathBuf)> {
        self.files.get(plain(path))
    }
}

/// A request path without its query and trailing '/'.
fn plain(path: &str) -> &str {
    let p = path.split('?').next().unwrap_or(path);
    if p.len() > 1 {
        p.trim_end_matches('/')
    } else {
        p
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
    if let (Some((ctype, file)), "GET" | "HEAD") = (served.file(path), method) {
        let mut f = std::fs::File::open(file)
            .with_context(|| format!("{}: cannot open the artifact", file.display()))?;
        let len = f.metadata().with_context(|| format!("{}: cannot stat", file.display()))?.len();
        write!(output, "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")?;
        if method != "HEAD" {
            std::io::copy(&mut f, output)
                .with_context(|| format!("{}: cannot send", file.display()))?;
        }
        output.flush()?;
        return log_request(log, method, path, "200");
    }
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
    log_request(log, method, path, status.split(' ').next().unwrap_or(""))
}

/// Appends "METHOD PATH STATUS" to the log.
fn log_request(log: Option<&Path>, method: &str, path: &str, status: &str) -> Result<()> {
    if let Some(l) = log {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(l)
            .with_context(|| format!("{}: cannot log", l.display()))?;
        writeln!(f, "{method} {path} {status}")
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
        Served { paths, files: BTreeMap::new() }
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
    fn serves_artifacts_byte_for_byte_from_their_files() {
        let tmp = tempfile::tempdir().unwrap();
        let art = tmp.path().join("hello.raw");
        let bytes: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&art, &bytes).unwrap();
        let body = |artifact: Option<&str>| Body {
            content_type: "application/octet-stream".into(),
            body: "text".into(),
            userdata: false,
            artifact: artifact.map(str::to_string),
        };
        let mut paths = BTreeMap::new();
        paths.insert("/ext/hello.raw".to_string(), body(Some("hello")));
        paths.insert("/plain".to_string(), body(None));
        let mut built = BTreeMap::new();
        let e = Served::new(paths.clone(), &built).unwrap_err().to_string();
        assert!(e.contains("/ext/hello.raw") && e.contains("\"hello\" was not built"), "{e}");
        built.insert("hello".to_string(), art.clone());
        let s = Served::new(paths, &built).unwrap();
        assert_eq!(s.paths.len(), 1);
        let f = tmp.path().join("served.json");
        s.write(&f).unwrap();
        let s = Served::read(&f).unwrap();
        let mut out = Vec::new();
        respond(&s, &mut &b"GET /ext/hello.raw HTTP/1.1\r\nHost: x\r\n\r\n"[..], &mut out, None)
            .unwrap();
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&out[..split]).to_string();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("Content-Length: 70000\r\n"), "{head}");
        assert_eq!(&out[split..], &bytes[..]);
        // A missing file is an error (the responder's exit shows in QEMU's log), not a 404.
        std::fs::remove_file(&art).unwrap();
        let e =
            respond(&s, &mut &b"GET /ext/hello.raw HTTP/1.1\r\n\r\n"[..], &mut Vec::new(), None)
                .unwrap_err()
                .to_string();
        assert!(e.contains("hello.raw"), "{e}");
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
