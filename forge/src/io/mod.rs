//! I/O adapters shared by the stages.
pub mod sparse;
