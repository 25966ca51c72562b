//! `drain`: the baseline receiver. Binds a UDP socket with SO_RCVBUF 8 MiB (as the bridge
//! asks), reads with `recvmmsg`, counts lines, writes the count to `--count-file` every
//! 100 ms, and prints a JSON summary when `--duration` is up.
//!
//! ```text
//! drain --listen 127.0.0.1:8125 --count-file /tmp/count --duration 60
//! ```

use clap::Parser;
use pipeline_benches::drain::{self, DrainArgs};

fn main() -> anyhow::Result<()> {
    let args = DrainArgs::parse();
    let summary = drain::run(&args, None)?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
