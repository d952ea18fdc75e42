//! The boot-test file, `oem/<id>/boot-test.json`: how a platform boots its
//! image in QEMU and what is checked. Everything a platform varies is here
//! (architectures and firmwares, machine, NICs, disks, fw_cfg entries, the
//! metadata service's paths, per-boot user-data, disk mutations, checks);
//! the code only knows how to turn it into QEMU arguments and how to
//! evaluate checks.
//!
//! Architectures and firmwares: `arch` names the architectures the image
//! boots on (any of forge's names: `amd64` or `x86-64`, `arm64` or
//! `aarch64`), `firmware` the firmwares; each architecture boots with those
//! of them it has ([`BootTest::firmwares`]: arm64 has no BIOS; a file whose
//! architecture has none of its firmwares is refused). `machine` is every
//! architecture's machine but for what `machine_arch` sets per architecture
//! (`{"arm64": {"disk_bytes": …, "memory_mib": …, "cpus": …,
//! "timeout_seconds": …}}`, each field optional). A boot may run with some
//! of the firmwares (`"firmware": ["bios"]`) and on some of the
//! architectures (`"arch": ["amd64"]`) only; a boot whose firmwares an
//! architecture it runs on lacks must leave that architecture out of its
//! `arch`. How QEMU boots each architecture (binary, machine, CPU, UEFI
//! files) is not data of the file: see `qemu::TARGETS`.
//!
//! Strings are MiniJinja templates rendered per boot with: `platform`,
//! `arch` (Debian's name: `amd64`, `arm64`), `firmware`, `variant`,
//! `disk_bytes`, `disk_gib` (the architecture's machine),
//! `ssh_public_key` (the test's generated key, one line),
//! `ssh_public_key_body` (its base64 part), `userdata` (the boot's, itself
//! rendered first; "" when the boot serves none), `userdata_absent` and
//! `metadata.<name>` (the file's `metadata.values`). An unknown variable is
//! an error, never an empty string.
//!
//! User-data, at the top level (the default) or per boot, is one of:
//! - `"userdata": "<template>"`: inline, rendered; `""` is served as an empty
//!   body (HTTP 200, an empty fw_cfg file);
//! - `"userdata_file": "examples/hetzner/hello.ign"`: a file, relative to the
//!   repository root (the folder holding `oem/`), served byte for byte except
//!   for `"userdata_substitute": {"<literal>": "<template>"}`, which replaces
//!   every occurrence of each literal by the rendered template (a literal
//!   that does not occur is an error naming the file); the file itself is
//!   not a template;
//! - `"userdata_absent": true`: no user-data at all: the metadata path that
//!   serves it answers 404 and fw_cfg entries carrying it are left out.
//!
//! A boot that gives none of them takes the top level's; a file that gives
//! none serves `""`.
//!
//! Disks: every boot gets a fresh copy of the prepared image (changed by
//! its `mutation`, if any), unless it says `"disk": "previous"`: then it
//! boots the disk the boot before it left behind. The harness stops that
//! earlier VM cleanly first (over SSH as `poweroff_ssh_user`: `sync`, then
//! `systemctl poweroff`, waiting for QEMU to exit; killed after a timeout or
//! if the guest refuses). The first boot cannot be "previous", a "previous"
//! boot takes no mutation, a boot that is not negative cannot follow a
//! negative one on the previous disk (skipping negative boots would break
//! the chain), and a "previous" boot runs on no architecture and with no
//! firmware its predecessor does not.

use crate::check::{Check, Cond, Probe};
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

/// The file name beside `platform.json`.
pub const FILE: &str = "boot-test.json";

/// The architectures, as forge knows them: a file may name one by Debian's
/// name (`amd64`, `arm64`) or systemd's (`x86-64`); reports, logs and file
/// names use Debian's.
pub use forge::arch::Arch;

/// The firmwares, as forge knows them (`bios`, `uefi`; [`Firmware::on`] an
/// architecture).
pub use forge::arch::Firmware;

/// One platform's boot test.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootTest {
    #[serde(rename = "_comment", default)]
    _comment: Option<serde_json::Value>,
    /// Architectures the image boots on, each with the firmwares of
    /// `firmware` it has (see [`BootTest::firmwares`]).
    pub arch: Vec<Arch>,
    pub firmware: Vec<Firmware>,
    pub machine: Machine,
    /// Per architecture, what differs from `machine` (each field optional):
    /// `{"arm64": {"disk_bytes": 42949672960, "timeout_seconds": 1500}}`.
    /// See [`BootTest::machine_for`].
    #[serde(default, deserialize_with = "arch_keys")]
    pub machine_arch: BTreeMap<Arch, MachineArch>,
    /// The fake metadata service, reached by the NICs that say `"metadata": true`.
    #[serde(default)]
    pub metadata: Option<MetadataService>,
    #[serde(default)]
    pub nics: Vec<Nic>,
    pub disks: Vec<Disk>,
    /// QEMU firmware configuration entries (e.g. Ignition for the qemu platform).
    #[serde(default)]
    pub fw_cfg: Vec<FwCfg>,
    /// Default user-data of every boot (a boot may override it); see the module doc.
    #[serde(default)]
    pub userdata: Option<String>,
    #[serde(default)]
    pub userdata_file: Option<PathBuf>,
    #[serde(default)]
    pub userdata_substitute: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub userdata_absent: bool,
    /// The user the harness logs in as (with the test key) to power a VM off
    /// before a `"disk": "previous"` boot.
    #[serde(default = "core")]
    pub poweroff_ssh_user: String,
    /// Files built before the boots that need them, served by the metadata
    /// service (a path whose body is `{"artifact": NAME}`); see [`Artifact`].
    #[serde(default)]
    pub artifacts: BTreeMap<String, Artifact>,
    pub boots: Vec<Boot>,
    /// The file this was read from.
    #[serde(skip)]
    pub file: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    pub memory_mib: u32,
    #[serde(default = "one")]
    pub cpus: u32,
    /// The image is written to a sparse disk of this size (the platform's disks are larger).
    pub disk_bytes: u64,
    /// Seconds each boot may take to reach one of its `until` markers.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

/// A map keyed by any of an architecture's names (read with string keys,
/// so that an error inside an entry names its place, e.g.
/// `machine_arch.arm64.disk_gib`).
fn arch_keys<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<Arch, MachineArch>, D::Error> {
    use serde::de::Error;
    let mut out = BTreeMap::new();
    for (k, v) in BTreeMap::<String, MachineArch>::deserialize(d)? {
        let a = Arch::parse(&k).map_err(D::Error::custom)?;
        if out.insert(a, v).is_some() {
            return Err(D::Error::custom(format!("{a} is named twice")));
        }
    }
    Ok(out)
}

/// One architecture's changes to the file's `machine`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineArch {
    #[serde(default)]
    pub memory_mib: Option<u32>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub disk_bytes: Option<u64>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

impl Machine {
    /// This machine with what `o` sets.
    fn with(&self, o: &MachineArch) -> Machine {
        Machine {
            memory_mib: o.memory_mib.unwrap_or(self.memory_mib),
            cpus: o.cpus.unwrap_or(self.cpus),
            disk_bytes: o.disk_bytes.unwrap_or(self.disk_bytes),
            timeout_seconds: o.timeout_seconds.unwrap_or(self.timeout_seconds),
        }
    }
}

fn core() -> String {
    "core".into()
}

fn one() -> u32 {
    1
}

fn default_timeout() -> u64 {
    900
}

/// A file the harness's caller builds before booting (the test crate does
/// not build anything itself: `cargo xtask boot-test` does, with forge).
/// Recipe folders are relative to the repository root.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Artifact {
    /// A system extension, `NAME.raw`, from the folder `<dir>/NAME/`
    /// (`sysext.json` and a recipe), built against the image's payload.
    Sysext(PathBuf),
    /// A plain root tree from a recipe (kind `rootfs`), packed as a tar with
    /// fixed owners, order and times: e.g. a container image for `docker import`.
    RootfsTar(PathBuf),
}

impl Artifact {
    pub fn recipe(&self) -> &Path {
        match self {
            Artifact::Sysext(p) | Artifact::RootfsTar(p) => p,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataService {
    /// Guest-side address QEMU forwards to the responder, e.g. "169.254.169.254:80".
    pub listen: String,
    /// Named values, available to every template as `metadata.<name>`.
    #[serde(default)]
    pub values: BTreeMap<String, serde_json::Value>,
    /// Path → body. A string is text/plain; an object gives `content_type`
    /// and either `body` or `lines` (joined with newlines, one after the last).
    pub paths: BTreeMap<String, Body>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Body {
    pub content_type: String,
    pub body: String,
    /// `{"userdata": true}`: the boot's user-data (the path answers 404 when
    /// the boot has none); `body` is then unused.
    pub userdata: bool,
    /// `{"artifact": NAME}`: the file the caller built for the artifact NAME
    /// (see [`Artifact`]), served byte for byte; `body` is then unused.
    pub artifact: Option<String>,
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            content_type: Option<String>,
            body: Option<String>,
            lines: Option<Vec<String>>,
            #[serde(default)]
            userdata: bool,
            artifact: Option<String>,
        }
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => {
                Ok(Body { content_type: "text/plain".into(), body: s, userdata: false, artifact: None })
            }
            v @ serde_json::Value::Object(_) => {
                let f: Full = serde_json::from_value(v).map_err(D::Error::custom)?;
                let body = match (f.body, f.lines, f.userdata, f.artifact.is_some()) {
                    (Some(b), None, false, false) => b,
                    (None, Some(l), false, false) => l.iter().map(|l| format!("{l}\n")).collect(),
                    (None, None, true, false) | (None, None, false, true) => String::new(),
                    _ => {
                        return Err(D::Error::custom(
                            "give exactly one of `body`, `lines`, `\"userdata\": true` and `artifact`",
                        ))
                    }
                };
                let content_type = match f.content_type {
                    Some(t) => t,
                    None if f.userdata => "text/plain".into(),
                    None if f.artifact.is_some() => "application/octet-stream".into(),
                    None => return Err(D::Error::custom("missing field `content_type`")),
                };
                Ok(Body { content_type, body, userdata: f.userdata, artifact: f.artifact })
            }
            _ => Err(D::Error::custom(
                "a body is a string or {\"content_type\", \"body\" | \"lines\" | \"userdata\": true | \"artifact\"}",
            )),
        }
    }
}

/// One NIC, on a QEMU user network of its own (always `restrict=on`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    #[serde(default = "virtio_net")]
    pub model: String,
    pub mac: String,
    /// The user network's addresses (QEMU's defaults if absent).
    #[serde(default)]
    pub user_net: Option<UserNet>,
    /// Forward the metadata service's `listen` address on this network to the responder.
    #[serde(default)]
    pub metadata: bool,
    /// Guest TCP ports reachable from the host at 127.0.0.1 (ephemeral ports).
    #[serde(default)]
    pub hostfwd: Vec<u16>,
}

