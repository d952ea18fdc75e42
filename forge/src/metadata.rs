//! A stand-in for the Hetzner Cloud metadata service, for boot tests.
//!
//! QEMU's user network hands every guest connection to 169.254.169.254:80
//! to a command (`guestfwd=…-cmd:`) with the connection on its stdin and
//! stdout; [`respond`] serves one HTTP request that way, from a fixed set of
//! test values covering every path of the metadata reference, and appends
//! the request line to a log the test reads afterwards. Nothing here opens a
//! socket, so nothing can reach outside the machine.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::Path;

/// The values the fake service serves.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Values {
    pub hostname: String,
    pub instance_id: u64,
    pub public_ipv4: String,
    pub public_ipv6: String,
    pub region: String,
    pub availability_zone: String,
    pub local_ipv4: String,
    pub public_keys: Vec<String>,
    pub private_ips: Vec<String>,
    pub mac_address: String,
    pub userdata: String,
}

impl Values {
    pub fn test(public_key: &str) -> Values {
        Values {
            hostname: "forge-boot-test".into(),
            instance_id: 4_200_042,
            public_ipv4: "192.0.2.10".into(),
            public_ipv6: "2001:db8:1234::1".into(),
            region: "eu-central".into(),
            availability_zone: "fsn1-dc14".into(),
            local_ipv4: "".into(),
            public_keys: vec![public_key.trim().to_string()],
            private_ips: vec!["10.0.0.2".into()],
            mac_address: "52:54:00:12:34:56".into(),
            userdata: "{\"ignition\":{\"version\":\"3.3.0\"}}".into(),
        }
    }

    fn network_config(&self, indent: &str) -> String {
        format!(
            "{i}config:\n{i}- mac_address: {mac}\n{i}  name: eth0\n{i}  subnets:\n{i}  - ipv4: true\n{i}    type: dhcp\n{i}  - address: {v6}/64\n{i}    dns_nameservers:\n{i}    - 2a01:4ff:ff00::add:1\n{i}    - 2a01:4ff:ff00::add:2\n{i}    gateway: fe80::1\n{i}    ipv6: true\n{i}    type: static\n{i}  type: physical\n{i}version: 1\n",
            i = indent,
            mac = self.mac_address,
            v6 = self.public_ipv6
        )
    }

    /// The body for `path`, or None for a 404.
    pub fn body(&self, path: &str) -> Option<(String, &'static str)> {
        let yaml = "application/yaml";
        let text = "text/plain";
        let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
        Some(match path {
            "/hetzner/v1/metadata" => {
                let keys: String = self.public_keys.iter().map(|k| format!("- {k}\n")).collect();
                (
                    format!(
                        "availability-zone: {az}\nhostname: {h}\ninstance-id: {id}\nlocal-ipv4: '{l}'\nnetwork-config:\n{nc}public-ipv4: {ip}\npublic-keys:\n{keys}region: {r}\nvendor_data: |\n  #cloud-config\n",
                        az = self.availability_zone,
                        h = self.hostname,
                        id = self.instance_id,
                        l = self.local_ipv4,
                        nc = self.network_config("  "),
                        ip = self.public_ipv4,
                        r = self.region
                    ),
                    yaml,
                )
            }
            "/hetzner/v1/metadata/hostname" => (self.hostname.clone(), text),
            "/hetzner/v1/metadata/instance-id" => (self.instance_id.to_string(), text),
            "/hetzner/v1/metadata/public-ipv4" => (self.public_ipv4.clone(), text),
            "/hetzner/v1/metadata/region" => (self.region.clone(), text),
            "/hetzner/v1/metadata/availability-zone" => (self.availability_zone.clone(), text),
            "/hetzner/v1/metadata/local-ipv4" => (self.local_ipv4.clone(), text),
            "/hetzner/v1/metadata/public-keys" => {
                (serde_json::to_string(&self.public_keys).unwrap(), "application/json")
            }
            "/hetzner/v1/metadata/private-networks" => {
                let mut s = String::new();
                for (i, ip) in self.private_ips.iter().enumerate() {
                    s.push_str(&format!(
                        "- ip: {ip}\n  alias_ips: []\n  interface_num: {n}\n  mac_address: 86:00:00:00:00:0{n}\n  network_id: {id}\n  network_name: net{n}\n  network: 10.0.0.0/16\n  subnet: 10.0.0.0/24\n  gateway: 10.0.0.1\n",
                        n = i + 1,
                        id = 1000 + i
                    ));
                }
                (s, yaml)
            }
            "/hetzner/v1/metadata/network-config" => (self.network_config(""), yaml),
            "/hetzner/v1/userdata" => (self.userdata.clone(), text),
            _ => return None,
        })
    }
}

/// Serves one HTTP request read from `input`, answering on `output`, and
/// logs "METHOD PATH STATUS" to `log`.
pub fn respond(
    values: &Values,
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
    let (status, body, ctype) = match (method, values.body(path)) {
        ("GET", Some((b, t))) => ("200 OK", b, t),
        ("GET", None) => ("404 Not Found", "not found\n".to_string(), "text/plain"),
        _ => ("405 Method Not Allowed", String::new(), "text/plain"),
    };
    let head_only = method == "HEAD";
    write!(output, "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    if !head_only {
        output.write_all(body.as_bytes())?;
    }
    output.flush()?;
    if let Some(l) = log {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(l)
            .with_context(|| format!("{}: cannot log", l.display()))?;
        writeln!(f, "{method} {path} {}", status.split(' ').next().unwrap_or(""))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_every_reference_path() {
        let v = Values::test("ssh-ed25519 AAAA test");
        for p in [
            "/hetzner/v1/metadata",
            "/hetzner/v1/metadata/hostname",
            "/hetzner/v1/metadata/instance-id",
            "/hetzner/v1/metadata/public-ipv4",
            "/hetzner/v1/metadata/public-keys",
            "/hetzner/v1/metadata/private-networks",
            "/hetzner/v1/metadata/network-config",
            "/hetzner/v1/userdata",
        ] {
            assert!(v.body(p).is_some(), "{p}");
        }
        let mut out = Vec::new();
        respond(
            &v,
            &mut &b"GET /hetzner/v1/metadata/hostname HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &mut out,
            None,
        )
        .unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK") && s.ends_with("\r\n\r\nforge-boot-test"), "{s}");
        let mut out = Vec::new();
        respond(&v, &mut &b"GET /nope HTTP/1.1\r\n\r\n"[..], &mut out, None).unwrap();
        assert!(String::from_utf8(out).unwrap().starts_with("HTTP/1.1 404"));
    }
}
