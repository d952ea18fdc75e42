//! forge: the engine behind `cargo xtask`. The modules follow the pipeline
//! an image build runs (see ARCHITECTURE.md):
//!
//! payload → layout → image: plan → table (GPT) → /usr + verity → ESP
//! (`boot::esp`) → other partitions (`fs`) → verify → publish (`outdir`);
//! then a platform's disk `format` and `artifacts`. `inspect` reads any GPT
//! disk image back.

pub mod arch;
pub mod artifacts;
pub mod boot;
pub mod format;
pub mod fs;
pub mod image;
pub mod inspect;
pub mod io;
pub mod layout;
pub mod meta;
pub mod oem;
pub mod outdir;
pub mod payload;
pub mod platform;
pub mod progress;
pub mod recipe;
pub mod rustbuild;
pub mod seed;
pub mod sysext;
pub mod table;
pub mod tools;
pub mod unpack;
pub mod verity;