fn virtio_net() -> String {
    "virtio-net-pci".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserNet {
    /// e.g. "169.254.0.0/16"
    pub net: String,
    pub host: Ipv4Addr,
    pub dhcpstart: Ipv4Addr,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    pub source: DiskSource,
    pub device: DiskDevice,
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub product: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DiskSource {
    /// The image under test, grown to `machine.disk_bytes`.
    Image,
    /// An empty sparse disk of this many bytes.
    Blank { bytes: u64 },
    /// A disk of this many bytes that is one ext4 filesystem (no partition
    /// table, as a Hetzner volume formatted by Hetzner) holding `files`
    /// (relative path → content), made by `mkfs.ext4 -d` for each boot.
    Ext4 {
        bytes: u64,
        #[serde(default)]
        label: Option<String>,
        #[serde(default)]
        files: BTreeMap<String, String>,
    },
}

/// The smallest ext4 disk (`mkfs.ext4` needs room for its journal).
pub const MIN_EXT4_BYTES: u64 = 8 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum DiskDevice {
    /// On a virtio-scsi controller.
    #[serde(rename = "scsi-hd")]
    ScsiHd,
    #[serde(rename = "virtio-blk-pci")]
    VirtioBlk,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FwCfg {
    /// e.g. "opt/org.flatcar-linux/config"
    pub name: String,
    /// Template, rendered per boot.
    #[serde(default)]
    pub content: Option<String>,
    /// The boot's user-data (the entry is left out when the boot has none).
    #[serde(default)]
    pub userdata: bool,
}

/// One boot of the image (or of a mutated copy).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    pub variant: String,
    /// Skipped with `--no-negative`.
    #[serde(default)]
    pub negative: bool,
    /// Applied to a copy of the prepared disk before this boot.
    #[serde(default)]
    pub mutation: Option<Mutation>,
    /// Overrides the file's user-data for this boot (see the module doc).
    #[serde(default)]
    pub userdata: Option<String>,
    #[serde(default)]
    pub userdata_file: Option<PathBuf>,
    #[serde(default)]
    pub userdata_substitute: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub userdata_absent: bool,
    /// `"fresh"` (default): a fresh copy of the prepared image; `"previous"`:
    /// the disk the boot before this one left behind.
    #[serde(default)]
    pub disk: BootDisk,
    /// The firmwares this boot runs with (default: all the file declares):
    /// a list (`["bios"]`), or `"one"`: one per architecture, the first of
    /// the file's firmwares it has (amd64 BIOS, arm64 UEFI). What does not
    /// depend on the firmware (how forge-init treats user-data, the
    /// containers a config starts, the negative boots) is booted with one
    /// only, to keep the test short.
    #[serde(default)]
    pub firmware: Option<BootFirmware>,
    /// The architectures this boot runs on (default: all the file
    /// declares); as `firmware`, for what does not depend on the
    /// architecture (booted on one only: TCG makes the other slow).
    #[serde(default)]
    pub arch: Option<Vec<Arch>>,
    /// Paths the metadata service serves during this boot only, next to
    /// the file's `metadata.paths` (e.g. an artifact a config fetches).
    #[serde(default)]
    pub serve: BTreeMap<String, Body>,
    /// NICs this boot has besides the file's (after them), e.g. a private
    /// network's; each on a user network of its own, as the file's.
    #[serde(default)]
    pub extra_nics: Vec<Nic>,
    /// Disks this boot has besides the file's (after them), e.g. volumes.
    #[serde(default)]
    pub extra_disks: Vec<Disk>,
    /// A virtio-serial port named `org.qemu.guest_agent.0` whose host end
    /// the `guest_agent` probe talks to (QEMU's guest agent protocol).
    #[serde(default)]
    pub guest_agent: bool,
    /// Disks made before the boot but attached only when a `hotplug` probe
    /// says so (through QEMU's monitor, QMP), e.g. a volume attached to a
    /// running server. SCSI disks (`scsi-hd`) only.
    #[serde(default)]
    pub hotplug_disks: Vec<Disk>,
    /// The user-data this boot serves, resolved when the file is read.
    #[serde(skip)]
    pub resolved_userdata: UserData,
    /// The firmwares it runs with on each architecture it runs on (its
    /// `arch` and `firmware` applied to the file's), set when the file is read.
    #[serde(skip)]
    pub firmware_on: BTreeMap<Arch, Vec<Firmware>>,
    /// Serial console markers; the boot is observed when one appears (the
    /// first of this list that is present is the `stopped_at` observation).
    pub until: Vec<String>,
    pub checks: Vec<Check>,
}

/// A boot's `firmware`: a list, or `"one"` (see [`Boot::firmware`]).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum BootFirmware {
    List(Vec<Firmware>),
    One(OneFirmware),
}

/// `"one"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OneFirmware {
    One,
}

impl Boot {
    /// The boot runs on this architecture (its `arch`, if it names any).
    pub fn runs_on_arch(&self, a: Arch) -> bool {
        self.arch.as_ref().is_none_or(|xs| xs.contains(&a))
    }

    /// The boot runs on `arch` with `f` (which `arch` must have).
    pub fn runs_on(&self, arch: Arch, f: Firmware) -> bool {
        self.firmware_on.get(&arch).is_some_and(|fs| fs.contains(&f))
    }
}

/// Where a boot's user-data comes from, as written (top level or per boot).
struct UserDataSpec<'a> {
    userdata: &'a Option<String>,
    userdata_file: &'a Option<PathBuf>,
    userdata_substitute: &'a Option<BTreeMap<String, String>>,
    userdata_absent: bool,
}

impl UserDataSpec<'_> {
    /// Checks the combination and reads the file (relative to `root`).
    fn resolve(&self, at: &str, root: &Path) -> Result<Option<UserData>> {
        let n = [self.userdata.is_some(), self.userdata_file.is_some(), self.userdata_absent]
            .iter()
            .filter(|x| **x)
            .count();
        if n > 1 {
            bail!("{at}userdata: give at most one of userdata, userdata_file and userdata_absent");
        }
        if self.userdata_substitute.is_some() && self.userdata_file.is_none() {
            bail!("{at}userdata_substitute: only with userdata_file");
        }
        if let Some(t) = self.userdata {
            return Ok(Some(UserData::Template(t.clone())));
        }
        if self.userdata_absent {
            return Ok(Some(UserData::Absent));
        }
        let Some(rel) = self.userdata_file else { return Ok(None) };
        if rel.is_absolute() || rel.components().any(|c| c == std::path::Component::ParentDir) {
            bail!(
                "{at}userdata_file {:?}: a path relative to the repository root, without '..'",
                rel.display()
            );
        }
        let path = root.join(rel);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{at}userdata_file: {}: cannot read", path.display()))?;
        let substitute: Vec<(String, String)> =
            self.userdata_substitute.clone().unwrap_or_default().into_iter().collect();
        for (lit, _) in &substitute {
            if lit.is_empty() || !text.contains(lit.as_str()) {
                bail!("{at}userdata_substitute: {}: does not contain {lit:?}", path.display());
            }
        }
        Ok(Some(UserData::File { path, text, substitute }))
    }
}

/// A boot's user-data, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserData {
    /// Inline, a template.
    Template(String),
    /// A file's text (not a template) with literals replaced by rendered templates.
    File { path: PathBuf, text: String, substitute: Vec<(String, String)> },
    /// None: 404 from the metadata service, no fw_cfg entry.
    Absent,
}

impl Default for UserData {
    fn default() -> Self {
        UserData::Template(String::new())
    }
}

impl UserData {
    /// The text served (None: absent), templates rendered with `ctx`.
    pub fn render(&self, ctx: &minijinja::Value) -> Result<Option<String>> {
        match self {
            UserData::Template(t) => render(t, ctx).map(Some),
            UserData::File { path, text, substitute } => {
                let mut out = text.clone();
                for (lit, t) in substitute {
                    let v = render(t, ctx)
                        .map_err(|e| anyhow!("userdata_substitute for {}: {e}", path.display()))?;
                    out = out.replace(lit.as_str(), &v);
                }
                Ok(Some(out))
            }
            UserData::Absent => Ok(None),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootDisk {
    #[default]
    Fresh,
    Previous,
}

/// How one boot of a run gets its disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskUse {
    /// A fresh copy of the prepared image.
    Fresh,
    /// A fresh copy with this mutation applied.
    Mutated(Mutation),
    /// The previous boot's disk.
    Previous,
}

/// One boot of a run, in order.
#[derive(Clone, Debug)]
pub struct Step<'a> {
    pub boot: &'a Boot,
    pub disk: DiskUse,
    /// The next boot uses this boot's disk: power the VM off cleanly and keep the disk.
    pub hand_on: bool,
}

/// The boots a run on `arch` with `firmware` makes (negative ones only
/// with `negative`, and those the boot's `arch` and `firmware` allow), each
/// with its disk. Validation guarantees a "previous" boot follows a boot
/// that is run whenever it is.
pub fn plan_arch(t: &BootTest, negative: bool, arch: Arch, firmware: Firmware) -> Vec<Step<'_>> {
    let boots: Vec<&Boot> =
        t.boots.iter().filter(|b| (negative || !b.negative) && b.runs_on(arch, firmware)).collect();
    boots
        .iter()
        .enumerate()
        .map(|(i, b)| Step {
            boot: b,
            disk: match (b.disk, &b.mutation) {
                (BootDisk::Previous, _) => DiskUse::Previous,
                (BootDisk::Fresh, Some(m)) => DiskUse::Mutated(m.clone()),
                (BootDisk::Fresh, None) => DiskUse::Fresh,
            },
            hand_on: boots.get(i + 1).is_some_and(|n| n.disk == BootDisk::Previous),
        })
        .collect()
}

/// [`plan_arch`] on the first of the file's architectures that has
/// `firmware` (what `boot-test` boots an image of that architecture with).
/// (The tests' per-firmware view.)
#[cfg(test)]
pub fn plan(t: &BootTest, negative: bool, firmware: Firmware) -> Vec<Step<'_>> {
    match t.arch.iter().find(|a| firmware.on(**a)) {
        Some(a) => plan_arch(t, negative, *a, firmware),
        None => Vec::new(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Mutation {
    /// Removes a file from an ext4 partition (debugfs at the partition's offset).
    RemoveFile { partition: String, path: String },
    /// Flips one byte in the middle of the partition's filesystem.
    FlipByte { partition: String },
}

impl Mutation {
    pub fn describe(&self) -> String {
        match self {
            Mutation::RemoveFile { partition, path } => format!("{path} removed from {partition}"),
            Mutation::FlipByte { partition } => format!("one byte flipped in {partition}"),
        }
    }
}

/// `oem_root/<id>/boot-test.json`.
pub fn path(oem_root: &Path, id: &str) -> PathBuf {
    oem_root.join(id).join(FILE)
}

/// The platform's boot test, or None if it declares none.
pub fn load_for(oem_root: &Path, id: &str) -> Result<Option<BootTest>> {
    let p = path(oem_root, id);
    if !p.exists() {
        return Ok(None);
    }
    load(&p).map(Some)
}

/// Reads and validates one boot-test file; errors name the file, the place in it and the problem.
pub fn load(file: &Path) -> Result<BootTest> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{}: cannot read", file.display()))?;
    parse(&text, file)
}

pub fn parse(text: &str, file: &Path) -> Result<BootTest> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let mut t: BootTest = serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        if at == "." {
            anyhow!("{}: {}", file.display(), e.inner())
        } else {
            anyhow!("{}: {at}: {}", file.display(), e.inner())
        }
    })?;
    t.file = file.to_path_buf();
    t.resolve_userdata().map_err(|e| anyhow!("{}: {e:#}", file.display()))?;
    t.resolve_firmware();
    t.validate().map_err(|e| anyhow!("{}: {e}", file.display()))?;
    Ok(t)
}

/// `bios, uefi`
fn names(fs: &[Firmware]) -> String {
    fs.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
}

