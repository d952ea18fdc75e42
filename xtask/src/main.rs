fn main() -> std::process::ExitCode {
    xtask::main_with(std::env::args_os())
}
