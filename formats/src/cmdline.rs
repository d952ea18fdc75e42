//! The kernel command line (`/proc/cmdline`), split the way the kernel
//! itself splits it (`next_arg` in kernel/params.c):
//!
//! - parameters are separated by whitespace, except inside double quotes;
//! - `key="a value"` and `"key=a value"` both give `key` = `a value` (the
//!   quotes around the value, or around the whole parameter, are removed;
//!   other quotes stay);
//! - a bare `--` ends the kernel's parameters: what follows is for init.

/// One parameter: `key` or `key=value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub key: String,
    /// `None` for a bare `key`.
    pub value: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// In command-line order, up to a bare `--`.
    pub params: Vec<Param>,
    /// The words after a bare `--` (the kernel passes them to init).
    pub init_args: Vec<String>,
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

/// Splits a command line into parameters. Never fails: the kernel accepts
/// any text (an unterminated quote runs to the end of the line).
pub fn parse(s: &str) -> Cmdline {
    let b = s.as_bytes();
    let mut out = Cmdline::default();
    let mut i = 0;
    let mut after_dashes = false;
    loop {
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        if i >= b.len() {
            return out;
        }
        let quoted = b[i] == b'"';
        let start = if quoted { i + 1 } else { i };
        let mut in_quote = quoted;
        let mut equals = None;
        let mut j = start;
        while j < b.len() {
            if is_space(b[j]) && !in_quote {
                break;
            }
            if equals.is_none() && b[j] == b'=' {
                equals = Some(j);
            }
            if b[j] == b'"' {
                in_quote = !in_quote;
            }
            j += 1;
        }
        i = j;
        // All indices are at ASCII bytes, so the slices are on char boundaries.
        let ends_in_quote = j > start && b[j - 1] == b'"';
        let param = match equals {
            None => {
                let end = if quoted && ends_in_quote { j - 1 } else { j };
                Param { key: s[start..end].to_string(), value: None }
            }
            Some(e) => {
                let mut vs = e + 1;
                let mut end = j;
                let value_quoted = vs < j && b[vs] == b'"';
                if value_quoted {
                    vs += 1;
                }
                if (value_quoted || quoted) && ends_in_quote {
                    end = j - 1;
                }
                let value = if vs <= end { &s[vs..end] } else { "" };
                Param { key: s[start..e].to_string(), value: Some(value.to_string()) }
            }
        };
        if after_dashes {
            out.init_args.push(match param.value {
                Some(v) => format!("{}={v}", param.key),
                None => param.key,
            });
            continue;
        }
        if param.value.is_none() && param.key == "--" {
            after_dashes = true;
            continue;
        }
        out.params.push(param);
    }
}

impl Cmdline {
    /// The value of the last `key=…` or bare `key` (whose value is `""`),
    /// as the kernel lets a later parameter override an earlier one.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.iter().rev().find(|p| p.key == key).map(|p| p.value.as_deref().unwrap_or(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(key: &str, value: Option<&str>) -> Param {
        Param { key: key.into(), value: value.map(str::to_string) }
    }

    #[test]
    fn plain_words() {
        let c = parse("  root=LABEL=ROOT ro\tconsole=ttyS0,115200n8 quiet\n");
        assert_eq!(
            c.params,
            [
                p("root", Some("LABEL=ROOT")),
                p("ro", None),
                p("console", Some("ttyS0,115200n8")),
                p("quiet", None)
            ]
        );
        assert_eq!(c.get("root"), Some("LABEL=ROOT"));
        assert_eq!(c.get("ro"), Some(""));
        assert_eq!(c.get("rw"), None);
    }

    #[test]
    fn quoting() {
        let c = parse(r#"a="x y" "b=u v" c="" d="q"q e=x"y" "f" g=""#);
        assert_eq!(c.get("a"), Some("x y"));
        assert_eq!(c.get("b"), Some("u v"));
        assert_eq!(c.get("c"), Some(""));
        // Only a leading quote on the value is removed, and the last byte if it is one.
        assert_eq!(c.get("d"), Some("q\"q"));
        assert_eq!(c.get("e"), Some("x\"y\""));
        assert_eq!(c.params[5], p("f", None));
        assert_eq!(c.get("g"), Some(""));
        // An unterminated quote runs to the end.
        let c = parse("x=\"a b c");
        assert_eq!(c.params, [p("x", Some("a b c"))]);
    }

    #[test]
    fn last_wins_and_dashes() {
        let c = parse("x=1 x=2 -- single init=foo");
        assert_eq!(c.get("x"), Some("2"));
        assert_eq!(c.get("init"), None);
        assert_eq!(c.init_args, ["single", "init=foo"]);
        assert_eq!(parse("").params, []);
    }
}