/// The limits of a machine; `at` is where it is in the file.
fn check_machine(at: &str, m: &Machine) -> Result<()> {
    if m.memory_mib < 128 {
        bail!("{at}.memory_mib: {} is below 128", m.memory_mib);
    }
    if m.cpus == 0 {
        bail!("{at}.cpus: must be at least 1");
    }
    if m.disk_bytes == 0 || !m.disk_bytes.is_multiple_of(512) {
        bail!("{at}.disk_bytes: {} is not a positive multiple of 512", m.disk_bytes);
    }
    if m.timeout_seconds == 0 {
        bail!("{at}.timeout_seconds: must be positive");
    }
    Ok(())
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Characters QEMU's option syntax would take as separators.
fn plain_option(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.contains([',', '=', ' ', '\n']) {
        bail!("{what} {s:?}: must be non-empty without ',', '=', spaces or newlines");
    }
    Ok(())
}

/// Checks NICs (the file's, or a boot's extra ones: named `at[i]`); the
/// guest ports forwarded so far are in `forwarded` (unique across both).
fn check_nics(
    nics: &[Nic],
    at: &str,
    has_metadata: bool,
    forwarded: &mut BTreeSet<u16>,
) -> Result<()> {
    for (i, n) in nics.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if !n.model.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            bail!("{at}.model {:?}: not a QEMU device name", n.model);
        }
        let octets: Vec<&str> = n.mac.split(':').collect();
        if octets.len() != 6
            || !octets.iter().all(|o| o.len() == 2 && u8::from_str_radix(o, 16).is_ok())
        {
            bail!("{at}.mac {:?}: expected six hex octets like 52:54:00:12:34:56", n.mac);
        }
        if let Some(u) = &n.user_net {
            let (a, l) = u
                .net
                .split_once('/')
                .ok_or_else(|| anyhow!("{at}.user_net.net {:?}: expected ADDRESS/BITS", u.net))?;
            if a.parse::<Ipv4Addr>().is_err() || !matches!(l.parse::<u8>(), Ok(8..=30)) {
                bail!("{at}.user_net.net {:?}: expected ADDRESS/BITS (8..=30)", u.net);
            }
        }
        if n.metadata && !has_metadata {
            bail!("{at}.metadata: true, but the file declares no metadata service");
        }
        for p in &n.hostfwd {
            if *p == 0 || !forwarded.insert(*p) {
                bail!("{at}.hostfwd: port {p} is zero or forwarded twice");
            }
        }
    }
    Ok(())
}

