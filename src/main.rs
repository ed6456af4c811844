//! The `tollgate` binary: parse the command line and run it.

fn main() -> std::process::ExitCode {
    tollgate::cli::main()
}
