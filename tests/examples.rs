//! The example Ignition configs under `examples/`: each is accepted by
//! Ignition's own validator (Debian's `ignition-validate`, the 2.14 the image
//! runs), fits Hetzner's 32 KiB user-data limit, uses a spec version that
//! Ignition 2.14 reads, and is exactly what the Butane source beside it means.
//! Invalid configs in `tests/fixtures/ignition/` are rejected by the same
//! validator, naming the problem (so the validator really is consulted).

#[path = "support/lib.rs"]
mod support;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

/// Hetzner Cloud's limit on user-data.
const USER_DATA_LIMIT: u64 = 32 * 1024;
/// The SSH key every example carries; the boot tests substitute it.
const PLACEHOLDER_KEY: &str = "ssh-ed25519 AAAA...REPLACE-WITH-YOUR-PUBLIC-KEY you@example";
/// The spec versions Ignition 2.14 reads (Butane `variant: flatcar`, `version: 1.0.0` emits 3.3.0).
const SPEC_VERSIONS: &[&str] = &["3.0.0", "3.1.0", "3.2.0", "3.3.0"];

fn examples() -> PathBuf {
    repo().join("examples")
}

/// Files under `dir` (recursively) whose name ends with `.ext`, sorted.
fn files_with(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == ext) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn ign_files() -> Vec<PathBuf> {
    let v = files_with(&examples(), "ign");
    // examples/hetzner/hello.ign and examples/qemu/ssh-key.ign at least: a
    // walk that finds nothing must not pass.
    assert!(
        v.len() >= 2,
        "expected the example configs under {}, found {v:?}",
        examples().display()
    );
    v
}

/// `ignition-validate`, or None (with a visible "skipped" line) when it is
/// missing outside `cargo xtask test`, which installs it (package `ignition`)
/// and sets FORGE_TEST_REQUIRE_TOOLS so that a missing validator fails.
fn validator() -> Option<PathBuf> {
    let found = forge::tools::find("ignition-validate");
    if found.is_none() {
        if std::env::var_os("FORGE_TEST_REQUIRE_TOOLS").is_some() {
            panic!("ignition-validate is missing (Debian package ignition; cargo xtask deps --install)");
        }
        eprintln!("skipped: needs ignition-validate (Debian package ignition; cargo xtask deps --install)");
    }
    found
}

/// Runs `ignition-validate FILE`: (success, stdout + stderr).
fn validate(bin: &Path, file: &Path) -> (bool, String) {
    let o = Command::new(bin).arg(file).output().expect("run ignition-validate");
    (
        o.status.success(),
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
    )
}

#[test]
fn every_example_passes_ignition_validate_without_warnings() {
    let Some(bin) = validator() else { return };
    for f in ign_files() {
        let (ok, out) = validate(&bin, &f);
        assert!(ok, "ignition-validate rejects {}:\n{out}", f.display());
        // Warnings (e.g. a unit enabled without an [Install] section) come
        // with a zero exit status; the examples have none.
        assert!(out.trim().is_empty(), "ignition-validate on {}:\n{out}", f.display());
    }
}

#[test]
fn every_example_is_json_within_the_user_data_limit_and_a_spec_2_14_reads() {
    for f in ign_files() {
        let size = std::fs::metadata(&f).unwrap().len();
        assert!(
            size <= USER_DATA_LIMIT,
            "{}: {size} bytes, Hetzner takes at most {USER_DATA_LIMIT}",
            f.display()
        );
        let v: Value = serde_json::from_str(&read(&f))
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", f.display()));
        let version = v["ignition"]["version"].as_str().unwrap_or("(none)");
        assert!(
            SPEC_VERSIONS.contains(&version),
            "{}: spec version {version}; Ignition 2.14 reads {SPEC_VERSIONS:?}",
            f.display()
        );
    }
}