/// Checks disks (the file's, or a boot's extra ones: named `at[i]`).
fn check_disks(disks: &[Disk], at: &str) -> Result<()> {
    for (i, d) in disks.iter().enumerate() {
        for (k, v) in [("vendor", &d.vendor), ("product", &d.product), ("serial", &d.serial)] {
            if let Some(v) = v {
                plain_option(&format!("{at}[{i}].{k}"), v)?;
                if k != "serial" && d.device != DiskDevice::ScsiHd {
                    bail!("{at}[{i}].{k}: only a scsi-hd has a vendor and product");
                }
            }
        }
        match &d.source {
            DiskSource::Image => {}
            DiskSource::Blank { bytes } => {
                if *bytes == 0 || !bytes.is_multiple_of(512) {
                    bail!(
                        "{at}[{i}].source.blank.bytes: {bytes} is not a positive multiple of 512"
                    );
                }
            }
            DiskSource::Ext4 { bytes, label, files } => {
                if *bytes < MIN_EXT4_BYTES || !bytes.is_multiple_of(4096) {
                    bail!(
                        "{at}[{i}].source.ext4.bytes: {bytes} is not a multiple of 4096 of at least {MIN_EXT4_BYTES}"
                    );
                }
                if let Some(l) = label {
                    if l.is_empty() || l.len() > 16 || l.contains(['\n', '/']) {
                        bail!(
                            "{at}[{i}].source.ext4.label {l:?}: 1 to 16 bytes, without '/' or newlines"
                        );
                    }
                }
                for f in files.keys() {
                    let p = Path::new(f);
                    if p.components().count() == 0
                        || p.components().any(|c| !matches!(c, std::path::Component::Normal(_)))
                    {
                        bail!(
                            "{at}[{i}].source.ext4.files {f:?}: a relative path without '.' or '..'"
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

impl BootTest {
    /// Keeps only the boots named in `variants` (all when empty). A kept
    /// boot of the previous boot's disk needs that boot kept too; unknown
    /// names are errors listing the boot test's variants.
    pub fn select(mut self, variants: &[String]) -> Result<BootTest> {
        if variants.is_empty() {
            return Ok(self);
        }
        let names: Vec<&str> = self.boots.iter().map(|b| b.variant.as_str()).collect();
        for v in variants {
            if !names.contains(&v.as_str()) {
                bail!("no boot named '{v}' in the boot test (it has: {})", names.join(", "));
            }
        }
        let keep: Vec<bool> = self.boots.iter().map(|b| variants.contains(&b.variant)).collect();
        for (i, b) in self.boots.iter().enumerate() {
            if keep[i] && b.disk == BootDisk::Previous && !keep[i - 1] {
                bail!(
                    "boot '{}' boots the disk '{}' leaves behind: select that one too",
                    b.variant,
                    self.boots[i - 1].variant
                );
            }
        }
        let mut i = 0;
        self.boots.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        Ok(self)
    }

    /// The firmwares `arch` boots with: the file's `firmware` that the
    /// architecture has (arm64: no BIOS), in the file's order.
    pub fn firmwares(&self, arch: Arch) -> Vec<Firmware> {
        self.firmware.iter().copied().filter(|f| f.on(arch)).collect()
    }

    /// Every (architecture, firmware) the file boots, in its order.
    pub fn runs(&self) -> Vec<(Arch, Firmware)> {
        self.arch.iter().flat_map(|a| self.firmwares(*a).into_iter().map(|f| (*a, f))).collect()
    }

    /// The machine of `arch`: `machine`, with what `machine_arch` sets for it.
    pub fn machine_for(&self, arch: Arch) -> Machine {
        match self.machine_arch.get(&arch) {
            Some(o) => self.machine.with(o),
            None => self.machine.clone(),
        }
    }

    /// The repository root: the folder holding the `oem/` folder this file is in.
    pub fn root(&self) -> PathBuf {
        self.file
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// Sets every boot's `resolved_userdata` (reading `userdata_file`s).
    fn resolve_userdata(&mut self) -> Result<()> {
        let root = self.root();
        let top = UserDataSpec {
            userdata: &self.userdata,
            userdata_file: &self.userdata_file,
            userdata_substitute: &self.userdata_substitute,
            userdata_absent: self.userdata_absent,
        }
        .resolve("", &root)?
        .unwrap_or_default();
        for (i, b) in self.boots.iter_mut().enumerate() {
            let at = format!("boots[{i}] ({}).", b.variant);
            b.resolved_userdata = UserDataSpec {
                userdata: &b.userdata,
                userdata_file: &b.userdata_file,
                userdata_substitute: &b.userdata_substitute,
                userdata_absent: b.userdata_absent,
            }
            .resolve(&at, &root)?
            .unwrap_or_else(|| top.clone());
        }
        Ok(())
    }

    /// Sets every boot's `firmware_on` from its `arch` and `firmware` and
    /// the file's (validation then refuses what leaves an architecture
    /// without firmware).
    fn resolve_firmware(&mut self) {
        let per_arch: Vec<(Arch, Vec<Firmware>)> =
            self.arch.iter().map(|a| (*a, self.firmwares(*a))).collect();
        for b in &mut self.boots {
            b.firmware_on = per_arch
                .iter()
                .filter(|(a, _)| b.runs_on_arch(*a))
                .map(|(a, fs)| {
                    let on: Vec<Firmware> = match &b.firmware {
                        None => fs.clone(),
                        Some(BootFirmware::List(l)) => {
                            fs.iter().copied().filter(|f| l.contains(f)).collect()
                        }
                        Some(BootFirmware::One(_)) => fs.iter().copied().take(1).collect(),
                    };
                    (*a, on)
                })
                .collect();
        }
    }

    /// Replaces every boot's user-data (e.g. a file given on the command line).
    pub fn override_userdata(&mut self, u: UserData) {
        for b in &mut self.boots {
            b.resolved_userdata = u.clone();
        }
    }

    /// Writes the boot's fw_cfg entries into `dir`; (name, file) pairs for
    /// QEMU. Entries carrying user-data are left out when the boot has none.
    pub fn fw_cfg_files(
        &self,
        ctx: &minijinja::Value,
        dir: &Path,
    ) -> Result<Vec<(String, PathBuf)>> {
        let mut out = Vec::new();
        for (i, f) in self.fw_cfg.iter().enumerate() {
            let content = match (&f.content, f.userdata) {
                (Some(c), _) => Some(
                    render(c, ctx)
                        .map_err(|e| anyhow!("{}: fw_cfg[{i}]: {e}", self.file.display()))?,
                ),
                (None, _) => ctx_userdata(ctx),
            };
            let Some(content) = content else { continue };
            let file = dir.join(format!("fw_cfg-{i}"));
            std::fs::write(&file, content)
                .with_context(|| format!("{}: cannot write", file.display()))?;
            out.push((f.name.clone(), file));
        }
        Ok(out)
    }

    fn validate(&self) -> Result<()> {
        if self.arch.is_empty() {
            bail!("arch: name at least one architecture (amd64, arm64)");
        }
        if let Some(a) =
            self.arch.iter().enumerate().find_map(|(i, a)| self.arch[..i].contains(a).then_some(a))
        {
            bail!("arch: {a} is named twice");
        }
        if self.firmware.is_empty() {
            bail!("firmware: name at least one firmware (bios, uefi)");
        }
        for a in &self.arch {
            if self.firmwares(*a).is_empty() {
                bail!(
                    "firmware: {a} has none of the file's firmwares ({}): add one it has (uefi), or leave {a} out of arch",
                    names(&self.firmware)
                );
            }
        }
        check_machine("machine", &self.machine)?;
        for (a, o) in &self.machine_arch {
            if !self.arch.contains(a) {
                bail!("machine_arch.{a}: {a} is not among the file's architectures");
            }
            if *o == MachineArch::default() {
                bail!("machine_arch.{a}: sets nothing (give memory_mib, cpus, disk_bytes or timeout_seconds)");
            }
            check_machine(&format!("machine_arch.{a}"), &self.machine.with(o))?;
        }
        check_nics(&self.nics, "nics", self.metadata.is_some(), &mut BTreeSet::new())?;
        if let Some(md) = &self.metadata {
            md.listen.parse::<SocketAddrV4>().map_err(|_| {
                anyhow!(
                    "metadata.listen {:?}: expected IPV4:PORT like 169.254.169.254:80",
                    md.listen
                )
            })?;
            if !self.nics.iter().any(|n| n.metadata) {
                bail!("metadata: declared, but no NIC has \"metadata\": true");
            }
            for p in md.paths.keys() {
                if !p.starts_with('/')
                    || (p.len() > 1 && p.ends_with('/'))
                    || p.contains(['?', ' '])
                {
                    bail!("metadata.paths {p:?}: a path starts with '/' and has no trailing '/', '?' or spaces");
                }
            }
        }
        if self.disks.iter().filter(|d| d.source == DiskSource::Image).count() != 1 {
            bail!("disks: exactly one disk has \"source\": \"image\"");
        }
        check_disks(&self.disks, "disks")?;
        for (i, f) in self.fw_cfg.iter().enumerate() {
            if f.content.is_some() == f.userdata {
                bail!("fw_cfg[{i}]: give exactly one of content and \"userdata\": true");
            }
            plain_option(&format!("fw_cfg[{i}].name"), &f.name)?;
            if !f.name.starts_with("opt/") {
                bail!("fw_cfg[{i}].name {:?}: user entries live under opt/", f.name);
            }
        }
        for (name, a) in &self.artifacts {
            if !is_name(name) {
                bail!("artifacts: {name:?} is not a name of a-z, 0-9, '-', '_'");
            }
            let rel = a.recipe();
            if rel.is_absolute()
                || rel.components().any(|c| c == std::path::Component::ParentDir)
                || rel.file_name().is_none()
            {
                bail!(
                    "artifacts.{name}: {:?}: a folder relative to the repository root, without '..'",
                    rel.display()
                );
            }
            let dir = self.root().join(rel);
            if !dir.is_dir() {
                bail!("artifacts.{name}: {}: no such folder", dir.display());
            }
        }
        if self.boots.is_empty() {
            bail!("boots: declare at least one boot");
        }
        let mut variants = BTreeSet::new();
        for (i, b) in self.boots.iter().enumerate() {
            let at = format!("boots[{i}] ({})", b.variant);
            if !is_name(&b.variant) || !variants.insert(&b.variant) {
                bail!("{at}: variant must be a unique name of a-z, 0-9, '-', '_'");
            }
            if b.until.is_empty() || b.until.iter().any(|u| u.is_empty()) {
                bail!("{at}.until: name at least one non-empty serial marker");
            }
            if b.checks.is_empty() {
                bail!("{at}.checks: declare at least one check");
            }
            if let Some(BootFirmware::List(fs)) = &b.firmware {
                if fs.is_empty() {
                    bail!("{at}.firmware: name at least one firmware, or leave it out");
                }
                if let Some(f) = fs.iter().find(|f| !self.firmware.contains(f)) {
                    bail!("{at}.firmware: {} is not among the file's firmwares", f.name());
                }
            }
            if let Some(xs) = &b.arch {
                if xs.is_empty() {
                    bail!("{at}.arch: name at least one architecture, or leave it out");
                }
                if let Some(a) = xs.iter().find(|a| !self.arch.contains(a)) {
                    bail!("{at}.arch: {a} is not among the file's architectures");
                }
            }
            // Every architecture the boot runs on has one of its firmwares:
            // a BIOS-only boot names the architectures it runs on.
            for a in self.arch.iter().filter(|a| b.runs_on_arch(**a)) {
                if b.firmware_on.get(a).is_none_or(|fs| fs.is_empty()) {
                    let fs = match &b.firmware {
                        Some(BootFirmware::List(l)) => l.as_slice(),
                        _ => &self.firmware,
                    };
                    bail!(
                        "{at}: runs on {a}, which has none of its firmwares ({}): give \"arch\" without {a}, or a firmware {a} has",
                        names(fs)
                    );
                }
            }
            for (p, body) in &b.serve {
                let Some(md) = &self.metadata else {
                    bail!("{at}.serve: there is no metadata service to serve {p:?}");
                };
                if !p.starts_with('/') || md.paths.contains_key(p) {
                    bail!("{at}.serve {p:?}: must be an absolute path the file's metadata.paths does not serve");
                }
                if body.userdata {
                    bail!("{at}.serve {p:?}: user-data is served by metadata.paths");
                }
            }
            let mut forwarded = BTreeSet::new();
            check_nics(&self.nics, "nics", self.metadata.is_some(), &mut forwarded)?;
            check_nics(
                &b.extra_nics,
                &format!("{at}.extra_nics"),
                self.metadata.is_some(),
                &mut forwarded,
            )?;
            check_disks(&b.extra_disks, &format!("{at}.extra_disks"))?;
            if b.extra_disks.iter().any(|d| d.source == DiskSource::Image) {
                bail!("{at}.extra_disks: the image is one of the file's disks, not an extra one");
            }
            check_disks(&b.hotplug_disks, &format!("{at}.hotplug_disks"))?;
            for (j, d) in b.hotplug_disks.iter().enumerate() {
                if d.source == DiskSource::Image || d.device != DiskDevice::ScsiHd {
                    bail!("{at}.hotplug_disks[{j}]: a hot-plugged disk is a blank or ext4 scsi-hd");
                }
            }
            let macs: Vec<String> =
                self.nics.iter().chain(&b.extra_nics).map(|n| n.mac.to_lowercase()).collect();
            if let Some(m) =
                macs.iter().enumerate().find_map(|(k, m)| macs[..k].contains(m).then_some(m))
            {
                bail!("{at}: two NICs have the MAC address {m}");
            }
            let bodies = self.metadata.iter().flat_map(|m| m.paths.iter()).chain(b.serve.iter());
            for (p, body) in bodies {
                if let Some(a) = &body.artifact {
                    if !self.artifacts.contains_key(a) {
                        bail!(
                            "{at}: path {p:?} serves the artifact {a:?}, which `artifacts` does not declare"
                        );
                    }
                }
            }
            if b.disk == BootDisk::Previous {
                if i == 0 {
                    bail!("{at}.disk: \"previous\", but the first boot has no previous disk");
                }
                if b.mutation.is_some() {
                    bail!("{at}: a boot of the previous disk takes no mutation");
                }
                if self.boots[i - 1].negative && !b.negative {
                    bail!("{at}.disk: \"previous\" follows a negative boot, which --no-negative skips; mark this boot negative too or reorder");
                }
                let before = &self.boots[i - 1];
                let runs = self.runs();
                if let Some(a) = self.arch.iter().find(|a| {
                    runs.iter().any(|(x, f)| x == *a && b.runs_on(*x, *f))
                        && !runs.iter().any(|(x, f)| x == *a && before.runs_on(*x, *f))
                }) {
                    bail!(
                        "{at}.arch: \"previous\" boots on {a}, which '{}' does not",
                        before.variant
                    );
                }
                if let Some((a, f)) =
                    runs.iter().find(|(a, f)| b.runs_on(*a, *f) && !before.runs_on(*a, *f))
                {
                    bail!(
                        "{at}.firmware: \"previous\" boots with {} on {a}, which '{}' does not",
                        f.name(),
                        before.variant
                    );
                }
            }
            // Every template renders and every pattern compiles, with stand-in
            // values (the file's first run: templates do not depend on it).
            let (arch, firmware) = self.runs()[0];
            let ctx = self
                .context(
                    arch,
                    firmware,
                    "probe",
                    b,
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIstandin forge-boot-test",
                )
                .map_err(|e| anyhow!("{at}: {e:#}"))?;
            if let Some(md) = &self.metadata {
                for (p, body) in &md.paths {
                    render(&body.body, &ctx).map_err(|e| anyhow!("metadata.paths {p:?}: {e}"))?;
                }
            }
            for (p, body) in &b.serve {
                render(&body.body, &ctx).map_err(|e| anyhow!("{at}.serve {p:?}: {e}"))?;
            }
            for (j, f) in self.fw_cfg.iter().enumerate() {
                if let Some(c) = &f.content {
                    render(c, &ctx).map_err(|e| anyhow!("fw_cfg[{j}].content: {e}"))?;
                }
            }
            for (j, c) in b.checks.iter().enumerate() {
                c.validate(&ctx, &forwarded, b)
                    .map_err(|e| anyhow!("{at}.checks[{j}] ({}): {e}", c.name))?;
            }
        }
        Ok(())
    }

    /// Template variables for one boot.
    pub fn context(
        &self,
        arch: Arch,
        firmware: Firmware,
        platform: &str,
        boot: &Boot,
        ssh_public_key: &str,
    ) -> Result<minijinja::Value> {
        let key = ssh_public_key.trim();
        let mut base = serde_json::json!({
            "platform": platform,
            "arch": arch.name(),
            "firmware": firmware.name(),
            "variant": boot.variant,
            "disk_bytes": self.machine_for(arch).disk_bytes,
            "disk_gib": self.machine_for(arch).disk_bytes >> 30,
            "ssh_public_key": key,
            "ssh_public_key_body": key.split_whitespace().nth(1).unwrap_or(""),
            "metadata": self.metadata.as_ref().map(|m| m.values.clone()).unwrap_or_default(),
        });
        let rendered = boot
            .resolved_userdata
            .render(&minijinja::Value::from(minijinja::value::Serde(&base)))
            .map_err(|e| anyhow!("userdata: {e}"))?;
        base["userdata_absent"] = serde_json::Value::Bool(rendered.is_none());
        base["userdata"] = serde_json::Value::String(rendered.unwrap_or_default());
        Ok(minijinja::Value::from(minijinja::value::Serde(&base)))
    }

    /// The metadata service's paths for one boot, rendered.
    pub fn served(&self, ctx: &minijinja::Value, boot: &Boot) -> Result<BTreeMap<String, Body>> {
        let mut out = BTreeMap::new();
        if let Some(md) = &self.metadata {
            for (p, b) in md.paths.iter().chain(boot.serve.iter()) {
                let body = if b.userdata {
                    match ctx_userdata(ctx) {
                        Some(u) => u,
                        None => continue,
                    }
                } else {
                    render(&b.body, ctx).map_err(|e| {
                        anyhow!("{}: metadata.paths {p:?}: {e}", self.file.display())
                    })?
                };
                out.insert(
                    p.clone(),
                    Body {
                        content_type: b.content_type.clone(),
                        body,
                        userdata: false,
                        artifact: b.artifact.clone(),
                    },
                );
            }
        }
        Ok(out)
    }

    /// The artifacts the boots of runs on `arch` with these firmwares serve
    /// (negative boots only with `negative`): what the caller must build,
    /// for that architecture (an extension is built against the payload of
    /// the image it is served to).
    pub fn artifacts_for(
        &self,
        arch: Arch,
        firmwares: &[Firmware],
        negative: bool,
    ) -> BTreeSet<String> {
        let top = self.metadata.iter().flat_map(|m| m.paths.values());
        let mut out: BTreeSet<String> = BTreeSet::new();
        for b in &self.boots {
            if (negative || !b.negative) && firmwares.iter().any(|f| b.runs_on(arch, *f)) {
                let bodies = top.clone().chain(b.serve.values());
                out.extend(bodies.filter_map(|body| body.artifact.clone()));
            }
        }
        out
    }

    /// [`BootTest::artifacts_for`] every architecture of the file, together.
    /// (The tests' view across architectures.)
    #[cfg(test)]
    pub fn artifacts_needed(&self, firmwares: &[Firmware], negative: bool) -> BTreeSet<String> {
        self.arch.iter().flat_map(|a| self.artifacts_for(*a, firmwares, negative)).collect()
    }

    /// The file as boot `b` sees it: the file's NICs and disks followed by
    /// the boot's `extra_nics` and `extra_disks`.
    pub fn for_boot(&self, b: &Boot) -> BootTest {
        let mut t = self.clone();
        t.nics.extend(b.extra_nics.iter().cloned());
        t.disks.extend(b.extra_disks.iter().cloned());
        t
    }

    /// The guest port → NIC index map of `hostfwd`s.
    pub fn forwarded_ports(&self) -> BTreeMap<u16, usize> {
        let mut m = BTreeMap::new();
        for (i, n) in self.nics.iter().enumerate() {
            for p in &n.hostfwd {
                m.insert(*p, i);
            }
        }
        m
    }
}

/// The boot's rendered user-data from its context (None: absent).
fn ctx_userdata(ctx: &minijinja::Value) -> Option<String> {
    if ctx.get_attr("userdata_absent").map(|v| v.is_true()).unwrap_or(false) {
        return None;
    }
    ctx.get_attr("userdata").ok().and_then(|v| v.as_str().map(str::to_string))
}

/// Renders one template; undefined variables are errors.
pub fn render(template: &str, ctx: &minijinja::Value) -> Result<String> {
    if !template.contains("{{") && !template.contains("{%") && !template.contains("{#") {
        return Ok(template.to_string());
    }
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .map_err(|e| anyhow!("template syntax: {e}"))?,
    );
    env.render_str(template, ctx).map_err(|e| anyhow!("template {template:?}: {e}"))
}

impl Check {
    fn validate(
        &self,
        ctx: &minijinja::Value,
        forwarded: &BTreeSet<u16>,
        boot: &Boot,
    ) -> Result<()> {
        render(&self.name, ctx)?;
        if self.conds.is_empty() {
            bail!("no condition");
        }
        for c in &self.conds {
            c.validate(ctx, forwarded, boot)?;
        }
        Ok(())
    }
}

impl Cond {
    fn validate(
        &self,
        ctx: &minijinja::Value,
        forwarded: &BTreeSet<u16>,
        boot: &Boot,
    ) -> Result<()> {
        let sources = [self.report_key.is_some(), self.observe.is_some(), self.probe.is_some()];
        if sources.iter().filter(|s| **s).count() != 1 {
            bail!("give exactly one of report_key, observe and probe");
        }
        let judged_by_probe = matches!(self.probe, Some(Probe::RootGrown { .. }));
        if !judged_by_probe && !self.has_operator() {
            bail!("give at least one of equals, contains, not_contains, matches, word");
        }
        if judged_by_probe && self.has_operator() {
            bail!("probe root_grown judges by itself; it takes no operators");
        }
        match &self.probe {
            Some(Probe::Http { guest_port, .. }) | Some(Probe::Ssh { guest_port, .. })
                if !forwarded.contains(guest_port) =>
            {
                bail!("probe uses guest port {guest_port}, which no NIC forwards (hostfwd)")
            }
            Some(Probe::GuestAgent { execute, arguments }) => {
                if !boot.guest_agent {
                    bail!("probe guest_agent needs the boot's \"guest_agent\": true");
                }
                if execute.is_empty()
                    || !execute.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
                {
                    bail!(
                        "probe guest_agent: execute {execute:?} is not a guest agent command name"
                    );
                }
                if arguments.as_ref().is_some_and(|a| !a.is_object()) {
                    bail!("probe guest_agent: arguments must be an object");
                }
            }
            Some(Probe::Hotplug { disk }) if *disk >= boot.hotplug_disks.len() => {
                bail!(
                    "probe hotplug: disk {disk}, but the boot has {} hotplug_disks",
                    boot.hotplug_disks.len()
                )
            }
            _ => {}
        }
        for t in self.templates() {
            render(t, ctx)?;
        }
        for m in self.matches.iter().flat_map(|m| m.iter()) {
            regex::Regex::new(&render(m, ctx)?).map_err(|e| anyhow!("matches {m:?}: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO_OEM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../oem");

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "arch": ["x86-64"],
            "firmware": ["bios"],
            "machine": { "memory_mib": 1024, "disk_bytes": 1073741824u64 },
            "metadata": {
                "listen": "169.254.169.254:80",
                "values": { "hostname": "h1" },
                "paths": {
                    "/hostname": "{{metadata.hostname}}",
                    "/keys": { "content_type": "application/json", "body": "[\"{{ssh_public_key}}\"]" },
                    "/user-data": "{{userdata}}"
                }
            },
            "userdata": "default for {{metadata.hostname}}",
            "nics": [{ "mac": "52:54:00:12:34:56", "metadata": true, "hostfwd": [22] }],
            "disks": [{ "source": "image", "device": "scsi-hd" }],
            "boots": [
                {
                    "variant": "one",
                    "until": ["END"],
                    "checks": [{ "name": "h", "report_key": "hostname", "equals": "{{metadata.hostname}}" }]
                },
                {
                    "variant": "two",
                    "userdata": "custom",
                    "until": ["END"],
                    "checks": [{ "name": "ssh", "probe": { "ssh": { "user": "core", "command": "true" } }, "equals": "" }]
                }
            ]
        })
    }

    fn parse_value(v: &serde_json::Value) -> Result<BootTest> {
        parse(&serde_json::to_string_pretty(v).unwrap(), Path::new("oem/x/boot-test.json"))
    }

    /// The error for `v` with one edit applied; it must name the file.
    fn error_after(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut v = minimal();
        edit(&mut v);
        let e = format!("{:#}", parse_value(&v).unwrap_err());
        assert!(e.starts_with("oem/x/boot-test.json: "), "{e}");
        e
    }

    #[test]
    fn selecting_boots_by_variant() {
        let t = || load_for(Path::new(REPO_OEM), "hetzner").unwrap().unwrap();
        let names = |t: &BootTest| t.boots.iter().map(|b| b.variant.clone()).collect::<Vec<_>>();
        assert_eq!(names(&t().select(&[]).unwrap()), names(&t()));
        let s = t().select(&["cloud-config".into(), "as-built".into()]).unwrap();
        assert_eq!(names(&s), ["as-built", "cloud-config"], "in the file's order");
        let s = t().select(&["as-built".into(), "second-boot".into()]).unwrap();
        assert_eq!(names(&s), ["as-built", "second-boot"]);
        let e = t().select(&["second-boot".into()]).unwrap_err().to_string();
        assert!(e.contains("'second-boot' boots the disk 'as-built' leaves behind"), "{e}");
        let e = t().select(&["as-bulit".into()]).unwrap_err().to_string();
        assert!(
            e.starts_with("no boot named 'as-bulit'") && e.contains("as-built, second-boot"),
            "{e}"
        );
    }

    #[test]
    fn the_repository_files_load() {
        let t = load_for(Path::new(REPO_OEM), "hetzner").unwrap().expect("hetzner has a boot test");
        assert_eq!(t.firmware, vec![Firmware::Bios, Firmware::Uefi]);
        assert_eq!(t.machine.disk_bytes, 20 << 30);
        assert_eq!(t.boots.iter().filter(|b| b.negative).count(), 3);
        let variants: Vec<&str> = t.boots.iter().map(|b| b.variant.as_str()).collect();
        assert_eq!(
            variants,
            [
                "as-built",
                "second-boot",
                "hetzner-extras",
                "containers",
                "no-docker",
                "no-userdata",
                "empty-userdata",
                "cloud-config",
                "bad-ignition",
                "no-oem-grub-cfg",
                "bad-usr-a"
            ]
        );
        assert_eq!(t.boots[1].disk, BootDisk::Previous);
        assert_eq!(t.boots[5].resolved_userdata, UserData::Absent);
        assert_eq!(t.boots[6].resolved_userdata, UserData::Template(String::new()));
        // The extras boot: a private NIC, a volume with ext4 and a blank one, the guest agent.
        let extras = t.for_boot(&t.boots[2]);
        assert_eq!(extras.nics.len(), 2);
        assert!(extras.nics[1].mac.starts_with("86:00:00:"));
        let volumes: Vec<_> =
            extras.disks.iter().filter(|d| d.vendor.as_deref() == Some("HC")).collect();
        assert_eq!(volumes.len(), 2);
        assert!(matches!(volumes[0].source, DiskSource::Ext4 { .. }));
        assert!(t.boots[2].guest_agent);
        assert_eq!(t.boots[2].hotplug_disks.len(), 1);
        // The image as built with both firmwares, the rest with BIOS (the
        // second boot once per architecture: amd64 BIOS, arm64 UEFI).
        let uefi: Vec<&str> =
            plan(&t, true, Firmware::Uefi).iter().map(|s| s.boot.variant.as_str()).collect();
        assert_eq!(uefi, ["as-built"]);
        let arm: Vec<&str> = plan_arch(&t, true, Arch::Arm64, Firmware::Uefi)
            .iter()
            .map(|s| s.boot.variant.as_str())
            .collect();
        assert_eq!(
            arm,
            ["as-built", "second-boot", "bad-ignition", "no-oem-grub-cfg", "bad-usr-a"]
        );
        assert_eq!(plan(&t, true, Firmware::Bios).len(), 11);
        let needed = t.artifacts_needed(&[Firmware::Bios], false);
        assert_eq!(needed.into_iter().collect::<Vec<_>>(), ["hello-ext", "nginx-rootfs"]);
        assert!(t.artifacts_needed(&[Firmware::Uefi], true).is_empty());
        let q = load_for(Path::new(REPO_OEM), "qemu").unwrap().expect("qemu has a boot test");
        assert!(q.metadata.is_none());
        assert_eq!(q.fw_cfg.len(), 1);
        assert!(q.fw_cfg[0].userdata && q.fw_cfg[0].content.is_none());
        assert!(
            matches!(&q.boots[0].resolved_userdata, UserData::File { path, .. } if path.ends_with("examples/qemu/ssh-key.ign"))
        );
    }

    #[test]
    fn qemu_carries_the_example_config_with_the_key_in_fw_cfg() {
        let t = load_for(Path::new(REPO_OEM), "qemu").unwrap().unwrap();
        let key = "ssh-ed25519 AAAAtestkey forge-boot-test";
        let ctx = t.context(Arch::Amd64, Firmware::Uefi, "qemu", &t.boots[0], key).unwrap();
        assert!(t.served(&ctx, &t.boots[0]).unwrap().is_empty());
        let tmp = tempfile::tempdir().unwrap();
        let files = t.fw_cfg_files(&ctx, tmp.path()).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, "opt/org.flatcar-linux/config");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&files[0].1).unwrap()).unwrap();
        assert_eq!(config["ignition"]["version"], "3.3.0");
        assert_eq!(config["passwd"]["users"][0]["name"], "core");
        assert_eq!(config["passwd"]["users"][0]["sshAuthorizedKeys"][0], key);
    }

    #[test]
    fn hetzner_serves_the_reference_paths_with_the_key() {
        let t = load_for(Path::new(REPO_OEM), "hetzner").unwrap().unwrap();
        let key = "ssh-ed25519 AAAAtestkey forge-boot-test\n";
        let ctx = t.context(Arch::Amd64, Firmware::Bios, "hetzner", &t.boots[0], key).unwrap();
        let s = t.served(&ctx, &t.boots[0]).unwrap();
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
            assert!(s.contains_key(p), "{p}");
        }
        assert_eq!(s["/hetzner/v1/metadata/hostname"].body, "forge-boot-test");
        assert_eq!(s["/hetzner/v1/metadata/instance-id"].body, "4200042");
        let keys: Vec<String> =
            serde_json::from_str(&s["/hetzner/v1/metadata/public-keys"].body).unwrap();
        assert_eq!(keys, vec!["ssh-ed25519 AAAAtestkey forge-boot-test".to_string()]);
        let md = &s["/hetzner/v1/metadata"];
        assert_eq!(md.content_type, "application/yaml");
        assert!(md.body.contains("\npublic-keys:\n- ssh-ed25519 AAAAtestkey forge-boot-test\n"));
        assert!(md.body.contains("\n    - address: 2001:db8:1234::1/64\n"), "{}", md.body);
        assert!(md.body.ends_with("vendor_data: |\n  #cloud-config\n"));
        // The example config, its placeholder key (twice) replaced by the test key.
        let ud = &s["/hetzner/v1/userdata"].body;
        assert!(!ud.contains("REPLACE-WITH"), "{ud}");
        assert_eq!(ud.matches("ssh-ed25519 AAAAtestkey forge-boot-test").count(), 2, "{ud}");
        let config: serde_json::Value = serde_json::from_str(ud).unwrap();
        assert_eq!(config["ignition"]["version"], "3.3.0");
        // No user-data: the path is not served (404); empty: served empty.
        let by = |v: &str| t.boots.iter().find(|b| b.variant == v).unwrap();
        let none = t.context(Arch::Amd64, Firmware::Bios, "hetzner", by("no-userdata"), key);
        let none = t.served(&none.unwrap(), by("no-userdata")).unwrap();
        assert!(!none.contains_key("/hetzner/v1/userdata"));
        assert!(none.contains_key("/hetzner/v1/metadata/hostname"));
        let empty = t.context(Arch::Amd64, Firmware::Bios, "hetzner", by("empty-userdata"), key);
        assert_eq!(
            t.served(&empty.unwrap(), by("empty-userdata")).unwrap()["/hetzner/v1/userdata"].body,
            ""
        );
        let cc = t.context(Arch::Amd64, Firmware::Bios, "hetzner", by("cloud-config"), key);
        assert!(t.served(&cc.unwrap(), by("cloud-config")).unwrap()["/hetzner/v1/userdata"]
            .body
            .starts_with("#cloud-config\n"));
    }

    #[test]
    fn userdata_is_per_boot_and_rendered() {
        let t = parse_value(&minimal()).unwrap();
        let key = "ssh-ed25519 AAAAk c";
        let one = t.context(Arch::Amd64, Firmware::Bios, "x", &t.boots[0], key).unwrap();
        let two = t.context(Arch::Amd64, Firmware::Bios, "x", &t.boots[1], key).unwrap();
        assert_eq!(t.served(&one, &t.boots[0]).unwrap()["/user-data"].body, "default for h1");
        assert_eq!(t.served(&two, &t.boots[1]).unwrap()["/user-data"].body, "custom");
        assert_eq!(t.served(&one, &t.boots[0]).unwrap()["/keys"].body, "[\"ssh-ed25519 AAAAk c\"]");
        assert_eq!(t.nics[0].model, "virtio-net-pci");
        assert_eq!(t.machine.cpus, 1);
    }

    /// A repository in a temporary directory: `oem/x/boot-test.json` (the
    /// minimal file with `edit` applied) and `ud/config.ign`.
    fn in_repo(
        config: &str,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> (tempfile::TempDir, Result<BootTest>) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("oem/x")).unwrap();
        std::fs::create_dir_all(tmp.path().join("ud")).unwrap();
        std::fs::write(tmp.path().join("ud/config.ign"), config).unwrap();
        let mut v = minimal();
        edit(&mut v);
        let f = tmp.path().join("oem/x/boot-test.json");
        std::fs::write(&f, serde_json::to_string(&v).unwrap()).unwrap();
        let t = load(&f);
        (tmp, t)
    }

    const CONFIG: &str = "{\"keys\": [\"PLACEHOLDER\", \"PLACEHOLDER\"], \"unit\": \"x={{ not a template }} ${HOST}\"}\n";

    #[test]
    fn userdata_files_are_served_verbatim_but_for_their_substitutions() {
        let (_tmp, t) = in_repo(CONFIG, |v| {
            v.as_object_mut().unwrap().remove("userdata");
            v["userdata_file"] = "ud/config.ign".into();
            v["userdata_substitute"] =
                serde_json::json!({"PLACEHOLDER": "{{ssh_public_key}} on {{metadata.hostname}}"});
        });
        let t = t.unwrap();
        let key = "ssh-ed25519 AAAAk c";
        let one = t.context(Arch::Amd64, Firmware::Bios, "x", &t.boots[0], key).unwrap();
        assert_eq!(
            t.served(&one, &t.boots[0]).unwrap()["/user-data"].body,
            "{\"keys\": [\"ssh-ed25519 AAAAk c on h1\", \"ssh-ed25519 AAAAk c on h1\"], \"unit\": \"x={{ not a template }} ${HOST}\"}\n"
        );
        // The boot's own inline user-data wins over the file.
        let two = t.context(Arch::Amd64, Firmware::Bios, "x", &t.boots[1], key).unwrap();
        assert_eq!(t.served(&two, &t.boots[1]).unwrap()["/user-data"].body, "custom");
    }

    #[test]
    fn a_substitution_that_does_not_occur_names_the_file() {
        let (tmp, t) = in_repo(CONFIG, |v| {
            v["boots"][1].as_object_mut().unwrap().remove("userdata");
            v["boots"][1]["userdata_file"] = "ud/config.ign".into();
            v["boots"][1]["userdata_substitute"] =
                serde_json::json!({"PLACEHOLDER": "k", "ssh-rsa AAAA you@example": "k"});
        });
        let e = format!("{:#}", t.unwrap_err());
        let f = tmp.path().join("oem/x/boot-test.json");
        let ud = tmp.path().join("ud/config.ign");
        assert!(e.starts_with(&format!("{}: ", f.display())), "{e}");
        assert!(
            e.contains(&format!(
                "boots[1] (two).userdata_substitute: {}: does not contain \"ssh-rsa AAAA you@example\"",
                ud.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn absent_userdata_is_a_404_and_no_fw_cfg_entry() {
        let mut v = minimal();
        v["boots"][1].as_object_mut().unwrap().remove("userdata");
        v["boots"][1]["userdata_absent"] = true.into();
        v["metadata"]["paths"]["/user-data"] = serde_json::json!({"userdata": true});
        v["metadata"]["paths"]["/typed"] =
            serde_json::json!({"userdata": true, "content_type": "application/json"});
        v["fw_cfg"] = serde_json::json!([
            {"name": "opt/org.flatcar-linux/config", "userdata": true},
            {"name": "opt/forge/variant", "content": "{{variant}} absent={{userdata_absent}}"}
        ]);
        let t = parse_value(&v).unwrap();
        let key = "ssh-ed25519 AAAAk c";
        let tmp = tempfile::tempdir().unwrap();
        let one = t.context(Arch::Amd64, Firmware::Bios, "x", &t.boots[0], key).unwrap();
        let s = t.served(&one, &t.boots[0]).unwrap();
        assert_eq!(s["/user-data"].body, "default for h1");
        assert_eq!(s["/user-data"].content_type, "text/plain");
        assert_eq!(s["/typed"].content_type, "application/json");
        let files = t.fw_cfg_files(&one, tmp.path()).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["opt/org.flatcar-linux/config", "opt/forge/variant"]);
        assert_eq!(std::fs::read_to_string(&files[0].1).unwrap(), "default for h1");
        assert_eq!(std::fs::read_to_string(&files[1].1).unwrap(), "one absent=False");

        let two = t.context(Arch::Amd64, Firmware::Bios, "x", &t.boots[1], key).unwrap();
        let s = t.served(&two, &t.boots[1]).unwrap();
        assert!(!s.contains_key("/user-data") && !s.contains_key("/typed"));
        assert!(s.contains_key("/hostname"));
        let files = t.fw_cfg_files(&two, tmp.path()).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, "opt/forge/variant");
        assert_eq!(std::fs::read_to_string(&files[0].1).unwrap(), "two absent=True");
    }

    #[test]
    fn the_disk_plan_chains_previous_boots() {
        let mut v = minimal();
        let boot = |name: &str| serde_json::json!({"variant": name, "until": ["END"], "checks": [{"name": "s", "observe": "serial", "contains": "x"}]});
        let mut boots = vec![boot("a"), boot("b"), boot("c"), boot("d"), boot("e"), boot("f")];
        boots[1]["disk"] = "previous".into();
        boots[2]["disk"] = "previous".into();
        boots[3]["negative"] = true.into();
        boots[3]["mutation"] = serde_json::json!({"flip_byte": {"partition": "USR-A"}});
        boots[4]["negative"] = true.into();
        boots[4]["disk"] = "previous".into();
        v["boots"] = boots.into();
        let t = parse_value(&v).unwrap();
        let all: Vec<(&str, DiskUse, bool)> = plan(&t, true, Firmware::Bios)
            .into_iter()
            .map(|s| (s.boot.variant.as_str(), s.disk, s.hand_on))
            .collect();
        let flip = DiskUse::Mutated(Mutation::FlipByte { partition: "USR-A".into() });
        assert_eq!(
            all,
            [
                ("a", DiskUse::Fresh, true),
                ("b", DiskUse::Previous, true),
                ("c", DiskUse::Previous, false),
                ("d", flip, true),
                ("e", DiskUse::Previous, false),
                ("f", DiskUse::Fresh, false)
            ]
        );
        let positive: Vec<(&str, DiskUse, bool)> = plan(&t, false, Firmware::Bios)
            .into_iter()
            .map(|s| (s.boot.variant.as_str(), s.disk, s.hand_on))
            .collect();
        assert_eq!(
            positive,
            [
                ("a", DiskUse::Fresh, true),
                ("b", DiskUse::Previous, true),
                ("c", DiskUse::Previous, false),
                ("f", DiskUse::Fresh, false)
            ]
        );
    }

    #[test]
    fn boots_may_run_with_some_firmwares_only_and_serve_artifacts() {
        let mut v = minimal();
        v["firmware"] = serde_json::json!(["bios", "uefi"]);
        let boot = |name: &str| serde_json::json!({"variant": name, "until": ["END"], "checks": [{"name": "s", "observe": "serial", "contains": "x"}]});
        let mut boots = vec![boot("a"), boot("b"), boot("c"), boot("d")];
        boots[1]["disk"] = "previous".into();
        boots[2]["firmware"] = serde_json::json!(["bios"]);
        boots[2]["serve"] = serde_json::json!({"/files/ext.raw": {"artifact": "ext"}});
        boots[3]["firmware"] = serde_json::json!(["bios"]);
        boots[3]["negative"] = true.into();
        boots[3]["serve"] = serde_json::json!({"/files/rootfs.tar": {"artifact": "rootfs"}});
        v["boots"] = boots.clone().into();
        // Folders relative to the repository root: the crate's own folder stands in.
        v["artifacts"] =
            serde_json::json!({"ext": {"sysext": "src"}, "rootfs": {"rootfs_tar": "src"}});
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("oem/x/boot-test.json");
        let parse = |v: &serde_json::Value| parse(&serde_json::to_string(v).unwrap(), &file);
        let t = parse(&v).unwrap();
        let names = |f: Firmware, negative: bool| -> Vec<String> {
            plan(&t, negative, f).iter().map(|s| s.boot.variant.clone()).collect()
        };
        assert_eq!(names(Firmware::Bios, true), ["a", "b", "c", "d"]);
        assert_eq!(names(Firmware::Uefi, true), ["a", "b"]);
        assert!(!plan(&t, true, Firmware::Uefi)[1].hand_on);
        let set = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
        assert_eq!(t.artifacts_needed(&[Firmware::Uefi], true), set(&[]));
        assert_eq!(t.artifacts_needed(&[Firmware::Bios], false), set(&["ext"]));
        assert_eq!(
            t.artifacts_needed(&[Firmware::Uefi, Firmware::Bios], true),
            set(&["ext", "rootfs"])
        );
        assert_eq!(t.artifacts["rootfs"], Artifact::RootfsTar("src".into()));
        // Served: the boot's own paths next to the file's, the artifact as a body naming it.
        let key = "ssh-ed25519 AAAAk c";
        let ctx = t.context(Arch::Amd64, Firmware::Bios, "x", &t.boots[2], key).unwrap();
        let s = t.served(&ctx, &t.boots[2]).unwrap();
        assert_eq!(s["/files/ext.raw"].artifact.as_deref(), Some("ext"));
        assert_eq!(s["/files/ext.raw"].content_type, "application/octet-stream");
        assert!(s.contains_key("/hostname"));
        let ctx = t.context(Arch::Amd64, Firmware::Bios, "x", &t.boots[0], key).unwrap();
        assert!(!t.served(&ctx, &t.boots[0]).unwrap().contains_key("/files/ext.raw"));
        // A boot of the previous disk cannot run with a firmware its predecessor does not.
        let mut bad = v.clone();
        bad["boots"][0]["firmware"] = serde_json::json!(["bios"]);
        let e = format!("{:#}", parse(&bad).unwrap_err());
        assert!(
            e.contains(
                "boots[1] (b).firmware: \"previous\" boots with uefi on amd64, which 'a' does not"
            ),
            "{e}"
        );
        bad["boots"][1]["firmware"] = serde_json::json!(["bios"]);
        parse(&bad).unwrap();
    }

    /// The minimal file on amd64 and arm64 (named as systemd and the GNU
    /// triplet do), BIOS and UEFI, arm64's machine larger and slower.
    fn two_arches() -> serde_json::Value {
        let mut v = minimal();
        v["arch"] = serde_json::json!(["x86-64", "aarch64"]);
        v["firmware"] = serde_json::json!(["bios", "uefi"]);
        v["machine"]["cpus"] = 2.into();
        v["machine_arch"] = serde_json::json!({
            "arm64": { "disk_bytes": 42949672960u64, "memory_mib": 3072, "timeout_seconds": 1500 }
        });
        v
    }

    #[test]
    fn a_boot_with_one_firmware_takes_each_archs_first() {
        let mut v = two_arches();
        let b = v["boots"][0].clone();
        let mut one = b.clone();
        one["variant"] = "once".into();
        one["firmware"] = "one".into();
        v["boots"] = serde_json::json!([b, one]);
        let t = parse_value(&v).unwrap();
        let one = &t.boots[1];
        assert_eq!(one.firmware_on[&Arch::Amd64], [Firmware::Bios]);
        assert_eq!(one.firmware_on[&Arch::Arm64], [Firmware::Uefi]);
        let names = |a, f| -> Vec<String> {
            plan_arch(&t, true, a, f).iter().map(|s| s.boot.variant.clone()).collect()
        };
        assert_eq!(names(Arch::Amd64, Firmware::Bios), [t.boots[0].variant.clone(), "once".into()]);
        assert_eq!(names(Arch::Amd64, Firmware::Uefi), [t.boots[0].variant.clone()]);
        assert_eq!(names(Arch::Arm64, Firmware::Uefi), [t.boots[0].variant.clone(), "once".into()]);
        // Anything else than a list or "one" is an error naming the place.
        v["boots"][1]["firmware"] = "two".into();
        let e = format!("{:#}", parse_value(&v).unwrap_err());
        assert!(e.contains("boots[1].firmware"), "{e}");
    }

    #[test]
    fn each_arch_boots_the_firmwares_it_has_on_its_own_machine() {
        let t = parse_value(&two_arches()).unwrap();
        assert_eq!(t.arch, [Arch::Amd64, Arch::Arm64]);
        assert_eq!(t.firmwares(Arch::Amd64), [Firmware::Bios, Firmware::Uefi]);
        assert_eq!(t.firmwares(Arch::Arm64), [Firmware::Uefi]);
        assert_eq!(
            t.runs(),
            [
                (Arch::Amd64, Firmware::Bios),
                (Arch::Amd64, Firmware::Uefi),
                (Arch::Arm64, Firmware::Uefi)
            ]
        );
        let amd = t.machine_for(Arch::Amd64);
        assert_eq!(
            (amd.memory_mib, amd.cpus, amd.disk_bytes, amd.timeout_seconds),
            (1024, 2, 1 << 30, 900)
        );
        let arm = t.machine_for(Arch::Arm64);
        assert_eq!(
            (arm.memory_mib, arm.cpus, arm.disk_bytes, arm.timeout_seconds),
            (3072, 2, 40 << 30, 1500),
            "set fields from machine_arch, the rest (cpus) from machine"
        );
        // Templates see the architecture's name and disk.
        let key = "ssh-ed25519 AAAAk c";
        let ctx = t.context(Arch::Arm64, Firmware::Uefi, "x", &t.boots[0], key).unwrap();
        assert_eq!(render("{{arch}} {{disk_gib}} {{firmware}}", &ctx).unwrap(), "arm64 40 uefi");
        let ctx = t.context(Arch::Amd64, Firmware::Bios, "x", &t.boots[0], key).unwrap();
        assert_eq!(render("{{arch}} {{disk_gib}} {{firmware}}", &ctx).unwrap(), "amd64 1 bios");
        // Any of an architecture's names, one machine_arch key only.
        let mut v = two_arches();
        v["arch"] = serde_json::json!(["amd64", "arm64"]);
        v["machine_arch"] = serde_json::json!({"aarch64": {"cpus": 1}});
        let t = parse_value(&v).unwrap();
        assert_eq!(t.machine_for(Arch::Arm64).cpus, 1);
        assert_eq!(t.machine_for(Arch::Arm64).disk_bytes, 1 << 30);
        assert_eq!(t.machine_for(Arch::Amd64).cpus, 2);
        // The file's firmwares arm64 lacks are left out; UEFI only is UEFI only.
        let mut v = two_arches();
        v["firmware"] = serde_json::json!(["uefi"]);
        let t = parse_value(&v).unwrap();
        assert_eq!(t.runs(), [(Arch::Amd64, Firmware::Uefi), (Arch::Arm64, Firmware::Uefi)]);
    }

    #[test]
    fn boots_may_run_on_some_arches_only() {
        let mut v = two_arches();
        let boot = |name: &str| serde_json::json!({"variant": name, "until": ["END"], "checks": [{"name": "s", "observe": "serial", "contains": "x"}]});
        let mut boots = vec![boot("a"), boot("b"), boot("c"), boot("d"), boot("e")];
        boots[1]["disk"] = "previous".into();
        // What does not depend on the architecture: x86 only, BIOS only.
        boots[2]["arch"] = serde_json::json!(["amd64"]);
        boots[2]["firmware"] = serde_json::json!(["bios"]);
        boots[2]["serve"] = serde_json::json!({"/ext.raw": {"artifact": "ext"}});
        boots[3]["arch"] = serde_json::json!(["arm64"]);
        boots[3]["serve"] = serde_json::json!({"/rootfs.tar": {"artifact": "rootfs"}});
        boots[4]["arch"] = serde_json::json!(["x86-64"]);
        boots[4]["negative"] = true.into();
        v["boots"] = boots.into();
        v["artifacts"] =
            serde_json::json!({"ext": {"sysext": "src"}, "rootfs": {"rootfs_tar": "src"}});
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("oem/x/boot-test.json");
        let parse = |v: &serde_json::Value| parse(&serde_json::to_string(v).unwrap(), &file);
        let t = parse(&v).unwrap();
        let names = |a: Arch, f: Firmware, negative: bool| -> Vec<String> {
            plan_arch(&t, negative, a, f).iter().map(|s| s.boot.variant.clone()).collect()
        };
        assert_eq!(names(Arch::Amd64, Firmware::Bios, true), ["a", "b", "c", "e"]);
        assert_eq!(names(Arch::Amd64, Firmware::Bios, false), ["a", "b", "c"]);
        assert_eq!(names(Arch::Amd64, Firmware::Uefi, true), ["a", "b", "e"]);
        assert_eq!(names(Arch::Arm64, Firmware::Uefi, true), ["a", "b", "d"]);
        // arm64 has no BIOS: nothing runs with it there, whatever the boots say.
        assert!(plan_arch(&t, true, Arch::Arm64, Firmware::Bios).is_empty());
        let hand_on: Vec<bool> =
            plan_arch(&t, true, Arch::Arm64, Firmware::Uefi).iter().map(|s| s.hand_on).collect();
        assert_eq!(hand_on, [true, false, false]);
        // The per-firmware plan is the first architecture's that has the firmware.
        let old: Vec<String> =
            plan(&t, true, Firmware::Uefi).iter().map(|s| s.boot.variant.clone()).collect();
        assert_eq!(old, names(Arch::Amd64, Firmware::Uefi, true));
        // Artifacts per architecture: the extension is built for amd64 only.
        let set = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
        let both = [Firmware::Bios, Firmware::Uefi];
        assert_eq!(t.artifacts_for(Arch::Amd64, &both, true), set(&["ext"]));
        assert_eq!(t.artifacts_for(Arch::Amd64, &[Firmware::Uefi], true), set(&[]));
        assert_eq!(t.artifacts_for(Arch::Arm64, &both, true), set(&["rootfs"]));
        assert_eq!(t.artifacts_for(Arch::Arm64, &[Firmware::Bios], true), set(&[]));
        assert_eq!(t.artifacts_needed(&both, true), set(&["ext", "rootfs"]));
        // A "previous" boot cannot run on an architecture its predecessor does not.
        let mut bad = v.clone();
        bad["boots"][0]["arch"] = serde_json::json!(["amd64"]);
        let e = format!("{:#}", parse(&bad).unwrap_err());
        assert!(
            e.contains("boots[1] (b).arch: \"previous\" boots on arm64, which 'a' does not"),
            "{e}"
        );
        bad["boots"][1]["arch"] = serde_json::json!(["amd64"]);
        parse(&bad).unwrap();
        // ... nor with a firmware its predecessor does not have on that architecture.
        let mut bad = v.clone();
        bad["boots"][0]["firmware"] = serde_json::json!(["uefi"]);
        let e = format!("{:#}", parse(&bad).unwrap_err());
        assert!(
            e.contains(
                "boots[1] (b).firmware: \"previous\" boots with bios on amd64, which 'a' does not"
            ),
            "{e}"
        );
        // A BIOS-only boot on a file with arm64 says which architectures it runs on.
        let mut bad = v.clone();
        bad["boots"][2].as_object_mut().unwrap().remove("arch");
        let e = format!("{:#}", parse(&bad).unwrap_err());
        assert!(
            e.contains("boots[2] (c): runs on arm64, which has none of its firmwares (bios): give \"arch\" without arm64"),
            "{e}"
        );
        let mut bad = v.clone();
        bad["boots"][3]["firmware"] = serde_json::json!(["bios"]);
        let e = format!("{:#}", parse(&bad).unwrap_err());
        assert!(
            e.contains("boots[3] (d): runs on arm64, which has none of its firmwares (bios)"),
            "{e}"
        );
        assert!(e.starts_with(&format!("{}: ", file.display())), "{e}");
    }

    #[test]
    fn a_boot_adds_nics_disks_and_a_guest_agent_to_the_files() {
        let mut v = minimal();
        v["boots"][1]["extra_nics"] = serde_json::json!([{"mac": "86:00:00:00:00:01", "user_net": {"net": "10.0.0.0/24", "host": "10.0.0.1", "dhcpstart": "10.0.0.2"}}]);
        v["boots"][1]["extra_disks"] = serde_json::json!([
            {"source": {"ext4": {"bytes": 67108864, "label": "vol", "files": {"a/b.txt": "x"}}}, "device": "scsi-hd", "vendor": "HC", "product": "Volume", "serial": "101"},
            {"source": {"blank": {"bytes": 67108864}}, "device": "scsi-hd", "serial": "102"}
        ]);
        v["boots"][1]["guest_agent"] = true.into();
        v["boots"][1]["checks"] = serde_json::json!([{"name": "pw", "probe": {"guest_agent": {"execute": "guest-set-user-password", "arguments": {"username": "root", "password": "cHc=", "crypted": false}}}, "equals": "{}"}]);
        let t = parse_value(&v).unwrap();
        let (one, two) = (t.for_boot(&t.boots[0]), t.for_boot(&t.boots[1]));
        assert_eq!((one.nics.len(), one.disks.len()), (1, 1));
        assert_eq!((two.nics.len(), two.disks.len()), (2, 3));
        assert_eq!(two.nics[1].mac, "86:00:00:00:00:01");
        assert!(
            matches!(&two.disks[1].source, DiskSource::Ext4 { bytes: 67108864, files, .. } if files["a/b.txt"] == "x")
        );
        assert!(two.boots[1].guest_agent && !two.boots[0].guest_agent);
    }

    #[test]
    fn bad_files_name_the_file_the_place_and_the_problem() {
        type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|v| v["machine"]["memroy_mib"] = 1.into()), "unknown field `memroy_mib`"),
            (
                Box::new(|v| v["arch"] = serde_json::json!(["sparc"])),
                "arch[0]: unknown variant `sparc`",
            ),
            (Box::new(|v| v["firmware"] = serde_json::json!([])), "firmware: name at least one"),
            (
                Box::new(|v| {
                    v["arch"] = serde_json::json!(["arm64"]);
                }),
                "oem/x/boot-test.json: firmware: arm64 has none of the file's firmwares (bios): add one it has (uefi), or leave arm64 out of arch",
            ),
            (Box::new(|v| v["machine"]["disk_bytes"] = 1000.into()), "machine.disk_bytes: 1000"),
            (
                Box::new(|v| v["arch"] = serde_json::json!(["amd64", "x86-64"])),
                "arch: amd64 is named twice",
            ),
            (
                Box::new(|v| v["arch"] = serde_json::json!(["arm64"])),
                "oem/x/boot-test.json: firmware: arm64 has none of the file's firmwares (bios)",
            ),
            (
                Box::new(|v| v["machine_arch"] = serde_json::json!({"arm64": {"cpus": 2}})),
                "machine_arch.arm64: arm64 is not among the file's architectures",
            ),
            (
                Box::new(|v| v["machine_arch"] = serde_json::json!({"amd64": {}})),
                "machine_arch.amd64: sets nothing",
            ),
            (
                Box::new(|v| {
                    v["machine_arch"] = serde_json::json!({"x86-64": {"disk_bytes": 1000}})
                }),
                "machine_arch.amd64.disk_bytes: 1000 is not a positive multiple of 512",
            ),
            (
                Box::new(|v| {
                    v["machine_arch"] = serde_json::json!({"amd64": {"disk_gib": 40}})
                }),
                "machine_arch.amd64.disk_gib: unknown field `disk_gib`",
            ),
            (
                Box::new(|v| {
                    v["machine_arch"] =
                        serde_json::json!({"amd64": {"cpus": 2}, "x86_64": {"cpus": 1}})
                }),
                "machine_arch: amd64 is named twice",
            ),
            (
                Box::new(|v| v["machine_arch"] = serde_json::json!({"sparc": {"cpus": 2}})),
                "machine_arch: unknown architecture 'sparc' (known: amd64, arm64)",
            ),
            (
                Box::new(|v| v["boots"][0]["arch"] = serde_json::json!(["arm64"])),
                "boots[0] (one).arch: arm64 is not among the file's architectures",
            ),
            (
                Box::new(|v| v["boots"][0]["arch"] = serde_json::json!([])),
                "boots[0] (one).arch: name at least one architecture, or leave it out",
            ),
            (Box::new(|v| v["nics"][0]["mac"] = "52:54:00".into()), "nics[0].mac \"52:54:00\""),
            (
                Box::new(|v| v["nics"][0]["metadata"] = false.into()),
                "no NIC has \"metadata\": true",
            ),
            (Box::new(|v| v["metadata"]["listen"] = "metadata:80".into()), "metadata.listen"),
            (Box::new(|v| v["metadata"]["paths"]["/x/"] = "y".into()), "metadata.paths \"/x/\""),
            (
                Box::new(|v| {
                    v["metadata"]["paths"]["/y"] =
                        serde_json::json!({"content_type": "a", "body": "b", "lines": []})
                }),
                "metadata.paths./y: give exactly one of `body`, `lines`, `\"userdata\": true` and `artifact`",
            ),
            (
                Box::new(|v| v["metadata"]["paths"]["/z"] = "{{metadata.hostnmae}}".into()),
                "metadata.paths \"/z\"",
            ),
            (
                Box::new(|v| {
                    v["disks"][0]["source"] = serde_json::json!({"blank": {"bytes": 512}})
                }),
                "exactly one disk has \"source\": \"image\"",
            ),
            (Box::new(|v| v["disks"][0]["vendor"] = "a,b".into()), "disks[0].vendor \"a,b\""),
            (
                Box::new(|v| {
                    v["boots"][0]["extra_disks"] =
                        serde_json::json!([{"source": "image", "device": "scsi-hd"}])
                }),
                "boots[0] (one).extra_disks: the image is one of the file's disks",
            ),
            (
                Box::new(|v| {
                    v["boots"][0]["extra_disks"] = serde_json::json!([{"source": {"ext4": {"bytes": 4096}}, "device": "scsi-hd"}])
                }),
                "boots[0] (one).extra_disks[0].source.ext4.bytes: 4096 is not a multiple of 4096 of at least 8388608",
            ),
            (
                Box::new(|v| {
                    v["boots"][0]["extra_disks"] = serde_json::json!([{"source": {"ext4": {"bytes": 8388608, "files": {"../x": "y"}}}, "device": "scsi-hd"}])
                }),
                "boots[0] (one).extra_disks[0].source.ext4.files \"../x\": a relative path without '.' or '..'",
            ),
            (
                Box::new(|v| {
                    v["boots"][0]["extra_disks"] = serde_json::json!([{"source": {"blank": {"bytes": 512}}, "device": "virtio-blk-pci", "vendor": "HC"}])
                }),
                "boots[0] (one).extra_disks[0].vendor: only a scsi-hd has a vendor and product",
            ),
            (
                Box::new(|v| {
                    v["boots"][0]["extra_nics"] =
                        serde_json::json!([{"mac": "52:54:00:12:34:56"}])
                }),
                "boots[0] (one): two NICs have the MAC address 52:54:00:12:34:56",
            ),
            (
                Box::new(|v| {
                    v["boots"][0]["extra_nics"] =
                        serde_json::json!([{"mac": "86:00:00:00:00:01", "hostfwd": [22]}])
                }),
                "boots[0] (one).extra_nics[0].hostfwd: port 22 is zero or forwarded twice",
            ),
            (
                Box::new(|v| {
                    v["boots"][0]["checks"][0] = serde_json::json!({"name": "n", "probe": {"hotplug": {"disk": 0}}, "equals": "attached"})
                }),
                "boots[0] (one).checks[0] (n): probe hotplug: disk 0, but the boot has 0 hotplug_disks",
            ),
            (
                Box::new(|v| {
                    v["boots"][0]["hotplug_disks"] = serde_json::json!([{"source": {"blank": {"bytes": 512}}, "device": "virtio-blk-pci"}])
                }),
                "boots[0] (one).hotplug_disks[0]: a hot-plugged disk is a blank or ext4 scsi-hd",
            ),
            (
                Box::new(|v| {
                    v["boots"][0]["checks"][0] = serde_json::json!({"name": "n", "probe": {"guest_agent": {"execute": "guest-ping"}}, "equals": "{}"})
                }),
                "boots[0] (one).checks[0] (n): probe guest_agent needs the boot's \"guest_agent\": true",
            ),
            (
                Box::new(|v| {
                    v["boots"][0]["guest_agent"] = true.into();
                    v["boots"][0]["checks"][0] = serde_json::json!({"name": "n", "probe": {"guest_agent": {"execute": "guest-ping", "arguments": [1]}}, "equals": "{}"})
                }),
                "probe guest_agent: arguments must be an object",
            ),

            (
                Box::new(|v| v["fw_cfg"] = serde_json::json!([{"name": "etc/x", "content": ""}])),
                "fw_cfg[0].name \"etc/x\": user entries live under opt/",
            ),
            (
                Box::new(|v| v["boots"][1]["variant"] = "one".into()),
                "boots[1] (one): variant must be a unique",
            ),
            (Box::new(|v| v["boots"][0]["until"] = serde_json::json!([])), "boots[0] (one).until"),
            (
                Box::new(|v| v["boots"][0]["checks"][0]["equal"] = "x".into()),
                "boots[0].checks[0]: check \"h\": unknown field `equal`",
            ),
            (
                Box::new(|v| {
                    v["boots"][0]["checks"][0] = serde_json::json!({"name": "n", "report_key": "k"})
                }),
                "boots[0] (one).checks[0] (n): give at least one of equals",
            ),
            (
                Box::new(
                    |v| v["boots"][0]["checks"][0] = serde_json::json!({"name": "n", "report_key": "k", "observe": "serial", "equals": ""}),
                ),
                "give exactly one of report_key, observe and probe",
            ),
            (
                Box::new(|v| {
                    v["boots"][0]["checks"][0] =
                        serde_json::json!({"name": "n", "report_key": "k", "matches": "(unclosed"})
                }),
                "matches \"(unclosed\"",
            ),
            (
                Box::new(
                    |v| v["boots"][0]["checks"][0] = serde_json::json!({"name": "n", "probe": {"http": {"guest_port": 80}}, "equals": "x"}),
                ),
                "guest port 80, which no NIC forwards",
            ),
            (
                Box::new(|v| v["boots"][0]["checks"][0]["equals"] = "{{nope}}".into()),
                "boots[0] (one).checks[0] (h): template \"{{nope}}\"",
            ),
            (
                Box::new(|v| v["boots"][0]["mutation"] = serde_json::json!({"shred": {}})),
                "boots[0].mutation: unknown variant `shred`",
            ),
            (
                Box::new(|v| v["boots"][1]["userdata_absent"] = true.into()),
                "boots[1] (two).userdata: give at most one of userdata, userdata_file and userdata_absent",
            ),
            (
                Box::new(|v| v["userdata_substitute"] = serde_json::json!({"a": "b"})),
                "oem/x/boot-test.json: userdata_substitute: only with userdata_file",
            ),
            (
                Box::new(|v| v["boots"][1]["userdata_file"] = "../secret".into()),
                "boots[1] (two).userdata: give at most one",
            ),
            (
                Box::new(|v| {
                    v["boots"][1].as_object_mut().unwrap().remove("userdata");
                    v["boots"][1]["userdata_file"] = "../secret".into();
                }),
                "boots[1] (two).userdata_file \"../secret\": a path relative to the repository root, without '..'",
            ),
            (
                Box::new(|v| v["boots"][0]["userdata_file"] = "nope/missing.ign".into()),
                "boots[0] (one).userdata_file: nope/missing.ign: cannot read",
            ),
            (
                Box::new(|v| v["boots"][0]["disk"] = "previous".into()),
                "boots[0] (one).disk: \"previous\", but the first boot has no previous disk",
            ),
            (
                Box::new(|v| v["boots"][0]["firmware"] = serde_json::json!(["uefi"])),
                "boots[0] (one).firmware: uefi is not among the file's firmwares",
            ),
            (
                Box::new(|v| v["boots"][0]["serve"] = serde_json::json!({"/hostname": "x"})),
                "boots[0] (one).serve \"/hostname\": must be an absolute path the file's metadata.paths does not serve",
            ),
            (
                Box::new(|v| {
                    v["boots"][0]["serve"] = serde_json::json!({"/ext.raw": {"artifact": "ext"}})
                }),
                "boots[0] (one): path \"/ext.raw\" serves the artifact \"ext\", which `artifacts` does not declare",
            ),
            (
                Box::new(|v| v["artifacts"] = serde_json::json!({"ext": {"sysext": "nope/ext"}})),
                "artifacts.ext: nope/ext: no such folder",
            ),
            (
                Box::new(|v| v["artifacts"] = serde_json::json!({"ext": {"sysext": "../ext"}})),
                "artifacts.ext: \"../ext\": a folder relative to the repository root",
            ),
            (
                Box::new(|v| v["artifacts"] = serde_json::json!({"ext": {"tarball": "x"}})),
                "artifacts.ext: unknown variant `tarball`",
            ),
            (
                Box::new(|v| v["boots"][0]["disk"] = "reused".into()),
                "boots[0].disk: unknown variant `reused`",
            ),
            (
                Box::new(|v| {
                    v["boots"][1]["disk"] = "previous".into();
                    v["boots"][1]["mutation"] =
                        serde_json::json!({"flip_byte": {"partition": "USR-A"}});
                }),
                "boots[1] (two): a boot of the previous disk takes no mutation",
            ),
            (
                Box::new(|v| {
                    v["boots"][1]["disk"] = "previous".into();
                    v["boots"][0]["negative"] = true.into();
                }),
                "boots[1] (two).disk: \"previous\" follows a negative boot",
            ),
            (
                Box::new(|v| {
                    v["fw_cfg"] = serde_json::json!([{"name": "opt/x", "content": "", "userdata": true}])
                }),
                "fw_cfg[0]: give exactly one of content and \"userdata\": true",
            ),
            (
                Box::new(|v| v["fw_cfg"] = serde_json::json!([{"name": "opt/x"}])),
                "fw_cfg[0]: give exactly one of content and \"userdata\": true",
            ),
        ];
        for (edit, want) in cases {
            let e = error_after(edit);
            assert!(e.contains(want), "expected {want:?} in: {e}");
        }
        // A previous boot after a negative one is fine when it is negative too.
        let mut v = minimal();
        v["boots"][0]["negative"] = true.into();
        v["boots"][1]["negative"] = true.into();
        v["boots"][1]["disk"] = "previous".into();
        parse_value(&v).unwrap();
        // Not JSON at all: the file and the line.
        let e = parse("{\n  \"arch\": [,\n", Path::new("oem/x/boot-test.json")).unwrap_err();
        let e = e.to_string();
        assert!(e.starts_with("oem/x/boot-test.json: ") && e.contains("line 2"), "{e}");
        // Missing file.
        let e = load(Path::new("/nonexistent/boot-test.json")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/boot-test.json: cannot read"), "{e}");
    }
}
