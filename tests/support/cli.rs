//! The CLI as a binary of this package, so integration tests can run it
//! (`CARGO_BIN_EXE_forge-cli`) exactly as `cargo xtask` does.
fn main() -> std::process::ExitCode {
    xtask::main_with(std::env::args_os())
}
