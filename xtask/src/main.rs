//! orb8's project tasks: `cargo xtask <verb>`. Each verb lives in its own module; this file only
//! dispatches.

mod bench;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench") => bench::main(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask bench [--quick] [--only SCENARIO,..] [--baseline DIR]");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}
