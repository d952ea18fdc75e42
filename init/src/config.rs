//! What forge-init takes from the kernel command line, checked before it
//! touches any device.

use crate::Result;
use forge_formats::cmdline::Cmdline;
use std::fmt;
use std::path::PathBuf;

/// Where the dm-verity superblock sits in USR when the command line does not
/// say (`verity.usrhashoffset=`): right after a 1016 MiB filesystem, as in
/// Flatcar's layout.
pub const DEFAULT_HASH_OFFSET: u64 = 1_065_345_024;

/// A device as the command line names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DevSpec {
    /// `/dev/…`
    Path(PathBuf),
    /// `PARTUUID=…` (GPT partition GUID, any case)
    PartUuid(String),
    /// `PARTLABEL=…` (GPT partition name)
    PartLabel(String),
    /// `LABEL=…` (filesystem label)
    Label(String),
}

impl DevSpec {
    pub fn parse(s: &str) -> Result<DevSpec> {
        if s.starts_with("/dev/") {
            return Ok(DevSpec::Path(PathBuf::from(s)));
        }
        let spec = match s.split_once('=') {
            Some(("PARTUUID", v)) if !v.is_empty() => DevSpec::PartUuid(v.to_string()),
            Some(("PARTLABEL", v)) if !v.is_empty() => DevSpec::PartLabel(v.to_string()),
            Some(("LABEL", v)) if !v.is_empty() => DevSpec::Label(v.to_string()),
            _ => {
                return Err(format!(
                    "'{s}' names no device (expected /dev/…, PARTUUID=…, PARTLABEL=… or LABEL=…)"
                ))
            }
        };
        Ok(spec)
    }
}

impl fmt::Display for DevSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DevSpec::Path(p) => write!(f, "{}", p.display()),
            DevSpec::PartUuid(v) => write!(f, "PARTUUID={v}"),
            DevSpec::PartLabel(v) => write!(f, "PARTLABEL={v}"),
            DevSpec::Label(v) => write!(f, "LABEL={v}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootConfig {
    /// USR, the dm-verity data and hash device (`verity.usr=`).
    pub usr: DevSpec,
    /// The trusted root hash, 64 hex digits (`verity.usrhash=`).
    pub usr_hash: String,
    /// Byte offset of the verity superblock in USR (`verity.usrhashoffset=`).
    pub hash_offset: u64,
    /// Read all of /usr through dm-verity before mounting it (unless
    /// `verity.usrcheck=lazy`).
    pub verify_usr_fully: bool,
    /// ROOT (`root=`, default `LABEL=ROOT`).
    pub root: DevSpec,
    /// /usr's filesystem type (`mount.usrfstype=`, default erofs).
    pub usr_fstype: String,
    /// The OEM ID (`flatcar.oem.id=`, else `coreos.oem.id=`); None when unset or empty.
    pub oem_id: Option<String>,
    /// What to exec in the new root (`init=`, default systemd).
    pub init: String,
    /// The first boot (`flatcar.first_boot=` any value but empty, `0`,
    /// `no`, `off`; GRUB adds `flatcar.first_boot=detected` while the ESP
    /// holds `/flatcar/first_boot`): the only boot on which Ignition runs.
    pub first_boot: bool,
    /// Where the platform keeps the user-data (`forge.userdata=`, set by the
    /// platform's OEM grub.cfg); None: the platform has none.
    pub userdata: Option<UserData>,
}

/// Where a platform keeps its user-data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserData {
    /// `http://HOST[:PORT]/PATH`: an HTTP GET; 404 means "no user-data".
    Http { host: String, port: u16, path: String },
    /// `fw_cfg:NAME`: a QEMU firmware-configuration entry
    /// (/sys/firmware/qemu_fw_cfg/by_name/NAME/raw); absent means "none".
    FwCfg(String),
}

impl UserData {
    pub fn parse(s: &str) -> Result<UserData> {
        if let Some(name) = s.strip_prefix("fw_cfg:") {
            let ok = !name.is_empty()
                && name.len() <= 55
                && name.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
            if !ok {
                return Err(format!("'{name}' is not a fw_cfg entry name (opt/… of at most 55 characters: letters, digits, . _ - /)"));
            }
            return Ok(UserData::FwCfg(name.to_string()));
        }
        let rest = s.strip_prefix("http://").ok_or_else(|| {
            format!("'{s}' is neither http://HOST[:PORT]/PATH nor fw_cfg:NAME (https is not supported in the initramfs)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => {
                (h, p.parse().map_err(|_| format!("'{s}': port '{p}' is not a number"))?)
            }
            None => (authority, 80),
        };
        let host_ok = !host.is_empty()
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b));
        if !host_ok {
            return Err(format!("'{s}': '{host}' is not a host name or IPv4 address"));
        }
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!("'{s}': the path has spaces or control characters"));
        }
        Ok(UserData::Http { host: host.to_string(), port, path: path.to_string() })
    }
}