/// Every SSH key in the examples is the placeholder, so users see at once
/// what to replace and the boot tests know what to substitute.
#[test]
fn every_ssh_key_in_the_examples_is_the_placeholder() {
    let mut keys = 0;
    for f in ign_files() {
        let v: Value = serde_json::from_str(&read(&f)).unwrap();
        for u in v["passwd"]["users"].as_array().into_iter().flatten() {
            for k in u["sshAuthorizedKeys"].as_array().into_iter().flatten() {
                assert_eq!(k, PLACEHOLDER_KEY, "{}: user {}", f.display(), u["name"]);
                keys += 1;
            }
        }
    }
    assert!(keys >= 2, "the examples give core (and hello) a key; found {keys} keys");
}

/// The Hetzner boot test's containers boot runs the guide's nginx unit
/// (examples/hetzner/nginx.ign) with one change only: the image is imported
/// from the test's metadata host instead of pulled from a registry.
#[test]
fn the_containers_boot_test_runs_the_guides_nginx_unit_with_one_change() {
    let unit = |p: &Path| -> String {
        let v: Value = serde_json::from_str(&read(p)).unwrap();
        let units = v["systemd"]["units"].as_array().unwrap();
        let u = units.iter().find(|u| u["name"] == "nginx.service").unwrap();
        assert_eq!(u["enabled"], true, "{}", p.display());
        u["contents"].as_str().unwrap().to_string()
    };
    let guide = unit(&examples().join("hetzner/nginx.ign"));
    let test = unit(&repo().join("tests/fixtures/ignition/hetzner-containers.ign"));
    assert!(guide.contains("Hello from ${COREOS_HETZNER_HOSTNAME}"), "{guide}");
    let (pull, import) = (" --pull always", "http://169.254.169.254/forge-test/nginx-rootfs.tar");
    assert!(guide.contains(pull) && !guide.contains(import), "{guide}");
    // The test's unit, without its import lines and comment, with the pull back.
    let kept: String = test
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains(import))
        .map(|l| {
            format!(
                "{}\n",
                l.replace(
                    "--volume \"/var/www:/usr/share/nginx/html:ro\"",
                    &format!("--volume \"/var/www:/usr/share/nginx/html:ro\"{pull}")
                )
            )
        })
        .collect();
    assert_eq!(kept, guide);
    assert!(
        test.lines().any(|l| l.starts_with("ExecStartPre=")
            && l.contains(import)
            && l.contains("docker import")),
        "{test}"
    );
}

/// The Hetzner example is the guide's: a unit reading the metadata
/// attributes, enabled, serving the greeting.
#[test]
fn the_hetzner_example_declares_the_hello_unit() {
    let f = examples().join("hetzner/hello.ign");
    let v: Value = serde_json::from_str(&read(&f)).unwrap();
    let units = v["systemd"]["units"].as_array().expect("systemd.units");
    let hello = units.iter().find(|u| u["name"] == "hello.service").expect("hello.service");
    assert_eq!(hello["enabled"], true, "{}: hello.service is not enabled", f.display());
    let text = hello["contents"].as_str().unwrap();
    for line in [
        "EnvironmentFile=/run/metadata/flatcar",
        "Requires=coreos-metadata.service",
        "After=coreos-metadata.service",
        "Hello from ${COREOS_HETZNER_HOSTNAME}",
        "ExecStart=/bin/busybox httpd -f -p 80 -h /run/hello",
        "WantedBy=multi-user.target",
    ] {
        assert!(text.contains(line), "{}: hello.service lacks {line:?}", f.display());
    }
}

/// Each invalid fixture: (file, what ignition-validate must say).
const INVALID: &[(&str, &[&str])] = &[
    (
        "invalid.ign",
        &["$.storage.files.0.path", "path not absolute", "invalid systemd unit extension"],
    ),
    // What Butane `version: 1.1.0` emits: too new for 2.14.
    ("spec-3.4.0.ign", &["unsupported config version"]),
    // Not an Ignition config at all: forge-init skips these before Ignition.
    ("cloud-config.yaml", &["invalid character '#'"]),
];

