//! prom-adapter binary: not built yet.

fn main() {
    eprintln!("prom-adapter is not implemented yet; see README.md");
    std::process::exit(64);
}
