//! I/O adapters shared by the stages.
pub mod codec;
pub mod compress;
pub mod sparse;
