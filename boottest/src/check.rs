//! Checks as data, and their evaluation.
//!
//! A check is a name and one or more conditions, all of which must hold. A
//! condition takes one value — a `FORGE-REPORT key=value` line of the
//! guest's serial console (`report_key`), an observation of the boot
//! (`observe`: the serial log, the marker it stopped at, the metadata
//! service's request log) or a built-in probe that needs code (`probe`: an
//! SSH login, an HTTP GET through a `hostfwd`, the ROOT growth arithmetic)
//! — and compares it (`equals`, `contains`, `not_contains`, `matches`,
//! `word`). A check is written either inline
//! (`{"name": …, "report_key": "hostname", "equals": "…"}`) or with
//! `"all": [condition, …]`, or both.

use crate::spec::render;
use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    pub conds: Vec<Cond>,
}

impl<'de> Deserialize<'de> for Check {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut m = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let name = match m.remove("name") {
            Some(serde_json::Value::String(s)) => s,
            _ => return Err(D::Error::custom("a check needs a \"name\" string")),
        };
        let all: Vec<Cond> = match m.remove("all") {
            Some(v) => serde_json::from_value(v)
                .map_err(|e| D::Error::custom(format!("check {name:?}: all: {e}")))?,
            None => Vec::new(),
        };
        let mut conds = Vec::new();
        if !m.is_empty() {
            conds.push(
                serde_json::from_value(serde_json::Value::Object(m))
                    .map_err(|e| D::Error::custom(format!("check {name:?}: {e}")))?,
            );
        }
        conds.extend(all);
        Ok(Check { name, conds })
    }
}