#[test]
fn invalid_configs_are_rejected_naming_the_problem() {
    let Some(bin) = validator() else { return };
    let dir = repo().join("tests/fixtures/ignition");
    for (name, expect) in INVALID {
        let f = dir.join(name);
        assert!(f.is_file(), "missing fixture {}", f.display());
        let (ok, out) = validate(&bin, &f);
        assert!(!ok, "ignition-validate accepts {}:\n{out}", f.display());
        for e in *expect {
            assert!(out.contains(e), "ignition-validate on {}: no {e:?} in:\n{out}", f.display());
        }
    }
}

/// The configs the boot tests serve (every fixture not in [`INVALID`]) are
/// valid for the Ignition the image runs, without warnings.
#[test]
fn every_boot_test_config_passes_ignition_validate() {
    let Some(bin) = validator() else { return };
    let dir = repo().join("tests/fixtures/ignition");
    let valid: Vec<PathBuf> = files_with(&dir, "ign")
        .into_iter()
        .filter(|f| !INVALID.iter().any(|(n, _)| f.file_name() == Some(std::ffi::OsStr::new(n))))
        .collect();
    assert!(valid.len() >= 3, "expected the boot tests' configs in {}: {valid:?}", dir.display());
    for f in valid {
        let (ok, out) = validate(&bin, &f);
        assert!(ok && out.trim().is_empty(), "ignition-validate on {}:\n{out}", f.display());
    }
}

#[test]
fn every_example_has_its_butane_source_and_means_the_same() {
    let ign = ign_files();
    let bu = files_with(&examples(), "bu");
    assert_eq!(
        ign.iter().map(|p| p.with_extension("")).collect::<Vec<_>>(),
        bu.iter().map(|p| p.with_extension("")).collect::<Vec<_>>(),
        "every .ign needs its .bu beside it and the other way round"
    );
    for (i, b) in ign.iter().zip(&bu) {
        let src = yaml::parse(&read(b)).unwrap_or_else(|e| panic!("{}: {e}", b.display()));
        let expected = butane_flatcar_1_0(src).unwrap_or_else(|e| panic!("{}: {e}", b.display()));
        let mut actual: Value = serde_json::from_str(&read(i)).unwrap();
        inline_contents(&mut actual).unwrap_or_else(|e| panic!("{}: {e}", i.display()));
        assert_eq!(
            expected,
            actual,
            "{} is not what {} means\nexpected (contents decoded):\n{}\nactual:\n{}",
            i.display(),
            b.display(),
            serde_json::to_string_pretty(&expected).unwrap(),
            serde_json::to_string_pretty(&actual).unwrap()
        );
    }
}

/// The comparison above notices a changed mode, content, key or unit.
#[test]
fn the_comparison_notices_a_difference() {
    let bu = read(&examples().join("hetzner/hello.bu"));
    let mut ign: Value =
        serde_json::from_str(&read(&examples().join("hetzner/hello.ign"))).unwrap();
    inline_contents(&mut ign).unwrap();
    let means = |text: &str| butane_flatcar_1_0(yaml::parse(text).unwrap()).unwrap();
    assert_eq!(means(&bu), ign);
    for (from, to) in [
        ("mode: 0640", "mode: 0644"),
        ("Provisioned by", "Provisioned with"),
        ("- sudo", "- adm"),
        ("After=coreos-metadata.service\n", ""),
        ("enabled: true", "enabled: false"),
        ("variant: flatcar", "variant: fcos"),
    ] {
        assert!(bu.contains(from), "{from}");
        let changed = bu.replacen(from, to, 1);
        let differs = butane_flatcar_1_0(yaml::parse(&changed).unwrap()).map_or(true, |v| v != ign);
        assert!(differs, "changing {from:?} to {to:?} went unnoticed");
    }
}

