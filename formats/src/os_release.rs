//! `os-release`-style files (`/usr/lib/os-release`, `/oem/oem-release`):
//! `KEY=value` lines, values optionally in single or double quotes, `#`
//! comments. Lines without `=` are ignored, as systemd does.

use std::collections::BTreeMap;

/// The keys and their (unquoted) values; a later line wins over an earlier one.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            m.insert(k.trim().to_string(), unquote(v.trim()).to_string());
        }
    }
    m
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_quotes_comments() {
        let m = parse(
            "# comment\nID=hetzner\nVERSION_ID=\"1.2.3\"\nNAME='Hetzner Cloud'\n\ngarbage\nHOME_URL=\"unterminated\n  ID = again \n",
        );
        assert_eq!(m["ID"], "again");
        assert_eq!(m["VERSION_ID"], "1.2.3");
        assert_eq!(m["NAME"], "Hetzner Cloud");
        assert_eq!(m["HOME_URL"], "\"unterminated");
        assert_eq!(m.len(), 4);
    }
}
