//! prom-adapter binary: being built.

fn main() {
    eprintln!("prom-adapter is not implemented yet; see README.md");
    std::process::exit(64);
}