#[test]
fn the_yaml_reader_reads_its_subset_and_refuses_the_rest() {
    let v = yaml::parse(
        "# c\na:\n  - b: 1\n    c:\n      - x y\n      - \"q\"\n  - d: |\n      l1\n\n        l2\n    e: 0755\nf: true\n",
    )
    .unwrap();
    assert_eq!(
        v,
        json!({"a": [{"b": 1, "c": ["x y", "q"]}, {"d": "l1\n\n  l2\n", "e": 493}], "f": true})
    );
    for (bad, why) in [
        ("a: [1, 2]\n", "not handled"),
        ("a: 1 # c\n", "comment"),
        ("a: 1\na: 2\n", "duplicate key a"),
        ("a:\n\tb: 1\n", "tab"),
        ("a: 1\n  b: 2\n", "line 2"),
        ("a: 0789\n", "octal"),
        ("a: yes\n", "ambiguous"),
    ] {
        let e = yaml::parse(bad).unwrap_err();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
}

/// The small part of Butane's `flatcar` 1.0.0 translation the examples use:
/// `variant`/`version` become `ignition.version` 3.3.0, snake_case keys
/// become camelCase, and file contents stay `{"inline": ...}` (the .ign side
/// is decoded to the same form by `inline_contents`). Anything else Butane
/// adds (`local`, `trees`, ...) is refused.
fn butane_flatcar_1_0(src: Value) -> Result<Value, String> {
    let Value::Object(mut top) = src else { return Err("not a mapping".into()) };
    match (top.remove("variant"), top.remove("version")) {
        (Some(v), Some(n)) if v == "flatcar" && n == "1.0.0" => {}
        (v, n) => return Err(format!("variant {v:?}, version {n:?}: want flatcar 1.0.0")),
    }
    let mut out = camel(Value::Object(top))?;
    out.as_object_mut().unwrap().insert("ignition".into(), json!({ "version": "3.3.0" }));
    Ok(out)
}

fn camel(v: Value) -> Result<Value, String> {
    Ok(match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                if ["local", "trees", "contents_local"].contains(&k.as_str()) {
                    return Err(format!("Butane's {k:?} is not handled by this check"));
                }
                let mut parts = k.split('_');
                let mut key = parts.next().unwrap().to_string();
                for p in parts {
                    let mut c = p.chars();
                    key.extend(c.next().map(|c| c.to_ascii_uppercase()));
                    key.push_str(c.as_str());
                }
                out.insert(key, camel(v)?);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(camel).collect::<Result<_, _>>()?),
        v => v,
    })
}

/// Replaces each `storage.files[].contents` / `append[]` data URL of an
/// Ignition config with `{"inline": <decoded text>}`.
fn inline_contents(cfg: &mut Value) -> Result<(), String> {
    let Some(files) = cfg.pointer_mut("/storage/files").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    for f in files {
        let mut resources: Vec<&mut Value> = Vec::new();
        let obj = f.as_object_mut().ok_or("a file is not an object")?;
        for (k, v) in obj.iter_mut() {
            match k.as_str() {
                "contents" => resources.push(v),
                "append" => resources.extend(v.as_array_mut().ok_or("append: not a list")?),
                _ => {}
            }
        }
        for r in resources {
            if r.get("compression").is_some_and(|c| c != "") {
                return Err(format!("compressed contents are not handled by this check: {r}"));
            }
            let src = r["source"].as_str().ok_or_else(|| format!("no source in {r}"))?;
            let text = String::from_utf8(decode_data_url(src)?)
                .map_err(|_| format!("{src}: not UTF-8"))?;
            *r = json!({ "inline": text });
        }
    }
    Ok(())
}

