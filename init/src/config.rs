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