/// One string or a list of them (each must hold).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn iter(&self) -> impl Iterator<Item = &String> {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s).iter(),
            OneOrMany::Many(v) => v.iter(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cond {
    pub report_key: Option<String>,
    pub observe: Option<Observe>,
    pub probe: Option<Probe>,
    pub equals: Option<String>,
    pub contains: Option<OneOrMany>,
    pub not_contains: Option<OneOrMany>,
    /// Regular expressions (Rust `regex` syntax), each must match somewhere.
    pub matches: Option<OneOrMany>,
    /// A whitespace-separated word equal to this.
    pub word: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Observe {
    /// The whole serial log.
    Serial,
    /// The first of the boot's `until` markers present ("timeout" if none).
    StoppedAt,
    /// The metadata service's log: one "METHOD PATH STATUS" line per request.
    MetadataRequests,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Probe {
    /// Runs `command` over SSH as `user` with the test key; the value is its
    /// trimmed stdout (the condition fails with stderr if ssh fails).
    Ssh {
        user: String,
        command: String,
        #[serde(default = "ssh_port")]
        guest_port: u16,
    },
    /// GET `path` from the guest's `guest_port` through its hostfwd, retried
    /// for 20 s until the body is non-empty; the value is the trimmed body.
    Http {
        guest_port: u16,
        #[serde(default = "slash")]
        path: String,
    },
    /// The report line `report_key` ("root_dev=… root_fs_bytes=…
    /// root_part_bytes=… disk_bytes=…") shows `partition` grown to the end
    /// of the disk and its filesystem grown with it.
    RootGrown { partition: String, report_key: String },
    /// Sends `execute` (with `arguments`, whose strings are templates) to
    /// the guest agent over the boot's channel (`"guest_agent": true`),
    /// after a `guest-sync` handshake, waiting for the agent to come up;
    /// the value is the response's `return` as JSON (`{}` for commands that
    /// return nothing), the condition fails with the agent's error.
    GuestAgent {
        execute: String,
        #[serde(default)]
        arguments: Option<serde_json::Value>,
    },
    /// Attaches the boot's `hotplug_disks[disk]` to the running VM through
    /// QEMU's monitor (QMP `blockdev-add`, `device_add`); the value is
    /// "attached" (the condition fails with QEMU's error).
    Hotplug { disk: usize },
}

fn ssh_port() -> u16 {
    22
}

fn slash() -> String {
    "/".into()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What the checks look at. The harness implements it over a running VM;
/// tests implement it over fixed values.
pub trait Observations {
    fn report(&self) -> &BTreeMap<String, String>;
    fn serial(&self) -> &str;
    fn stopped_at(&self) -> Option<&str>;
    fn seconds(&self) -> f64;
    fn metadata_requests(&mut self) -> String;
    /// Stdout of the command, or the failure (stderr, exit status).
    fn ssh(&mut self, user: &str, command: &str, guest_port: u16) -> Result<String, String>;
    fn http(&mut self, guest_port: u16, path: &str) -> Result<String, String>;
    /// The guest agent's answer to `request` (`{"execute": …, "arguments": …}`):
    /// its `return` as JSON, or its error.
    fn guest_agent(&mut self, request: &serde_json::Value) -> Result<String, String>;
    /// Attaches the boot's hot-plug disk `disk`.
    fn hotplug(&mut self, disk: usize) -> Result<(), String>;
    /// Size of the test disk and the byte offset of a partition on it.
    fn disk_bytes(&self) -> u64;
    fn partition_offset(&mut self, label: &str) -> Result<u64>;
}

impl Cond {
    pub(crate) fn has_operator(&self) -> bool {
        self.equals.is_some()
            || self.contains.is_some()
            || self.not_contains.is_some()
            || self.matches.is_some()
            || self.word.is_some()
    }

    /// Every template string of the condition.
    pub(crate) fn templates(&self) -> Vec<&String> {
        let mut v: Vec<&String> = Vec::new();
        v.extend(self.equals.iter());
        v.extend(self.word.iter());
        for o in [&self.contains, &self.not_contains, &self.matches].into_iter().flatten() {
            v.extend(o.iter());
        }
        v
    }
}

/// `v` with every string in it rendered as a template.
fn render_json(v: &serde_json::Value, ctx: &minijinja::Value) -> Result<serde_json::Value> {
    use serde_json::Value;
    Ok(match v {
        Value::String(s) => Value::String(render(s, ctx)?),
        Value::Array(xs) => {
            Value::Array(xs.iter().map(|x| render_json(x, ctx)).collect::<Result<_>>()?)
        }
        Value::Object(m) => Value::Object(
            m.iter().map(|(k, x)| Ok((k.clone(), render_json(x, ctx)?))).collect::<Result<_>>()?,
        ),
        other => other.clone(),
    })
}

/// Shortens a value for a detail line: one line, at most 240 characters.
fn short(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 240 {
        format!("{}…", one.chars().take(240).collect::<String>())
    } else {
        one
    }
}

/// Evaluates one check (templates rendered with `ctx`).
pub fn evaluate(c: &Check, ctx: &minijinja::Value, obs: &mut dyn Observations) -> CheckResult {
    let name = render(&c.name, ctx).unwrap_or_else(|_| c.name.clone());
    let mut ok = true;
    let mut details = Vec::new();
    for cond in &c.conds {
        match eval_cond(cond, ctx, obs) {
            Ok((good, d)) => {
                ok &= good;
                if !d.is_empty() {
                    details.push(d);
                }
            }
            Err(e) => {
                ok = false;
                details.push(format!("{e:#}"));
            }
        }
    }
    CheckResult { name, ok, detail: details.join("; ") }
}

fn eval_cond(
    c: &Cond,
    ctx: &minijinja::Value,
    obs: &mut dyn Observations,
) -> Result<(bool, String)> {
    let (label, value, summary): (String, String, Option<String>) =
        match (&c.report_key, c.observe, &c.probe) {
            (Some(k), None, None) => match obs.report().get(k) {
                Some(v) => (k.clone(), v.clone(), None),
                None => return Ok((false, format!("no FORGE-REPORT {k}= line"))),
            },
            (None, Some(Observe::Serial), None) => {
                let s = obs.serial().to_string();
                // Show the line the first `contains` found, else the size.
                let wanted: Vec<String> = c
                    .contains
                    .iter()
                    .flat_map(|o| o.iter())
                    .filter_map(|t| render(t, ctx).ok())
                    .collect();
                let line = wanted
                    .iter()
                    .find_map(|w| s.lines().find(|l| l.contains(w.as_str())))
                    .map(|l| format!("serial: {}", short(l)));
                let n = s.lines().count();
                let summary = line.unwrap_or_else(|| format!("serial log of {n} lines"));
                ("serial".into(), s, Some(summary))
            }
            (None, Some(Observe::StoppedAt), None) => {
                let v = obs.stopped_at().unwrap_or("timeout").to_string();
                let s = format!("{v:?} after {:.1}s", obs.seconds());
                ("stopped at".into(), v, Some(s))
            }
            (None, Some(Observe::MetadataRequests), None) => {
                let v = obs.metadata_requests();
                let s = format!("{} metadata requests", v.lines().count());
                ("metadata requests".into(), v, Some(s))
            }
            (None, None, Some(Probe::Ssh { user, command, guest_port })) => {
                match obs.ssh(user, command, *guest_port) {
                    Ok(v) => (format!("ssh {user}@ {command:?}"), v.trim().to_string(), None),
                    Err(e) => return Ok((false, format!("ssh {user}@: {}", short(&e)))),
                }
            }
            (None, None, Some(Probe::Http { guest_port, path })) => {
                match obs.http(*guest_port, path) {
                    Ok(v) => (format!("GET :{guest_port}{path}"), v.trim().to_string(), None),
                    Err(e) => return Ok((false, format!("GET :{guest_port}{path}: {e}"))),
                }
            }
            (None, None, Some(Probe::GuestAgent { execute, arguments })) => {
                let mut req = serde_json::json!({ "execute": execute });
                if let Some(a) = arguments {
                    req["arguments"] = render_json(a, ctx)?;
                }
                match obs.guest_agent(&req) {
                    Ok(v) => (format!("guest agent {execute}"), v, None),
                    Err(e) => return Ok((false, format!("guest agent {execute}: {}", short(&e)))),
                }
            }
            (None, None, Some(Probe::Hotplug { disk })) => match obs.hotplug(*disk) {
                Ok(()) => (format!("hotplug disk {disk}"), "attached".to_string(), None),
                Err(e) => return Ok((false, format!("hotplug disk {disk}: {}", short(&e)))),
            },
            (None, None, Some(Probe::RootGrown { partition, report_key })) => {
                let Some(line) = obs.report().get(report_key).cloned() else {
                    return Ok((false, format!("no FORGE-REPORT {report_key}= line")));
                };
                let off = obs.partition_offset(partition)?;
                return Ok(root_grown(&line, obs.disk_bytes(), off));
            }
            _ => bail!("give exactly one of report_key, observe and probe"),
        };
    let summary_is_set = summary.is_some();
    let shown = summary.unwrap_or_else(|| format!("{label}={}", short(&value)));
    let mut failed = Vec::new();
    if let Some(e) = &c.equals {
        let e = render(e, ctx)?;
        if value != e {
            failed.push(format!("expected to equal {:?}", short(&e)));
        }
    }
    for s in c.contains.iter().flat_map(|o| o.iter()) {
        let s = render(s, ctx)?;
        if !value.contains(&s) {
            failed.push(format!("expected to contain {:?}", short(&s)));
        }
    }
    for s in c.not_contains.iter().flat_map(|o| o.iter()) {
        let s = render(s, ctx)?;
        if value.contains(&s) {
            let line = value.lines().find(|l| l.contains(&s)).unwrap_or("");
            failed.push(format!("expected not to contain {:?} (line: {})", short(&s), short(line)));
        }
    }
    for m in c.matches.iter().flat_map(|o| o.iter()) {
        let m = render(m, ctx)?;
        let re = regex::Regex::new(&m).map_err(|e| anyhow!("matches {m:?}: {e}"))?;
        if !re.is_match(&value) {
            failed.push(format!("expected to match /{m}/"));
        }
    }
    if let Some(w) = &c.word {
        let w = render(w, ctx)?;
        if !value.split_whitespace().any(|x| x == w) {
            failed.push(format!("expected the word {w:?}"));
        }
    }
    if failed.is_empty() {
        // What was found, rather than the whole value, when an operator says.
        let mut found = Vec::new();
        for m in c.matches.iter().flat_map(|o| o.iter()) {
            if let Ok(re) = regex::Regex::new(&render(m, ctx)?) {
                if let Some(x) = re.find(&value).filter(|x| !x.as_str().trim().is_empty()) {
                    found.push(x.as_str().trim().to_string());
                }
            }
        }
        if let Some(w) = &c.word {
            found.push(render(w, ctx)?);
        }
        for t in c.contains.iter().flat_map(|o| o.iter()) {
            let t = render(t, ctx)?;
            found.push(
                value.split_whitespace().find(|w| w.contains(&t)).unwrap_or(t.as_str()).to_string(),
            );
        }
        if found.is_empty() || summary_is_set || c.equals.is_some() || c.not_contains.is_some() {
            Ok((true, shown))
        } else {
            Ok((true, format!("{label}: {}", short(&found.join(" ")))))
        }
    } else {
        Ok((false, format!("{shown}: {}", failed.join(", "))))
    }
}

/// The ROOT growth arithmetic: the partition ends within 1 MiB of the last
/// usable sector, its filesystem fills ≥ 95 % of it, and the guest sees the
/// whole disk.
pub fn root_grown(line: &str, disk_bytes: u64, part_offset: u64) -> (bool, String) {
    let field = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|p| p.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (part, fsb, diskb) =
        (field("root_part_bytes"), field("root_fs_bytes"), field("disk_bytes"));
    // The backup GPT takes the last 33 sectors; 34 leaves the usual slack.
    let expect = disk_bytes.saturating_sub(part_offset + 34 * 512);
    let ok = diskb == disk_bytes
        && part > 0
        && part + (1 << 20) >= expect
        && fsb as f64 >= 0.95 * part as f64;
    (
        ok,
        format!("partition {part} B of {expect} B possible, filesystem {fsb} B, disk {diskb} B (expected {disk_bytes} B)"),
    )
}

/// "FORGE-REPORT key=value" lines → map (the last line of a key wins).
pub fn parse_report(serial: &str) -> BTreeMap<String, String> {
    serial
        .lines()
        .filter_map(|l| l.split("FORGE-REPORT ").nth(1))
        .filter_map(|l| l.trim_end_matches('\r').split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        report: BTreeMap<String, String>,
        serial: String,
        stopped_at: Option<String>,
        requests: String,
        ssh: Result<String, String>,
        http: Result<String, String>,
        calls: Vec<String>,
    }

    impl Observations for Fake {
        fn report(&self) -> &BTreeMap<String, String> {
            &self.report
        }
        fn serial(&self) -> &str {
            &self.serial
        }
        fn stopped_at(&self) -> Option<&str> {
            self.stopped_at.as_deref()
        }
        fn seconds(&self) -> f64 {
            57.5
        }
        fn metadata_requests(&mut self) -> String {
            self.requests.clone()
        }
        fn ssh(&mut self, user: &str, command: &str, port: u16) -> Result<String, String> {
            self.calls.push(format!("ssh {user} {command} {port}"));
            self.ssh.clone()
        }
        fn http(&mut self, port: u16, path: &str) -> Result<String, String> {
            self.calls.push(format!("http {port} {path}"));
            self.http.clone()
        }
        fn hotplug(&mut self, disk: usize) -> Result<(), String> {
            self.calls.push(format!("hotplug {disk}"));
            if disk == 0 {
                Ok(())
            } else {
                Err("Duplicate ID 'hot1' for device".into())
            }
        }
        fn guest_agent(&mut self, request: &serde_json::Value) -> Result<String, String> {
            self.calls.push(format!("qga {request}"));
            match request["execute"].as_str() {
                Some("guest-ping") => Ok("{}".into()),
                _ => Err("CommandNotFound: The command has not been found".into()),
            }
        }
        fn disk_bytes(&self) -> u64 {
            20 << 30
        }
        fn partition_offset(&mut self, label: &str) -> Result<u64> {
            if label == "ROOT" {
                Ok(4_856_832 * 512)
            } else {
                bail!("no partition labelled {label}")
            }
        }
    }

    const SERIAL: &str = "noise\r\n[  5.1] FORGE-REPORT begin\r\nFORGE-REPORT hostname=forge-boot-test\r\nFORGE-REPORT cmdline=BOOT_IMAGE=/vmlinuz flatcar.oem.id=hetzner verity.usrhash=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\nFORGE-REPORT metadata=\r\nforge-init: FATAL: dm-verity: bad block\r\nFORGE-REPORT end\r\n";

    fn fake() -> Fake {
        Fake {
            report: parse_report(SERIAL),
            serial: SERIAL.into(),
            stopped_at: Some("FORGE-REPORT end".into()),
            requests: "GET /hetzner/v1/metadata 200\nGET /hetzner/v1/userdata 200\n".into(),
            ssh: Ok("core\n".into()),
            http: Ok("Hello from forge-boot-test\n".into()),
            calls: Vec::new(),
        }
    }

    fn ctx() -> minijinja::Value {
        minijinja::Value::from(minijinja::value::Serde(serde_json::json!({
            "platform": "hetzner",
            "metadata": { "hostname": "forge-boot-test" },
        })))
    }

    fn check(v: serde_json::Value) -> Check {
        serde_json::from_value(v).unwrap()
    }

    fn eval(v: serde_json::Value, obs: &mut Fake) -> CheckResult {
        evaluate(&check(v), &ctx(), obs)
    }

    #[test]
    fn report_lines_parse() {
        let r = parse_report(SERIAL);
        assert_eq!(r["hostname"], "forge-boot-test");
        assert_eq!(r["metadata"], "");
        assert_eq!(r.get("begin"), None, "a line without '=' is not a value");
        assert!(r["cmdline"].ends_with("abcdef"), "carriage return stripped");
    }

    #[test]
    fn operators_pass_and_fail() {
        let mut o = fake();
        let pass = [
            serde_json::json!({"name": "n", "report_key": "hostname", "equals": "{{metadata.hostname}}"}),
            serde_json::json!({"name": "n", "report_key": "cmdline", "word": "flatcar.oem.id={{platform}}"}),
            serde_json::json!({"name": "n", "report_key": "cmdline", "contains": ["BOOT_IMAGE", "verity.usrhash="]}),
            serde_json::json!({"name": "n", "report_key": "cmdline", "matches": "(^|\\s)verity\\.usrhash=[0-9a-f]{64}(\\s|$)"}),
            serde_json::json!({"name": "n", "report_key": "cmdline", "not_contains": "first_boot"}),
            serde_json::json!({"name": "n", "report_key": "metadata", "equals": ""}),
            serde_json::json!({"name": "n", "observe": "stopped_at", "equals": "FORGE-REPORT end"}),
            serde_json::json!({"name": "n", "observe": "serial", "contains": "FATAL: dm-verity"}),
            serde_json::json!({"name": "n", "observe": "metadata_requests", "matches": "(?m)^GET /hetzner/v1/metadata 200$"}),
        ];
        for c in pass {
            let r = eval(c.clone(), &mut o);
            assert!(r.ok, "{c} should pass: {}", r.detail);
        }
        let fail = [
            (
                serde_json::json!({"name": "n", "report_key": "hostname", "equals": "other"}),
                "hostname=forge-boot-test: expected to equal \"other\"",
            ),
            (
                serde_json::json!({"name": "n", "report_key": "cmdline", "word": "flatcar.oem.id=qemu"}),
                "expected the word \"flatcar.oem.id=qemu\"",
            ),
            (
                serde_json::json!({"name": "n", "report_key": "cmdline", "word": "flatcar.oem.id=hetz"}),
                "expected the word",
            ),
            (
                serde_json::json!({"name": "n", "report_key": "cmdline", "contains": ["BOOT_IMAGE", "mount.usr="]}),
                "expected to contain \"mount.usr=\"",
            ),
            (
                serde_json::json!({"name": "n", "report_key": "cmdline", "matches": "verity\\.usrhash=[0-9a-f]{65}"}),
                "expected to match",
            ),
            (
                serde_json::json!({"name": "n", "report_key": "cmdline", "not_contains": "flatcar.oem.id"}),
                "expected not to contain \"flatcar.oem.id\"",
            ),
            (
                serde_json::json!({"name": "n", "report_key": "agent", "equals": "inactive"}),
                "no FORGE-REPORT agent= line",
            ),
            (
                serde_json::json!({"name": "n", "observe": "serial", "not_contains": "FATAL"}),
                "(line: forge-init: FATAL: dm-verity: bad block)",
            ),
            (
                serde_json::json!({"name": "n", "observe": "metadata_requests", "equals": ""}),
                "2 metadata requests: expected to equal \"\"",
            ),
        ];
        for (c, want) in fail {
            let r = eval(c.clone(), &mut o);
            assert!(!r.ok, "{c} should fail");
            assert!(r.detail.contains(want), "{c}: {want:?} not in {:?}", r.detail);
        }
    }

    #[test]
    fn a_pass_shows_what_was_found() {
        let mut o = fake();
        let r = eval(
            serde_json::json!({"name": "n", "report_key": "cmdline", "word": "flatcar.oem.id={{platform}}"}),
            &mut o,
        );
        assert_eq!(r.detail, "cmdline: flatcar.oem.id=hetzner");
        let r = eval(
            serde_json::json!({"name": "n", "report_key": "cmdline", "matches": "verity\\.usrhash=[0-9a-f]{8}"}),
            &mut o,
        );
        assert_eq!(r.detail, "cmdline: verity.usrhash=01234567");
        let r = eval(
            serde_json::json!({"name": "n", "report_key": "hostname", "equals": "forge-boot-test"}),
            &mut o,
        );
        assert_eq!(r.detail, "hostname=forge-boot-test");
        let r = eval(
            serde_json::json!({"name": "n", "report_key": "cmdline", "contains": "oem.id", "matches": "verity\\.usrhash=[0-9a-f]{8}"}),
            &mut o,
        );
        assert_eq!(r.detail, "cmdline: verity.usrhash=01234567 flatcar.oem.id=hetzner");
        // Absence is shown with the whole value.
        let r = eval(
            serde_json::json!({"name": "n", "report_key": "hostname", "matches": "\\S", "not_contains": "x"}),
            &mut o,
        );
        assert_eq!(r.detail, "hostname=forge-boot-test");
    }

    #[test]
    fn all_conditions_must_hold_and_names_render() {
        let mut o = fake();
        let c = serde_json::json!({
            "name": "sysext lists oem-{{platform}}",
            "report_key": "hostname", "equals": "forge-boot-test",
            "all": [ { "report_key": "metadata", "equals": "" }, { "observe": "metadata_requests", "equals": "" } ]
        });
        assert_eq!(check(c.clone()).conds.len(), 3);
        let r = eval(c, &mut o);
        assert_eq!(r.name, "sysext lists oem-hetzner");
        assert!(!r.ok);
        assert!(
            r.detail.starts_with("hostname=forge-boot-test; metadata=; 2 metadata requests"),
            "{}",
            r.detail
        );
        o.requests.clear();
        let r = eval(
            serde_json::json!({"name": "n", "all": [ { "report_key": "metadata", "equals": "" }, { "observe": "metadata_requests", "equals": "" } ]}),
            &mut o,
        );
        assert!(r.ok, "{}", r.detail);
    }

    #[test]
    fn stopped_at_shows_the_time_and_a_timeout() {
        let mut o = fake();
        let c = serde_json::json!({"name": "boots", "observe": "stopped_at", "equals": "FORGE-REPORT end"});
        let r = eval(c.clone(), &mut o);
        assert_eq!(r.detail, "\"FORGE-REPORT end\" after 57.5s");
        o.stopped_at = None;
        let r = eval(c, &mut o);
        assert!(!r.ok && r.detail.starts_with("\"timeout\" after 57.5s"), "{}", r.detail);
    }

    #[test]
    fn probes_run_with_their_arguments() {
        let mut o = fake();
        let ssh = serde_json::json!({"name": "ssh", "probe": {"ssh": {"user": "core", "command": "id -un"}}, "equals": "core"});
        let http = serde_json::json!({"name": "http", "probe": {"http": {"guest_port": 80}}, "equals": "Hello from {{metadata.hostname}}"});
        assert!(eval(ssh.clone(), &mut o).ok);
        assert!(eval(http.clone(), &mut o).ok);
        assert_eq!(o.calls, vec!["ssh core id -un 22", "http 80 /"]);
        o.ssh = Err("exit status: 255: Permission denied (publickey)".into());
        let r = eval(ssh, &mut o);
        assert!(!r.ok && r.detail.contains("Permission denied"), "{}", r.detail);
        o.http = Ok("Hello from elsewhere".into());
        let r = eval(http, &mut o);
        assert!(!r.ok && r.detail.contains("Hello from elsewhere"), "{}", r.detail);
    }

    #[test]
    fn the_guest_agent_probe_sends_rendered_arguments() {
        let mut o = fake();
        let c = serde_json::json!({"name": "qga", "probe": {"guest_agent": {"execute": "guest-ping", "arguments": {"who": "{{metadata.hostname}}", "n": [1, "{{platform}}"]}}}, "equals": "{}"});
        let r = eval(c, &mut o);
        assert!(r.ok, "{}", r.detail);
        assert_eq!(
            o.calls,
            vec![
                r#"qga {"arguments":{"n":[1,"hetzner"],"who":"forge-boot-test"},"execute":"guest-ping"}"#
            ]
        );
        let c = serde_json::json!({"name": "qga", "probe": {"guest_agent": {"execute": "guest-nope"}}, "equals": "{}"});
        let r = eval(c, &mut o);
        assert!(
            !r.ok && r.detail.contains("guest agent guest-nope: CommandNotFound"),
            "{}",
            r.detail
        );
    }

    #[test]
    fn the_hotplug_probe_attaches_the_disk_it_names() {
        let mut o = fake();
        let c = serde_json::json!({"name": "hot", "probe": {"hotplug": {"disk": 0}}, "equals": "attached"});
        assert!(eval(c, &mut o).ok);
        let c = serde_json::json!({"name": "hot", "probe": {"hotplug": {"disk": 1}}, "equals": "attached"});
        let r = eval(c, &mut o);
        assert!(!r.ok && r.detail.contains("hotplug disk 1: Duplicate ID"), "{}", r.detail);
        assert_eq!(o.calls, ["hotplug 0", "hotplug 1"]);
    }

    #[test]
    fn root_growth_arithmetic() {
        let disk = 20u64 << 30;
        let off = 4_856_832 * 512;
        let full = disk - off - 34 * 512;
        let line = |part: u64, fs: u64, d: u64| {
            format!("root_dev=/dev/sda9 root_fs_bytes={fs} root_part_bytes={part} disk_bytes={d}")
        };
        assert!(root_grown(&line(full, full - (full / 50), disk), disk, off).0);
        // Not grown: the partition is the image's 2 GiB.
        assert!(!root_grown(&line(2 << 30, 2 << 30, disk), disk, off).0);
        // Partition grown, filesystem not.
        assert!(!root_grown(&line(full, full / 2, disk), disk, off).0);
        // The guest sees a different disk.
        assert!(!root_grown(&line(full, full, disk - 512), disk, off).0);
        assert!(!root_grown("root_dev=/dev/sda9", disk, off).0);
        let mut o = fake();
        o.report.insert("root_dev".into(), line(full, full, disk));
        let c = serde_json::json!({"name": "grown", "probe": {"root_grown": {"partition": "ROOT", "report_key": "root_dev"}}});
        let r = eval(c, &mut o);
        assert!(r.ok, "{}", r.detail);
        let c = serde_json::json!({"name": "grown", "probe": {"root_grown": {"partition": "NOPE", "report_key": "root_dev"}}});
        let r = eval(c, &mut o);
        assert!(!r.ok && r.detail.contains("no partition labelled NOPE"), "{}", r.detail);
    }
}
