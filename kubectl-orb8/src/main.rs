//! `kubectl-orb8`: found by kubectl on PATH and run as `kubectl orb8`.

fn main() -> std::process::ExitCode {
    kubectl_orb8::main()
}