impl fmt::Display for UserData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserData::Http { host, port: 80, path } => write!(f, "http://{host}{path}"),
            UserData::Http { host, port, path } => write!(f, "http://{host}:{port}{path}"),
            UserData::FwCfg(n) => write!(f, "fw_cfg {n}"),
        }
    }
}

impl BootConfig {
    pub fn from_cmdline(c: &Cmdline) -> Result<BootConfig> {
        let usr = c.get("verity.usr").ok_or("no verity.usr= on the kernel command line")?;
        let usr = DevSpec::parse(usr).map_err(|e| format!("verity.usr={usr}: {e}"))?;
        let usr_hash =
            c.get("verity.usrhash").ok_or("no verity.usrhash= on the kernel command line")?;
        if usr_hash.len() != 64 || !usr_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("verity.usrhash={usr_hash} is not 64 hex digits"));
        }
        let hash_offset = match c.get("verity.usrhashoffset") {
            Some(v) => {
                v.parse().map_err(|_| format!("verity.usrhashoffset={v} is not a number"))?
            }
            None => DEFAULT_HASH_OFFSET,
        };
        let root = c.get("root").unwrap_or("LABEL=ROOT");
        let root = DevSpec::parse(root).map_err(|e| format!("root={root}: {e}"))?;
        let oem_id = c
            .get("flatcar.oem.id")
            .or_else(|| c.get("coreos.oem.id"))
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        Ok(BootConfig {
            usr,
            usr_hash: usr_hash.to_string(),
            hash_offset,
            verify_usr_fully: c.get("verity.usrcheck") != Some("lazy"),
            root,
            usr_fstype: c.get("mount.usrfstype").unwrap_or("erofs").to_string(),
            oem_id,
            init: c.get("init").unwrap_or("/usr/lib/systemd/systemd").to_string(),
            first_boot: c
                .get("flatcar.first_boot")
                .is_some_and(|v| !matches!(v, "" | "0" | "no" | "off")),
            userdata: match c.get("forge.userdata").filter(|s| !s.is_empty()) {
                Some(s) => {
                    Some(UserData::parse(s).map_err(|e| format!("forge.userdata={s}: {e}"))?)
                }
                None => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use forge_formats::cmdline::parse;

    const HASH: &str = "0f3c6a5e8b1d2c4f6a8b0c2d4e6f8a0b1c3d5e7f9a1b3c5d7e9f1a3b5c7d9e1f";

    fn config(s: &str) -> Result<BootConfig> {
        BootConfig::from_cmdline(&parse(s))
    }

    /// The command line grub.cfg.j2 renders for a Hetzner image.
    #[test]
    fn flatcar_command_line() {
        let c = config(&format!(
            "BOOT_IMAGE=/flatcar/vmlinuz-a rootflags=rw mount.usrflags=ro consoleblank=0 root=LABEL=ROOT console=ttyS0,115200n8 console=tty0 flatcar.first_boot=detected flatcar.oem.id=hetzner mount.usr=/dev/mapper/usr verity.usr=PARTUUID=7130C94A-213A-4E5A-8E26-6CCE9662F132 verity.usrhash={HASH} verity.usrhashoffset=1065345024\n"
        ))
        .unwrap();
        assert_eq!(c.usr, DevSpec::PartUuid("7130C94A-213A-4E5A-8E26-6CCE9662F132".into()));
        assert_eq!(c.usr_hash, HASH);
        assert_eq!(c.hash_offset, 1_065_345_024);
        assert!(c.verify_usr_fully);
        assert_eq!(c.root, DevSpec::Label("ROOT".into()));
        assert_eq!(c.root.to_string(), "LABEL=ROOT");
        assert_eq!(c.usr_fstype, "erofs");
        assert_eq!(c.oem_id.as_deref(), Some("hetzner"));
        assert_eq!(c.init, "/usr/lib/systemd/systemd");
        assert!(c.first_boot);
        assert_eq!(c.userdata, None);
    }

    #[test]
    fn first_boot_and_userdata() {
        let base = format!("verity.usr=/dev/sda3 verity.usrhash={HASH}");
        assert!(!config(&base).unwrap().first_boot);
        for v in ["", "0", "no", "off"] {
            assert!(!config(&format!("{base} flatcar.first_boot={v}")).unwrap().first_boot, "{v}");
        }
        assert!(config(&format!("{base} flatcar.first_boot=1")).unwrap().first_boot);
        let u = |s: &str| config(&format!("{base} forge.userdata={s}")).map(|c| c.userdata);
        assert_eq!(
            u("http://169.254.169.254/hetzner/v1/userdata").unwrap(),
            Some(UserData::Http {
                host: "169.254.169.254".into(),
                port: 80,
                path: "/hetzner/v1/userdata".into()
            })
        );
        assert_eq!(
            u("http://meta.local:8080").unwrap(),
            Some(UserData::Http { host: "meta.local".into(), port: 8080, path: "/".into() })
        );
        assert_eq!(
            u("fw_cfg:opt/org.flatcar-linux/config").unwrap(),
            Some(UserData::FwCfg("opt/org.flatcar-linux/config".into()))
        );
        assert_eq!(
            UserData::parse("http://169.254.169.254/hetzner/v1/userdata").unwrap().to_string(),
            "http://169.254.169.254/hetzner/v1/userdata"
        );
        assert_eq!(u("").unwrap(), None);
        for bad in [
            "https://x/y",
            "ftp://x",
            "http:///path",
            "http://x:port/",
            "http://x:99999/",
            "http://a_b/",
            "fw_cfg:",
            "fw_cfg:opt/../etc",
            "fw_cfg:opt//x",
            "fw_cfg:opt/x@y",
        ] {
            let e = u(bad).unwrap_err();
            assert!(e.starts_with(&format!("forge.userdata={bad}: ")), "{bad}: {e}");
        }
    }

    #[test]
    fn defaults_and_overrides() {
        let base = format!("verity.usr=/dev/sda3 verity.usrhash={HASH}");
        let c = config(&base).unwrap();
        assert_eq!(c.usr, DevSpec::Path("/dev/sda3".into()));
        assert_eq!(c.hash_offset, DEFAULT_HASH_OFFSET);
        assert_eq!(c.root, DevSpec::Label("ROOT".into()));
        assert_eq!(c.oem_id, None);
        let c = config(&format!(
            "{base} verity.usrcheck=lazy root=PARTLABEL=ROOT mount.usrfstype=ext4 init=/bin/sh coreos.oem.id=qemu verity.usrhashoffset=4096"
        ))
        .unwrap();
        assert!(!c.verify_usr_fully);
        assert_eq!(c.root, DevSpec::PartLabel("ROOT".into()));
        assert_eq!((c.usr_fstype.as_str(), c.init.as_str()), ("ext4", "/bin/sh"));
        assert_eq!(c.oem_id.as_deref(), Some("qemu"));
        assert_eq!(c.hash_offset, 4096);
        // flatcar.oem.id wins over coreos.oem.id; an empty one means none
        // (it does not fall back to coreos.oem.id).
        let c = config(&format!("{base} coreos.oem.id=qemu flatcar.oem.id=hetzner")).unwrap();
        assert_eq!(c.oem_id.as_deref(), Some("hetzner"));
        let c = config(&format!("{base} coreos.oem.id=qemu flatcar.oem.id=")).unwrap();
        assert_eq!(c.oem_id, None);
        // The last of a repeated parameter wins, as in the kernel.
        let c = config(&format!("{base} flatcar.oem.id=a flatcar.oem.id=b")).unwrap();
        assert_eq!(c.oem_id.as_deref(), Some("b"));
    }

    #[test]
    fn quoting() {
        let c = config(&format!(
            "\"verity.usr=PARTUUID=abc\" verity.usrhash=\"{HASH}\" flatcar.oem.id=\"my oem\" init=\"/sbin/init\""
        ))
        .unwrap();
        assert_eq!(c.usr, DevSpec::PartUuid("abc".into()));
        assert_eq!(c.usr_hash, HASH);
        assert_eq!(c.oem_id.as_deref(), Some("my oem"));
        assert_eq!(c.init, "/sbin/init");
    }

    #[test]
    fn errors_name_the_parameter() {
        let err = |s: &str| config(s).unwrap_err();
        assert_eq!(
            err(&format!("verity.usrhash={HASH}")),
            "no verity.usr= on the kernel command line"
        );
        assert_eq!(err("verity.usr=PARTUUID=abc"), "no verity.usrhash= on the kernel command line");
        assert_eq!(
            err("verity.usr=PARTUUID=abc verity.usrhash=abcd"),
            "verity.usrhash=abcd is not 64 hex digits"
        );
        let z = "z".repeat(64);
        assert!(err(&format!("verity.usr=PARTUUID=abc verity.usrhash={z}")).contains("not 64 hex"));
        assert_eq!(
            err(&format!("verity.usr=PARTUUID=abc verity.usrhash={HASH} verity.usrhashoffset=1k")),
            "verity.usrhashoffset=1k is not a number"
        );
        assert!(err(&format!("verity.usr=UUID=abc verity.usrhash={HASH}"))
            .starts_with("verity.usr=UUID=abc: 'UUID=abc' names no device"));
        assert!(err(&format!("verity.usr verity.usrhash={HASH}")).starts_with("verity.usr=: "));
        assert!(err(&format!("verity.usr=/dev/sda3 verity.usrhash={HASH} root=LABEL="))
            .starts_with("root=LABEL=: "));
    }
}
