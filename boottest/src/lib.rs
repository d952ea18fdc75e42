//! forge-boottest: an image booted in QEMU as its platform would boot it,
//! observed from inside (the payload's `FORGE-REPORT key=value` lines on the
//! serial console) and from the host (HTTP and SSH through loopback
//! `hostfwd`s, the fake metadata service's request log).
//!
//! What a platform boots and checks is data: `oem/<id>/boot-test.json`
//! ([`spec`]); checks are evaluated by [`check`]; [`run`](mod@run) drives QEMU
//! ([`qemu`]) over a prepared disk ([`disk`]) and returns a serializable
//! [`run::Report`]; [`metadata`] is the responder QEMU runs for the
//! metadata service.
//!
//! Architectures: a boot test declares the ones it boots and, per
//! architecture, the firmwares it has and the machine ([`spec`]); an
//! image's own architecture is read from the EFI loader on its ESP
//! ([`disk::image_arch`]); how QEMU boots each (amd64: q35 with OVMF,
//! arm64: `virt` with `-cpu max,pauth-impdef=on` and AAVMF) is
//! [`qemu::TARGETS`], everything else of the command line is shared.
//!
//! Safety: every guest NIC is QEMU user networking with `restrict=on` (the
//! guest reaches nothing outside the machine); the metadata service is our
//! own responder run by QEMU (`guestfwd` to a command); host ports are
//! loopback `hostfwd`s only. These are fixed in [`qemu::args`], not data,
//! and hold on every architecture.

pub mod check;
pub mod disk;
pub mod metadata;
pub mod qemu;
pub mod qga;
pub mod qmp;
pub mod run;
pub mod spec;

pub use run::{run, Options, Report};
pub use spec::{Arch, BootTest, Firmware};