/// RFC 2397 data URL: percent-encoded or `;base64`.
fn decode_data_url(url: &str) -> Result<Vec<u8>, String> {
    let rest = url.strip_prefix("data:").ok_or_else(|| format!("{url}: not a data URL"))?;
    let (meta, data) = rest.split_once(',').ok_or_else(|| format!("{url}: no ','"))?;
    if meta.ends_with(";base64") {
        return base64(data).ok_or_else(|| format!("{url}: bad base64"));
    }
    let b = data.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = data.get(i + 1..i + 3).ok_or_else(|| format!("{url}: truncated escape"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("{url}: bad escape %{hex}"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn base64(s: &str) -> Option<Vec<u8>> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for c in s.trim_end_matches('=').bytes() {
        acc = acc << 6 | A.iter().position(|&a| a == c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[test]
fn the_comparison_decodes_both_data_url_forms() {
    assert_eq!(decode_data_url("data:,a%20b%0A").unwrap(), b"a b\n");
    assert_eq!(decode_data_url("data:;base64,YSBiCg==").unwrap(), b"a b\n");
    assert!(decode_data_url("data:,a%2").is_err());
}

/// A YAML reader for the block-style subset Butane configs are written in:
/// mappings, sequences (`- `), plain and quoted scalars, integers (a leading
/// 0 is octal, as Butane reads file modes), booleans, literal blocks (`|`),
/// full-line comments. Anything else (flow collections, anchors, tabs,
/// trailing comments, other block styles) is an error naming the line, so a
/// .bu this check cannot read fails rather than passing unread. (The
/// workspace has no YAML crate; serde_yaml is deprecated.)
mod yaml {
    use serde_json::{Map, Value};

    struct Line<'a> {
        no: usize,
        indent: usize,
        text: &'a str,
    }

    pub fn parse(src: &str) -> Result<Value, String> {
        let mut lines = Vec::new();
        for (i, raw) in src.lines().enumerate() {
            if raw.contains('\t') {
                return Err(format!("line {}: tab", i + 1));
            }
            let text = raw.trim_start_matches(' ');
            lines.push(Line { no: i + 1, indent: raw.len() - text.len(), text: text.trim_end() });
        }
        let mut p = Parser { lines, at: 0 };
        p.skip_blank();
        if p.at == p.lines.len() {
            return Err("empty document".into());
        }
        let indent = p.lines[p.at].indent;
        let v = p.node(indent)?;
        p.skip_blank();
        match p.lines.get(p.at) {
            Some(l) => Err(format!("line {}: unexpected indentation", l.no)),
            None => Ok(v),
        }
    }

    struct Parser<'a> {
        lines: Vec<Line<'a>>,
        at: usize,
    }

    fn is_item(text: &str) -> bool {
        text == "-" || text.starts_with("- ")
    }

    /// `key: rest` (rest may be empty) when the line starts with a plain key.
    fn key_value(text: &str) -> Option<(&str, &str)> {
        let (k, rest) = text.split_once(':')?;
        let plain = !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        (plain && (rest.is_empty() || rest.starts_with(' '))).then(|| (k, rest.trim()))
    }

    impl Parser<'_> {
        fn skip_blank(&mut self) {
            while self
                .lines
                .get(self.at)
                .is_some_and(|l| l.text.is_empty() || l.text.starts_with('#'))
            {
                self.at += 1;
            }
        }

        /// The next non-blank line, if it is indented exactly `indent`.
        fn next_at(&mut self, indent: usize) -> Option<usize> {
            self.skip_blank();
            let l = self.lines.get(self.at)?;
            (l.indent == indent).then_some(self.at)
        }

        fn node(&mut self, indent: usize) -> Result<Value, String> {
            let i = self.next_at(indent).ok_or("expected a value")?;
            if is_item(self.lines[i].text) {
                self.seq(indent)
            } else {
                self.map(indent)
            }
        }

        fn seq(&mut self, indent: usize) -> Result<Value, String> {
            let mut out = Vec::new();
            while let Some(i) = self.next_at(indent) {
                let (no, text) = (self.lines[i].no, self.lines[i].text);
                if !is_item(text) {
                    return Err(format!("line {no}: expected '- '"));
                }
                let rest = text[1..].trim_start();
                if key_value(rest).is_some() {
                    // `- key: value`: a mapping whose first line is this one.
                    let inner = indent + (text.len() - rest.len());
                    self.lines[i] = Line { no, indent: inner, text: rest };
                    out.push(self.map(inner)?);
                } else if rest.is_empty() {
                    return Err(format!("line {no}: nested item on its own line"));
                } else {
                    let v = scalar(rest).map_err(|e| format!("line {no}: {e}"))?;
                    self.at += 1;
                    out.push(v);
                }
            }
            Ok(Value::Array(out))
        }

        fn map(&mut self, indent: usize) -> Result<Value, String> {
            let mut out = Map::new();
            while let Some(i) = self.next_at(indent) {
                let (no, text) = (self.lines[i].no, self.lines[i].text);
                let (k, rest) =
                    key_value(text).ok_or(format!("line {no}: expected 'key: value'"))?;
                self.at += 1;
                let v = match rest {
                    "" => {
                        self.skip_blank();
                        match self.lines.get(self.at) {
                            Some(n) if n.indent > indent => {
                                let ni = n.indent;
                                self.node(ni)?
                            }
                            _ => return Err(format!("line {no}: {k} has no value")),
                        }
                    }
                    "|" => Value::String(self.literal(indent)?),
                    r => scalar(r).map_err(|e| format!("line {no}: {e}"))?,
                };
                if out.insert(k.to_string(), v).is_some() {
                    return Err(format!("line {no}: duplicate key {k}"));
                }
            }
            Ok(Value::Object(out))
        }

        /// A `|` block (clip: one final newline) more indented than `parent`.
        fn literal(&mut self, parent: usize) -> Result<String, String> {
            let mut body: Vec<String> = Vec::new();
            let mut block = None;
            while let Some(l) = self.lines.get(self.at) {
                if l.text.is_empty() {
                    body.push(String::new());
                } else if l.indent > parent {
                    let b = *block.get_or_insert(l.indent);
                    if l.indent < b {
                        return Err(format!("line {}: less indented than its block", l.no));
                    }
                    body.push(format!("{}{}", " ".repeat(l.indent - b), l.text));
                } else {
                    break;
                }
                self.at += 1;
            }
            while body.last().is_some_and(String::is_empty) {
                body.pop();
                self.at -= 1;
            }
            Ok(body.iter().map(|l| format!("{l}\n")).collect())
        }
    }

    /// A plain or quoted scalar on one line.
    fn scalar(s: &str) -> Result<Value, String> {
        for q in ['"', '\''] {
            if let Some(inner) = s.strip_prefix(q) {
                let inner = inner.strip_suffix(q).ok_or("unterminated quoted scalar")?;
                if inner.contains(q) || inner.contains('\\') {
                    return Err("escapes in quoted scalars are not handled".into());
                }
                return Ok(Value::String(inner.into()));
            }
        }
        if s.starts_with(['[', '{', '&', '*', '!', '|', '>', '%', '@', '`']) {
            return Err(format!("{s:?}: not handled by this reader"));
        }
        if s.contains(" #") || s.contains(": ") || s.ends_with(':') {
            return Err(format!("{s:?}: a comment or mapping where a scalar was expected"));
        }
        if ["null", "~", "yes", "no", "on", "off"].contains(&s) {
            return Err(format!("{s:?}: ambiguous scalar, quote it"));
        }
        if s == "true" || s == "false" {
            return Ok(Value::Bool(s == "true"));
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            let n = if s.len() > 1 && s.starts_with('0') {
                u64::from_str_radix(s, 8).map_err(|_| format!("{s}: not an octal number"))?
            } else {
                s.parse().map_err(|_| format!("{s}: number out of range"))?
            };
            return Ok(Value::from(n));
        }
        Ok(Value::String(s.into()))
    }
}
