//! The lines the criterion benches and the callgrind driver share.

/// A mix of typical DogStatsD lines: plain, sampled, tagged, packed, timers, sets.
pub fn typical_lines() -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..1000 {
        out.push(match i % 8 {
            0 => format!(
                "app.requests:1|c|#env:prod,route:/api/v{},status:200",
                i % 7
            ),
            1 => format!("app.latency:{}|ms|@0.5|#env:prod,route:/api", i % 500),
            2 => format!("app.queue.depth:{}|g|#env:prod,queue:q{}", i, i % 3),
            3 => "app.bytes:512:1024:2048|d|#env:prod".to_owned(),
            4 => format!("app.users:user{}|s|#env:prod", i % 100),
            5 => format!("plain.counter.{}:1|c", i % 10),
            6 => format!(
                "app.hist:{}|h|#env:prod,host:node-{}|c:abc123|T1700000000",
                i,
                i % 5
            ),
            _ => format!(
                "app.errors:1|c|@0.1|#env:prod,service:checkout,version:1.2.{}",
                i % 4
            ),
        });
    }
    out
}
