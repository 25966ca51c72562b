//! `statsd-bridge`'s listeners and edges end to end: TCP and unix datagram input, the relay,
//! the series bounds (TTL, `max_series`), OpenMetrics and gzip on the metrics page, the
//! lifecycle endpoints and SIGHUP, statsd_exporter's flags, and shutdown under load.
//!
//! Every test starts its own bridges on ephemeral loopback ports (sockets in a temp dir) and
//! waits with `eventually`, never with fixed sleeps.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use pipeline_tests::check::{expect, expect_all, get, user_series};
use pipeline_tests::dogstatsd::op;
use pipeline_tests::exposition::{self, OmFamily};
use pipeline_tests::process::ChildGuard;
use pipeline_tests::util::{gunzip, scaled, send_udp, values_equal};
use pipeline_tests::{Bridge, DogStatsd, PATIENCE, bin, eventually};

/// The `Accept` header Prometheus sends when it prefers OpenMetrics.
const ACCEPT_OPENMETRICS: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const MIB: f64 = 1024.0 * 1024.0;

/// A config with UDP and TCP listeners and the web server on ephemeral loopback ports, a 1 s
/// shutdown grace unless `extra` sets one, and the `extra` lines in the `[bridge]` table.
fn config(extra: &str) -> String {
    let grace = if extra.contains("shutdown_grace") {
        ""
    } else {
        "shutdown_grace = \"1s\"\n"
    };
    format!(
        "version = 1\n\n[bridge]\nlisten_udp = [\"127.0.0.1:0\"]\nlisten_tcp = [\"127.0.0.1:0\"]\n\
         web_listen = \"127.0.0.1:0\"\n{grace}{extra}\n"
    )
}

/// Sets a stop flag when dropped, so sender threads end even when the test panics.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Connects to `addr` with the suite's timeouts.
fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, scaled(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .set_read_timeout(Some(scaled(Duration::from_secs(10))))
        .expect("setting a read timeout");
    stream
        .set_write_timeout(Some(scaled(Duration::from_secs(10))))
        .expect("setting a write timeout");
    stream
}

#[test]
fn tcp_end_to_end() {
    let bridge = Bridge::start(&config("max_line_length = 64"), &[]);
    let long_line = format!("tcp_long:1|c|#k:{}", "x".repeat(200));
    let (long_a, rest) = long_line.split_at(47);
    let (long_b, long_c) = rest.split_at(100);
    // The stream, cut at awkward offsets: inside names, between a value and its type, between
    // `\r` and `\n`, and the too-long line spread over three reads, the last of which also
    // carries the start of the next line. The last line has no newline before the close.
    let pieces: Vec<String> = vec![
        "tc".into(),
        "p_a:1|c\ntcp_b:2".into(),
        "|g\r".into(),
        "\ntcp_a:2|c".into(),
        format!("\n{long_a}"),
        long_b.into(),
        format!("{long_c}\ntcp_af"),
        "ter:5|c\ntcp_t:250|ms\ntcp_a:3|c\ntcp_la".into(),
        "st:7|c".into(),
    ];
    let whole: String = pieces.concat();
    assert!(whole.contains(&format!("\n{long_line}\n")) && whole.ends_with("tcp_last:7|c"));
    assert!(long_line.len() > 64 && long_b.len() > 64);

    let mut stream = connect(bridge.tcp_addr());
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let mut written = 0usize;
    for (i, piece) in pieces.iter().enumerate() {
        stream
            .write_all(piece.as_bytes())
            .unwrap_or_else(|e| panic!("writing piece {i}: {e}"));
        written += piece.len();
        // The bridge must have read exactly this far before the next piece goes out, so each
        // piece is a read of its own and the framing is exercised at these offsets.
        bridge.wait_metrics(&format!("the bridge to read piece {i}"), |m| {
            expect(
                m,
                r#"statsd_bridge_bytes_total{transport="tcp"}"#,
                written as f64,
            )
        });
    }
    stream
        .shutdown(Shutdown::Write)
        .expect("closing the write side");

    let map = bridge.wait_metrics("the TCP lines on /metrics", |m| {
        expect_all(
            m,
            &[
                ("tcp_a{}", 6.0),
                ("tcp_b{}", 2.0),
                ("tcp_after{}", 5.0),
                ("tcp_t_count{}", 1.0),
                ("tcp_t_sum{}", 0.25),
                ("tcp_last{}", 7.0),
                (
                    r#"statsd_bridge_lines_too_long_total{transport="tcp"}"#,
                    1.0,
                ),
                (r#"statsd_bridge_lines_total{transport="tcp"}"#, 7.0),
                (r#"statsd_bridge_lines_total{transport="udp"}"#, 0.0),
                ("statsd_bridge_tcp_connections_total{}", 1.0),
            ],
        )
    });
    let users = user_series(&map);
    assert!(
        !users.keys().any(|k| k.starts_with("tcp_long")),
        "the too-long line was ingested: {users:#?}"
    );
    let rejected: f64 = map
        .iter()
        .filter(|(k, _)| k.starts_with("statsd_bridge_lines_rejected_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(rejected, 0.0, "lines were rejected: {map:#?}");
    // The connection ended when the client closed it.
    bridge.wait_metrics("the TCP connection to close", |m| {
        expect(m, "statsd_bridge_tcp_connections_open{}", 0.0)
    });
}

#[test]
fn tcp_connection_limit() {
    let bridge = Bridge::start(&config("max_tcp_connections = 2"), &[]);
    let addr = bridge.tcp_addr();
    let mut one = connect(addr);
    one.write_all(b"conn_one:1|c\n").expect("writing on #1");
    let mut two = connect(addr);
    two.write_all(b"conn_two:1|c\n").expect("writing on #2");
    bridge.wait_metrics("two open connections", |m| {
        expect_all(
            m,
            &[
                ("conn_one{}", 1.0),
                ("conn_two{}", 1.0),
                ("statsd_bridge_tcp_connections_open{}", 2.0),
                ("statsd_bridge_tcp_connections_total{}", 2.0),
                ("statsd_bridge_tcp_connections_rejected_total{}", 0.0),
            ],
        )
    });

    // A third connection is accepted by the kernel, then closed by the bridge at once.
    let mut three = connect(addr);
    let _ = three.write_all(b"conn_three:1|c\n");
    let mut buf = [0u8; 64];
    let started = Instant::now();
    match three.read(&mut buf) {
        Ok(0) => {}
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {}
        Ok(n) => panic!(
            "the third connection got {n} bytes instead of being closed: {:?}",
            &buf[..n]
        ),
        Err(e) => panic!(
            "the third connection was not closed (read failed with {e} after {:?})",
            started.elapsed()
        ),
    }
    bridge.wait_metrics("the rejected connection to be counted", |m| {
        expect_all(
            m,
            &[
                ("statsd_bridge_tcp_connections_rejected_total{}", 1.0),
                ("statsd_bridge_tcp_connections_total{}", 2.0),
                ("statsd_bridge_tcp_connections_open{}", 2.0),
            ],
        )
    });

    // The two kept connections still work.
    one.write_all(b"conn_one:1|c\n")
        .expect("writing on #1 again");
    two.write_all(b"conn_two:2|c\n")
        .expect("writing on #2 again");
    bridge.wait_metrics("the kept connections to still count", |m| {
        expect_all(m, &[("conn_one{}", 2.0), ("conn_two{}", 3.0)])
    });

    // Closing one frees a slot for a new connection.
    drop(one);
    bridge.wait_metrics("one connection to close", |m| {
        expect(m, "statsd_bridge_tcp_connections_open{}", 1.0)
    });
    let mut four = connect(addr);
    four.write_all(b"conn_four:1|c\n").expect("writing on #4");
    four.shutdown(Shutdown::Write).expect("closing #4");
    let map = bridge.wait_metrics("the new connection to count", |m| {
        expect_all(
            m,
            &[
                ("conn_four{}", 1.0),
                ("statsd_bridge_tcp_connections_total{}", 3.0),
                ("statsd_bridge_tcp_connections_rejected_total{}", 1.0),
            ],
        )
    });
    assert!(
        !map.contains_key("conn_three{}"),
        "a line sent on the rejected connection was ingested: {map:#?}"
    );
    drop(two);
}

#[test]
fn unixgram_end_to_end_with_the_datadog_client() {
    let dir = tempfile::Builder::new()
        .prefix("dsd-")
        .tempdir()
        .expect("creating a temp dir for the socket");
    let socket = dir.path().join("dsd.socket");
    let bridge = Bridge::start(
        &format!(
            "version = 1\n\n[bridge]\nlisten_udp = []\nlisten_tcp = []\nlisten_unixgram = [{:?}]\n\
             unixsocket_mode = \"722\"\nweb_listen = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n",
            socket.to_str().expect("a UTF-8 temp path")
        ),
        &[],
    );
    assert_eq!(bridge.unixgram_path(), socket, "{:?}", bridge.ready());
    assert!(
        bridge.ready().udp.is_empty() && bridge.ready().tcp.is_empty(),
        "{:?}",
        bridge.ready()
    );
    let meta = std::fs::symlink_metadata(&socket).expect("the socket file exists");
    assert!(meta.file_type().is_socket(), "not a socket: {meta:?}");
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o722,
        "socket file mode is {:o}",
        meta.permissions().mode() & 0o7777
    );

    let sent = DogStatsd::unix(&socket)
        .send(&[
            op::repeat(op::increment("uds.requests", 1, &["env:prod"]), 3),
            op::increment("uds.requests", 4, &["env:dev"]),
            op::gauge("uds.temperature", 21.5, &[]),
            op::timing("uds.latency", 200, &["route:/api"]),
            op::timing("uds.latency", 400, &["route:/api"]),
            op::distribution("uds.size", 3.5, &[]),
            op::service_check("uds.check", 2, &["env:prod"]),
            op::event("deploy", "done", Some("warning"), &["env:prod"]),
        ])
        .expect("sending with the datadog client over the unix socket");
    assert_eq!(sent.len(), 10, "datagrams sent: {sent:#?}");

    bridge.wait_metrics("the client's values over the unix socket", |m| {
        expect_all(
            m,
            &[
                (r#"uds_requests{env="prod"}"#, 3.0),
                (r#"uds_requests{env="dev"}"#, 4.0),
                ("uds_temperature{}", 21.5),
                (r#"uds_latency_count{route="/api"}"#, 2.0),
                (r#"uds_latency_sum{route="/api"}"#, 0.6),
                (r#"uds_latency_bucket{le="0.25",route="/api"}"#, 1.0),
                ("uds_size_sum{}", 3.5),
                (
                    r#"statsd_service_check_status{check="uds.check",env="prod"}"#,
                    2.0,
                ),
                (
                    r#"statsd_events_total{alert_type="warning",env="prod"}"#,
                    1.0,
                ),
                (
                    r#"statsd_bridge_lines_total{transport="unixgram"}"#,
                    sent.len() as f64,
                ),
                (
                    r#"statsd_bridge_packets_total{transport="unixgram"}"#,
                    sent.len() as f64,
                ),
                (r#"statsd_bridge_lines_total{transport="udp"}"#, 0.0),
            ],
        )
        .map_err(|e| anyhow!("{e:#}\ndatagrams sent: {sent:#?}"))
    });

    bridge.sigterm().expect("sending SIGTERM");
    let status = bridge.wait_exit(scaled(Duration::from_secs(20)));
    assert!(status.success(), "statsd-bridge exited with {status}");
    assert!(
        std::fs::symlink_metadata(&socket).is_err(),
        "the socket file {} is still there after exit",
        socket.display()
    );
}

/// `count` counter lines spread round-robin over `series` series of `name`.
fn relay_lines(name: &str, series: usize, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("{name}_{}:1|c|#src:relay", i % series))
        .collect()
}

/// Sends each line as its own datagram.
fn send_each(bridge: &Bridge, lines: &[String]) {
    let payloads: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    bridge.send(&payloads).expect("sending UDP");
}

#[test]
fn relay_to_a_second_bridge() {
    // B is the target; A relays to it.
    let b = Bridge::start(&config(""), &[]);
    let a = Bridge::start(
        &config(&format!("relay_address = \"{}\"", b.udp_addr())),
        &[],
    );
    let lines = relay_lines("relay_s", 5, 500);
    send_each(&a, &lines);
    let expected: Vec<(String, f64)> = (0..5)
        .map(|i| (format!(r#"relay_s_{i}{{src="relay"}}"#), 100.0))
        .collect();
    let expected_refs: Vec<(&str, f64)> = expected.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let a_map = a.wait_metrics("A to ingest and relay every line", |m| {
        expect_all(m, &expected_refs)?;
        expect_all(
            m,
            &[
                (r#"statsd_bridge_lines_total{transport="udp"}"#, 500.0),
                (
                    r#"statsd_bridge_relay_lines_total{outcome="relayed"}"#,
                    500.0,
                ),
                (r#"statsd_bridge_relay_lines_total{outcome="dropped"}"#, 0.0),
                (
                    r#"statsd_bridge_relay_lines_total{outcome="too_long"}"#,
                    0.0,
                ),
            ],
        )
    });
    let relay_packets = get(&a_map, "statsd_bridge_relay_packets_total{}").expect("packets");
    let b_map = b.wait_metrics("B to hold A's values", |m| {
        let mine = user_series(m);
        let theirs = user_series(&a_map);
        ensure!(mine == theirs, "B has {mine:#?}\nA has {theirs:#?}");
        expect_all(
            m,
            &[
                (r#"statsd_bridge_lines_total{transport="udp"}"#, 500.0),
                (
                    r#"statsd_bridge_packets_total{transport="udp"}"#,
                    relay_packets,
                ),
            ],
        )
    });
    let b_bytes = get(&b_map, r#"statsd_bridge_bytes_total{transport="udp"}"#).expect("bytes");
    println!(
        "relay A→B: 500 lines in {relay_packets} packets, {b_bytes} bytes ({:.0} bytes/packet)",
        b_bytes / relay_packets
    );
    assert!(
        relay_packets > 1.0 && relay_packets < 500.0,
        "500 lines went out in {relay_packets} packets: not batched, or batched past the packet length"
    );
    assert!(
        b_bytes <= 1400.0 * relay_packets,
        "{b_bytes} bytes in {relay_packets} packets: some exceed 1400 bytes"
    );

    // The packets themselves, captured: each at most relay_packet_length bytes, whole lines,
    // every line once and in order.
    let capture = UdpSocket::bind("127.0.0.1:0").expect("binding the capture socket");
    capture
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    let c = Bridge::start(
        &config(&format!(
            "relay_address = \"{}\"",
            capture.local_addr().expect("capture address")
        )),
        &[],
    );
    let lines = relay_lines("relay_cap", 7, 500);
    send_each(&c, &lines);
    let mut packets: Vec<Vec<u8>> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    eventually("500 relayed lines at the capture socket", PATIENCE, || {
        loop {
            match capture.recv(&mut buf) {
                Ok(n) => packets.push(buf[..n].to_vec()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => bail!("capture socket: {e}"),
            }
        }
        let got: usize = packets
            .iter()
            .map(|p| p.iter().filter(|b| **b == b'\n').count())
            .sum();
        ensure!(
            got >= 500,
            "{got} lines in {} packets so far",
            packets.len()
        );
        Ok(())
    });
    let sizes: Vec<usize> = packets.iter().map(Vec::len).collect();
    println!(
        "relay capture: 500 lines in {} packets, sizes {sizes:?}",
        packets.len()
    );
    assert!(
        sizes.iter().all(|s| *s <= 1400),
        "relay packets over 1400 bytes: {sizes:?}"
    );
    assert!(
        packets.len() > 1 && packets.len() < 500,
        "{} packets for 500 lines",
        packets.len()
    );
    let mut relayed: Vec<String> = Vec::new();
    for p in &packets {
        let text = std::str::from_utf8(p).expect("relayed packets are UTF-8");
        assert!(text.ends_with('\n'), "a packet ends mid-line: {text:?}");
        relayed.extend(text.lines().map(str::to_owned));
    }
    assert_eq!(
        relayed, lines,
        "the relayed lines differ from the sent ones"
    );
    c.wait_metrics("C's relay counters", |m| {
        expect_all(
            m,
            &[
                (
                    r#"statsd_bridge_relay_lines_total{outcome="relayed"}"#,
                    500.0,
                ),
                ("statsd_bridge_relay_packets_total{}", packets.len() as f64),
            ],
        )
    });
}

#[test]
fn relay_to_a_dead_port_never_stalls_ingestion() {
    let dead = {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("binding a UDP socket");
        socket.local_addr().expect("its address")
    };
    let a = Bridge::start(&config(&format!("relay_address = \"{dead}\"")), &[]);
    // 20,000 lines, more than the relay queue holds, packed 100 to a datagram.
    const LINES: usize = 20_000;
    let lines = relay_lines("dead_s", 4, LINES);
    let packed: Vec<String> = lines.chunks(100).map(|c| c.join("\n")).collect();
    let payloads: Vec<&[u8]> = packed.iter().map(|p| p.as_bytes()).collect();
    a.send(&payloads).expect("sending UDP");
    let expected: Vec<(String, f64)> = (0..4)
        .map(|i| (format!(r#"dead_s_{i}{{src="relay"}}"#), (LINES / 4) as f64))
        .collect();
    let mut expected_refs: Vec<(&str, f64)> =
        expected.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    expected_refs.push((
        r#"statsd_bridge_lines_total{transport="udp"}"#,
        LINES as f64,
    ));
    let map = a.wait_metrics("every line ingested despite the dead relay", |m| {
        expect_all(m, &expected_refs)?;
        // Every line is accounted for by the relay too, one way or another.
        let outcomes: f64 = ["relayed", "dropped", "too_long"]
            .iter()
            .map(|o| {
                get(
                    m,
                    &format!(r#"statsd_bridge_relay_lines_total{{outcome="{o}"}}"#),
                )
            })
            .sum::<Result<f64>>()?;
        ensure!(
            values_equal(outcomes, LINES as f64),
            "relay outcomes add up to {outcomes}, want {LINES}"
        );
        Ok(())
    });
    println!(
        "dead relay: relayed {:?}, dropped {:?}, errors {:?}, packets {:?}",
        map.get(r#"statsd_bridge_relay_lines_total{outcome="relayed"}"#),
        map.get(r#"statsd_bridge_relay_lines_total{outcome="dropped"}"#),
        map.get("statsd_bridge_relay_errors_total{}"),
        map.get("statsd_bridge_relay_packets_total{}"),
    );
}

#[test]
fn cardinality_storm_keeps_memory_bounded() {
    const CAP: usize = 10_000;
    const KEEP: usize = 100;
    const STORM: usize = 100_000;
    const CHUNK: usize = 1_000;
    let bridge = Bridge::start(&config(&format!("max_series = {CAP}")), &[]);
    // One TCP connection: lossless and in order, so every count below is exact.
    let mut stream = connect(bridge.tcp_addr());
    let mut lines_sent = 0usize;
    let mut send = |lines: &[String]| {
        let mut payload = lines.join("\n");
        payload.push('\n');
        stream.write_all(payload.as_bytes()).expect("writing");
        lines_sent += lines.len();
        let want = lines_sent as f64;
        bridge.wait_metrics(&format!("{want} TCP lines ingested"), |m| {
            expect(m, r#"statsd_bridge_lines_total{transport="tcp"}"#, want)
        });
    };
    let keep: Vec<String> = (0..KEEP)
        .map(|i| format!("storm_keep:1|c|#k:{i}"))
        .collect();
    for _ in 0..3 {
        send(&keep);
    }
    let fill: Vec<String> = (0..CAP - KEEP)
        .map(|i| format!("storm_fill:1|c|#id:{i}"))
        .collect();
    send(&fill);
    let at_cap = bridge.wait_metrics("the store at its cap", |m| {
        expect_all(
            m,
            &[
                ("statsd_bridge_series{}", CAP as f64),
                (
                    r#"statsd_bridge_samples_dropped_total{reason="series_limit"}"#,
                    0.0,
                ),
            ],
        )
    });
    assert_eq!(user_series(&at_cap).len(), CAP);
    let rss_at_cap = bridge.rss_bytes().expect("RSS");

    // The storm: distinct metric names (a StatsD cardinality storm: IDs in names), ten times
    // the cap, while the existing series keep updating.
    let mut rss_half = 0;
    for chunk in 0..STORM / CHUNK {
        let mut lines: Vec<String> = (0..CHUNK)
            .map(|i| format!("storm_new_{chunk}_{i}:1|c"))
            .collect();
        lines.extend(keep.iter().cloned());
        send(&lines);
        if chunk + 1 == STORM / CHUNK / 2 {
            rss_half = bridge.rss_bytes().expect("RSS");
        }
    }
    let rss_after = bridge.rss_bytes().expect("RSS");

    let keep_value = 3.0 + (STORM / CHUNK) as f64;
    let map = bridge.metrics_map().expect("scraping");
    let mut expected: Vec<(String, f64)> = (0..KEEP)
        .map(|i| (format!(r#"storm_keep{{k="{i}"}}"#), keep_value))
        .collect();
    expected.push(("statsd_bridge_series{}".into(), CAP as f64));
    expected.push((
        r#"statsd_bridge_samples_dropped_total{reason="series_limit"}"#.into(),
        STORM as f64,
    ));
    expected.push((
        r#"statsd_bridge_samples_total{type="counter"}"#.into(),
        (3 * KEEP + (CAP - KEEP) + STORM / CHUNK * KEEP) as f64,
    ));
    let expected_refs: Vec<(&str, f64)> = expected.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    if let Err(e) = expect_all(&map, &expected_refs) {
        panic!("after the storm: {e:#}");
    }
    let users = user_series(&map);
    assert_eq!(
        users.len(),
        CAP,
        "the page holds {} series, want {CAP}",
        users.len()
    );
    assert!(
        !users.keys().any(|k| k.starts_with("storm_new")),
        "series past the cap were created"
    );

    let grew = rss_after as f64 - rss_at_cap as f64;
    let grew_second_half = rss_after as f64 - rss_half as f64;
    println!(
        "storm RSS: {:.1} MiB at the cap, {:.1} MiB after {} more names, {:.1} MiB after {STORM} \
         (+{:.1} MiB in all, +{:.1} MiB over the second half)",
        rss_at_cap as f64 / MIB,
        rss_half as f64 / MIB,
        STORM / 2,
        rss_after as f64 / MIB,
        grew / MIB,
        grew_second_half / MIB
    );
    assert!(
        grew < 20.0 * MIB,
        "RSS grew by {:.1} MiB during a storm of refused series",
        grew / MIB
    );
    // Bounded means flat: once the store is full, refusing 50,000 more names must not cost
    // memory in proportion (a bounded store grows by well under 1 MiB here).
    assert!(
        grew_second_half < 4.0 * MIB,
        "RSS grew by {:.1} MiB over the second {} refused names ({:.0} bytes per name): memory \
         grows with every distinct name refused past max_series",
        grew_second_half / MIB,
        STORM / 2,
        grew_second_half / (STORM / 2) as f64
    );
}

#[test]
fn ttl_expires_idle_series() {
    let bridge = Bridge::start(&config("ttl = \"1s\""), &[]);
    bridge.send_lines(&["ttl_a:1|c"]).expect("sending UDP");
    bridge.wait_for_value("ttl_a{}", 1.0);

    // `ttl_b` keeps arriving every 100 ms from its own thread while we wait.
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(Arc::clone(&stop));
    let sends = Arc::new(AtomicU64::new(0));
    let target = bridge.udp_addr();
    let sender = {
        let (stop, sends) = (Arc::clone(&stop), Arc::clone(&sends));
        thread::spawn(move || -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                send_udp(target, &[b"ttl_b:1|c"])?;
                sends.fetch_add(1, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        })
    };
    let map = eventually("ttl_a to expire while ttl_b stays", PATIENCE, || {
        let before = sends.load(Ordering::SeqCst) as f64;
        let map = bridge.metrics_map()?;
        let after = sends.load(Ordering::SeqCst) as f64;
        let b = get(&map, "ttl_b{}")?;
        // ttl_b was never expired and recreated: it holds every send so far (one may be in
        // flight).
        // A reset is final, not "not yet": fail at once.
        assert!(
            b <= after && b >= before - 2.0,
            "ttl_b is {b} after {before}..{after} sends (one every 100 ms, ttl 1 s): it was \
             expired and recreated while in use (series_expired_total = {:?}, \
             series_created_total = {:?})",
            map.get("statsd_bridge_series_expired_total{}"),
            map.get("statsd_bridge_series_created_total{}")
        );
        ensure!(!map.contains_key("ttl_a{}"), "ttl_a is still there");
        Ok(map)
    });
    stop.store(true, Ordering::Relaxed);
    sender
        .join()
        .expect("the sender thread panicked")
        .expect("sending ttl_b");
    let expired = get(&map, "statsd_bridge_series_expired_total{}").expect("expired");
    assert!(expired >= 1.0, "series_expired_total is {expired}");
    expect(&map, "statsd_bridge_series{}", 1.0).expect("only ttl_b is left");
}

/// Lines of every type for the OpenMetrics page, with hostile tag values.
const OM_LINES: &[&str] = &[
    "om.hits:1|c",
    "om.hits:1|c",
    "x_total:3|c",
    "om.temp:21.5|g|#room:lab",
    "om.queue:10|g",
    "om.queue:-12|g",
    "om.latency:200|ms|#route:/api",
    "om.latency:400|ms|#route:/api",
    "om.size:3|h",
    "om.users:alice|s",
    "om.users:bob|s",
    "_sc|om.check|2|#env:prod",
    "_e{6,4}:deploy|done|t:warning|#env:prod",
    r#"om.hostile:1|c|#quote:say "hi",backslash:C:\dir\,unicode:Zürich 🚀 東京,braces:a}b{c=d"#,
    "om.sentinel:1|c",
];

/// What the OpenMetrics parser must read: (family, type, sample key, value).
const OM_EXPECTED: &[(&str, &str, &str, f64)] = &[
    ("om_hits", "counter", "om_hits_total{}", 2.0),
    ("x", "counter", "x_total{}", 3.0),
    ("om_temp", "gauge", r#"om_temp{room="lab"}"#, 21.5),
    ("om_queue", "gauge", "om_queue{}", -2.0),
    (
        "om_latency",
        "histogram",
        r#"om_latency_count{route="/api"}"#,
        2.0,
    ),
    (
        "om_latency",
        "histogram",
        r#"om_latency_sum{route="/api"}"#,
        0.6,
    ),
    (
        "om_latency",
        "histogram",
        r#"om_latency_bucket{le="0.25",route="/api"}"#,
        1.0,
    ),
    ("om_size", "histogram", "om_size_count{}", 1.0),
    ("om_users", "gauge", "om_users{}", 2.0),
    (
        "statsd_service_check_status",
        "gauge",
        r#"statsd_service_check_status{check="om.check",env="prod"}"#,
        2.0,
    ),
    (
        "statsd_events",
        "counter",
        r#"statsd_events_total{alert_type="warning",env="prod"}"#,
        1.0,
    ),
    (
        "om_hostile",
        "counter",
        r#"om_hostile_total{backslash="C:\\dir\\",braces="a}b{c=d",quote="say \"hi\"",unicode="Zürich 🚀 東京"}"#,
        1.0,
    ),
    (
        "statsd_bridge_lines",
        "counter",
        r#"statsd_bridge_lines_total{transport="udp"}"#,
        15.0,
    ),
];

/// The OpenMetrics families as `sample key → (family, type, value)`.
fn om_index(families: &[OmFamily]) -> BTreeMap<String, (String, String, f64)> {
    families
        .iter()
        .flat_map(|f| {
            f.samples
                .iter()
                .map(|s| (s.key(), (f.name.clone(), f.kind.clone(), s.value)))
        })
        .collect()
}

#[test]
fn openmetrics_passes_the_strict_python_parser() {
    let bridge = Bridge::start(&config("openmetrics = true"), &[]);
    bridge.send_lines(OM_LINES).expect("sending UDP");
    bridge.wait_metrics("every OpenMetrics test line", |m| {
        expect_all(
            m,
            &[
                ("om_sentinel{}", 1.0),
                (r#"statsd_bridge_lines_total{transport="udp"}"#, 15.0),
                ("om_users{}", 2.0),
            ],
        )
    });

    let om = bridge
        .get_with_headers("/metrics", &[("Accept", ACCEPT_OPENMETRICS)])
        .expect("GET /metrics as OpenMetrics");
    assert_eq!(om.status, 200);
    assert_eq!(
        om.header("content-type"),
        Some(OPENMETRICS_CONTENT_TYPE),
        "headers: {:?}",
        om.headers
    );
    let text = om.text().expect("UTF-8");
    assert!(
        text.ends_with("\n# EOF\n"),
        "the page does not end with `# EOF`: …{:?}",
        &text[text.len().saturating_sub(200)..]
    );
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    let families = exposition::parse_openmetrics_with_python_client(&text)
        .unwrap_or_else(|e| panic!("{e:#}\n--- page ---\n{text}"));
    let index = om_index(&families);
    let mut problems = Vec::new();
    for (family, kind, key, want) in OM_EXPECTED {
        match index.get(*key) {
            Some((f, k, v)) if f == family && k == kind && values_equal(*v, *want) => {}
            Some(got) => problems.push(format!(
                "{key}: got {got:?}, want ({family}, {kind}, {want})"
            )),
            None => problems.push(format!("{key}: missing")),
        }
    }
    for (key, (family, kind, _)) in &index {
        if key.starts_with(&format!("{family}_created{{")) {
            problems.push(format!("{key}: OpenMetrics page has a _created sample"));
        }
        if kind == "counter" && !key.starts_with(&format!("{family}_total{{")) {
            problems.push(format!("{key}: counter sample without _total"));
        }
        if key.starts_with("x_total_total") {
            problems.push(format!("{key}: x_total got a second _total"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) with the OpenMetrics page:\n  {}\n--- page ---\n{text}",
        problems.len(),
        problems.join("\n  ")
    );

    // Without the Accept header it is the 0.0.4 text format, counters without `_total`.
    let plain = bridge.get("/metrics").expect("GET /metrics");
    check_text_page(
        &plain,
        "openmetrics = true without an OpenMetrics Accept header",
    );

    // With openmetrics = false, asking for OpenMetrics still gets text.
    let off = Bridge::start(&config("openmetrics = false"), &[]);
    off.send_lines(OM_LINES).expect("sending UDP");
    off.wait_for_value("om_sentinel{}", 1.0);
    let resp = off
        .get_with_headers("/metrics", &[("Accept", ACCEPT_OPENMETRICS)])
        .expect("GET /metrics");
    check_text_page(
        &resp,
        "openmetrics = false with an OpenMetrics Accept header",
    );
}

/// Checks a response is the text format 0.0.4 with the OpenMetrics test lines.
fn check_text_page(resp: &pipeline_tests::http::HttpResponse, case: &str) {
    assert_eq!(resp.status, 200, "{case}");
    assert_eq!(
        resp.header("content-type"),
        Some(TEXT_CONTENT_TYPE),
        "{case}: headers {:?}",
        resp.headers
    );
    let text = resp.text().expect("UTF-8");
    assert!(
        !text.lines().any(|l| l == "# EOF"),
        "{case}: a text page with `# EOF`"
    );
    let map = exposition::series_map(&text).unwrap_or_else(|e| panic!("{case}: {e:#}\n{text}"));
    expect_all(
        &map,
        &[
            ("om_hits{}", 2.0),
            ("x_total{}", 3.0),
            (r#"om_latency_count{route="/api"}"#, 2.0),
        ],
    )
    .unwrap_or_else(|e| panic!("{case}: {e:#}\n{text}"));
    assert!(
        !map.contains_key("om_hits_total{}"),
        "{case}: a counter sample with _total in text format"
    );
}

#[test]
fn openmetrics_stays_valid_for_edge_case_names_and_values() {
    // Lines the bridge accepts (and serves as valid text) that each make the OpenMetrics page
    // invalid if encoded naively. One bridge per case so each failure is attributable; the
    // last field picks the page lines shown when the case fails.
    type Case = (
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
    );
    let cases: &[Case] = &[
        (
            "a histogram with a negative observation (DogStatsD allows negative h/d/ms values)",
            &["omx.delta:-5|h"],
            &["omx_delta"],
        ),
        (
            "counters `x` and `x_total` (both become OpenMetrics family `x`)",
            &["omx.dup:1|c", "omx.dup_total:1|c"],
            &["omx_dup"],
        ),
        (
            "a counter `x` and a gauge `x_total` (both write sample `x_total`)",
            &["omx.mix:1|c", "omx.mix_total:5|g"],
            &["omx_mix"],
        ),
        (
            "a counter named `_total` (empty OpenMetrics family name)",
            &["_total:1|c"],
            &["# HELP  ", "# TYPE  ", "_total "],
        ),
        (
            "a counter named like a self-metric family (`statsd_bridge_lines`)",
            &["statsd_bridge_lines:1|c"],
            &["statsd_bridge_lines ", "statsd_bridge_lines_total"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, lines, shown) in cases {
        let bridge = Bridge::start(&config("openmetrics = true"), &[]);
        bridge.send_lines(lines).expect("sending UDP");
        bridge
            .send_lines(&["omx.sentinel:1|c"])
            .expect("sending UDP");
        let want_lines = (lines.len() + 1) as f64;
        let text_map = bridge.wait_metrics("the lines to be counted", |m| {
            expect(m, "omx_sentinel{}", 1.0)?;
            expect(
                m,
                r#"statsd_bridge_lines_total{transport="udp"}"#,
                want_lines,
            )
        });
        let accepted = text_map
            .iter()
            .filter(|(k, _)| k.starts_with("statsd_bridge_samples_total"))
            .map(|(_, v)| v)
            .sum::<f64>();
        if !values_equal(accepted, want_lines) {
            // The bridge refused a line: then the page can't be wrong about it.
            println!("openmetrics edge case {what}: the bridge refused a line of {lines:?}");
            continue;
        }
        let resp = bridge
            .get_with_headers("/metrics", &[("Accept", ACCEPT_OPENMETRICS)])
            .expect("GET /metrics as OpenMetrics");
        let text = resp.text().expect("UTF-8");
        if let Err(e) = exposition::parse_openmetrics_with_python_client(&text) {
            let page: Vec<&str> = text
                .lines()
                .filter(|l| shown.iter().any(|s| l.contains(s)))
                .collect();
            failures.push(format!(
                "{what}: lines {lines:?}\n    {e:#}\n    page (excerpt):\n      {}",
                page.join("\n      ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases give an invalid OpenMetrics page (the text page is valid for all):\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn gzip_when_accepted() {
    let bridge = Bridge::start(&config(""), &[]);
    bridge
        .send_lines(&["gz_hits:4|c|#env:prod", "gz_temp:21.5|g"])
        .expect("sending UDP");
    bridge.wait_for_value(r#"gz_hits{env="prod"}"#, 4.0);
    bridge.wait_for_value("gz_temp{}", 21.5);

    let zipped = bridge
        .get_with_headers("/metrics", &[("Accept-Encoding", "gzip")])
        .expect("GET /metrics with gzip");
    assert_eq!(zipped.status, 200);
    assert_eq!(
        zipped.header("content-encoding"),
        Some("gzip"),
        "headers: {:?}",
        zipped.headers
    );
    assert!(
        zipped
            .header("vary")
            .is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding")),
        "no `Vary: Accept-Encoding`: {:?}",
        zipped.headers
    );
    assert_eq!(
        zipped.body.get(..2),
        Some(&[0x1f, 0x8b][..]),
        "not a gzip stream"
    );
    let page = gunzip(&zipped.body).expect("decompressing the page");
    let page = String::from_utf8(page).expect("UTF-8 page");
    let map = exposition::series_map(&page).unwrap_or_else(|e| panic!("{e:#}\n{page}"));
    expect_all(
        &map,
        &[(r#"gz_hits{env="prod"}"#, 4.0), ("gz_temp{}", 21.5)],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    println!(
        "gzip: {} bytes compressed to {}",
        page.len(),
        zipped.body.len()
    );
    assert!(zipped.body.len() < page.len());

    let plain = bridge.get("/metrics").expect("GET /metrics");
    assert_eq!(
        plain.header("content-encoding"),
        None,
        "headers: {:?}",
        plain.headers
    );
    let text = plain.text().expect("an uncompressed UTF-8 page");
    assert!(text.contains("gz_hits{env=\"prod\"} 4"), "{text}");
}

/// The reload counters on the page: (success, failure).
fn reloads(bridge: &Bridge) -> Result<(f64, f64)> {
    let m = bridge.metrics_map()?;
    Ok((
        get(
            &m,
            r#"statsd_bridge_config_reloads_total{outcome="success"}"#,
        )?,
        get(
            &m,
            r#"statsd_bridge_config_reloads_total{outcome="failure"}"#,
        )?,
    ))
}

fn wait_reloads(bridge: &Bridge, want: (f64, f64)) {
    eventually(
        &format!("reloads (success, failure) = {want:?}"),
        PATIENCE,
        || {
            let got = reloads(bridge)?;
            ensure!(got == want, "reloads (success, failure) = {got:?}");
            Ok(())
        },
    );
}

#[test]
fn lifecycle_endpoints_and_sighup() {
    let valid = config("enable_lifecycle = true");
    let bridge = Bridge::start(&valid, &[]);
    assert_eq!(reloads(&bridge).expect("scraping"), (0.0, 0.0));

    for path in ["/-/reload", "/-/quit"] {
        let r = bridge.get(path).expect("GET");
        assert_eq!(r.status, 405, "GET {path}: {r:?}");
    }
    bridge
        .process()
        .ensure_running()
        .expect("GET /-/quit must not stop the bridge");

    let r = bridge.post("/-/reload").expect("POST /-/reload");
    assert_eq!(r.status, 200, "POST /-/reload with a valid file: {r:?}");
    wait_reloads(&bridge, (1.0, 0.0));

    // Keep the file's modification time, so the bridge's 2 s file watch doesn't add reloads
    // of its own to the counts this test checks.
    let mtime = pipeline_tests::util::modified(bridge.config_path()).ok();
    pipeline_tests::util::replace_file(
        bridge.config_path(),
        "version = 1\n\n[bridge]\nno_such_key = 1\n",
        mtime,
    )
    .expect("overwriting the config");
    let r = bridge.post("/-/reload").expect("POST /-/reload");
    assert_eq!(r.status, 500, "POST /-/reload with an invalid file: {r:?}");
    wait_reloads(&bridge, (1.0, 1.0));
    // The bridge keeps running on its old config.
    bridge.send_lines(&["life_hits:1|c"]).expect("sending UDP");
    bridge.wait_for_value("life_hits{}", 1.0);

    bridge.process().signal("HUP").expect("SIGHUP");
    wait_reloads(&bridge, (1.0, 2.0));
    pipeline_tests::util::replace_file(bridge.config_path(), &valid, mtime)
        .expect("restoring the config");
    bridge.process().signal("HUP").expect("SIGHUP");
    wait_reloads(&bridge, (2.0, 2.0));
    bridge
        .process()
        .ensure_running()
        .expect("SIGHUP must not stop the bridge");

    let r = bridge.post("/-/quit").expect("POST /-/quit");
    assert_eq!(r.status, 200, "POST /-/quit: {r:?}");
    let status = bridge.wait_exit(scaled(Duration::from_secs(20)));
    assert!(status.success(), "exit after /-/quit: {status}");

    // Disabled: the endpoints don't exist.
    let off = Bridge::start(&config("enable_lifecycle = false"), &[]);
    let mut answers = Vec::new();
    for path in ["/-/reload", "/-/quit"] {
        for method in ["GET", "POST"] {
            let r = pipeline_tests::http::request(off.web_addr(), method, path, &[], b"")
                .expect("request");
            let body = String::from_utf8_lossy(&r.body).trim().to_owned();
            answers.push(format!("{method} {path} → {} {body:?}", r.status));
        }
    }
    off.process()
        .ensure_running()
        .expect("POST /-/quit with enable_lifecycle = false must not stop the bridge");
    assert_eq!(reloads(&off).expect("scraping"), (0.0, 0.0));
    assert!(
        answers.iter().all(|a| a.contains("→ 404 ")),
        "with enable_lifecycle = false the lifecycle endpoints must not exist (404):\n  {}",
        answers.join("\n  ")
    );
}

#[test]
fn statsd_exporter_flags_start_the_bridge() {
    let bridge = Bridge::start_with_flags(&[
        "--statsd.listen-udp=127.0.0.1:0",
        "--statsd.listen-tcp=127.0.0.1:0",
        "--web.listen-address=127.0.0.1:0",
        "--statsd.event-queue-size=10000",
        "--no-statsd.parse-influxdb-tags",
        "--log.format=logfmt",
        "--log.level=debug",
    ]);
    assert_eq!(bridge.ready().udp.len(), 1, "{:?}", bridge.ready());
    assert_eq!(bridge.ready().tcp.len(), 1, "{:?}", bridge.ready());
    bridge
        .send_lines(&["flags_line:1|c|#env:prod", "x,k=v:1|c"])
        .expect("sending UDP");
    bridge.send_tcp(b"flags_tcp:2|c\n").expect("sending TCP");
    let map = bridge.wait_metrics("the lines sent to a flags-only bridge", |m| {
        expect_all(
            m,
            &[
                (r#"flags_line{env="prod"}"#, 1.0),
                ("flags_tcp{}", 2.0),
                ("x_k_v{}", 1.0),
            ],
        )
    });
    let xs: Vec<&String> = map
        .keys()
        .filter(|k| k.starts_with("x{") || k.starts_with("x_k_v{"))
        .collect();
    assert_eq!(
        xs,
        vec!["x_k_v{}"],
        "with --no-statsd.parse-influxdb-tags `x,k=v` must be one label-less series"
    );

    let log = bridge.stderr_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Accepted a statsd_exporter flag that has no effect here."))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "want one ignored-flag warning, got {warnings:#?}\n--- log ---\n{log}"
    );
    assert!(
        warnings[0].contains("--statsd.event-queue-size"),
        "the warning does not name the flag: {}",
        warnings[0]
    );

    // An unknown flag is an error, not a silently running bridge. (Listeners on loopback in
    // case it does start.)
    let mut cmd = Command::new(bin("statsd-bridge"));
    cmd.args([
        "--statsd.no-such-flag",
        "--statsd.listen-udp=127.0.0.1:0",
        "--statsd.listen-tcp=",
        "--web.listen-address=127.0.0.1:0",
    ])
    .env_remove("STATSD_BRIDGE_CONFIG");
    let child = ChildGuard::spawn("statsd-bridge-bad-flag", cmd).expect("starting");
    let status = child
        .wait_timeout(scaled(Duration::from_secs(10)))
        .expect("waiting")
        .unwrap_or_else(|| panic!("statsd-bridge --statsd.no-such-flag is still running"));
    assert!(
        !status.success(),
        "statsd-bridge --statsd.no-such-flag exited with {status}"
    );
    let err = std::fs::read_to_string(child.stderr_path()).unwrap_or_default();
    assert!(
        err.contains("no-such-flag"),
        "the error does not name the flag: {err}"
    );
}

/// Blasts `load_test:1|c` at the bridge over UDP and one TCP connection until `stop`,
/// counting datagrams sent in `udp_sent` and lines written in `tcp_sent`.
fn blast(
    udp: SocketAddr,
    tcp: SocketAddr,
    stop: &Arc<AtomicBool>,
    udp_sent: &Arc<AtomicU64>,
    tcp_sent: &Arc<AtomicU64>,
) -> Vec<thread::JoinHandle<()>> {
    let udp_thread = {
        let (stop, sent) = (Arc::clone(stop), Arc::clone(udp_sent));
        thread::spawn(move || {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("binding");
            while !stop.load(Ordering::Relaxed) {
                // Refused or full buffers once the bridge stops: keep going until told.
                if socket.send_to(b"load_test:1|c", udp).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let tcp_thread = {
        let (stop, sent) = (Arc::clone(stop), Arc::clone(tcp_sent));
        thread::spawn(move || {
            const PER_WRITE: u64 = 100;
            let chunk = "load_test:1|c\n".repeat(PER_WRITE as usize);
            let Ok(mut stream) = TcpStream::connect(tcp) else {
                return;
            };
            let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
            while !stop.load(Ordering::Relaxed) {
                match stream.write_all(chunk.as_bytes()) {
                    Ok(()) => {
                        sent.fetch_add(PER_WRITE, Ordering::Relaxed);
                    }
                    // The bridge closed the connection (shutdown) or stopped reading.
                    Err(_) => return,
                }
            }
        })
    };
    vec![udp_thread, tcp_thread]
}

#[test]
fn shutdown_under_load_loses_nothing_accepted() {
    let bridge = Bridge::start(&config("shutdown_grace = \"3s\""), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(Arc::clone(&stop));
    let udp_sent = Arc::new(AtomicU64::new(0));
    let tcp_sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads = blast(
        bridge.udp_addr(),
        bridge.tcp_addr(),
        &stop,
        &udp_sent,
        &tcp_sent,
    );
    // Make sure the load lands on both transports before stopping.
    bridge.wait_metrics("load on both transports", |m| {
        ensure!(get(m, "load_test{}")? > 0.0, "no load yet");
        ensure!(
            get(m, r#"statsd_bridge_lines_total{transport="udp"}"#)? > 0.0
                && get(m, r#"statsd_bridge_lines_total{transport="tcp"}"#)? > 0.0,
            "load on one transport only"
        );
        Ok(())
    });
    let sent_at_sigterm = udp_sent.load(Ordering::SeqCst) + tcp_sent.load(Ordering::SeqCst);
    bridge.sigterm().expect("SIGTERM");
    let sigterm_at = Instant::now();

    eventually("/readyz to answer 503", PATIENCE, || {
        let r = bridge.get("/readyz")?;
        ensure!(r.status == 503, "/readyz answers {}", r.status);
        Ok(())
    });
    // Keep sending while the listeners stop and drain, as clients do while a pod terminates:
    // at least ~1 s of load in all, and at most DRAIN_UNDER_LOAD after SIGTERM.
    const DRAIN_UNDER_LOAD: Duration = Duration::from_secs(3);
    let drained_log = || bridge.stderr_text().contains("Listeners drained");
    let lines_now = || -> String {
        match http_metrics(bridge.web_addr()) {
            Ok(m) => format!(
                "lines udp = {:?}, tcp = {:?}",
                m.get(r#"statsd_bridge_lines_total{transport="udp"}"#),
                m.get(r#"statsd_bridge_lines_total{transport="tcp"}"#)
            ),
            Err(e) => format!("scrape failed: {e:#}"),
        }
    };
    let mut progress = vec![format!("at 503: {}", lines_now())];
    let mut drained_under_load = None;
    while sigterm_at.elapsed() < scaled(DRAIN_UNDER_LOAD)
        || started.elapsed() < Duration::from_secs(1)
    {
        if drained_log() && started.elapsed() >= Duration::from_secs(1) {
            drained_under_load = Some(sigterm_at.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    if drained_under_load.is_none() {
        progress.push(format!(
            "{:.1?} after SIGTERM, load still on: {}",
            sigterm_at.elapsed(),
            lines_now()
        ));
    }
    let sent_before_stop = udp_sent.load(Ordering::SeqCst) + tcp_sent.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let load_stopped_at = Instant::now();
    for t in threads {
        t.join().expect("a sender thread panicked");
    }
    let sent_total = udp_sent.load(Ordering::SeqCst) + tcp_sent.load(Ordering::SeqCst);
    assert!(
        sent_before_stop > sent_at_sigterm,
        "the senders had stopped before SIGTERM"
    );
    let drained = eventually(
        "the listeners to drain (\"Listeners drained\" in the log)",
        Duration::from_secs(10),
        || {
            bridge.process().ensure_running()?;
            ensure!(
                drained_log(),
                "not drained yet ({:.1?} after SIGTERM)",
                sigterm_at.elapsed()
            );
            Ok(sigterm_at.elapsed())
        },
    );
    if drained_under_load.is_none() {
        progress.push(format!(
            "drained {:.1?} after SIGTERM, {:.1?} after the load stopped",
            drained,
            load_stopped_at.elapsed()
        ));
    }

    // Every scrape during the grace period: what was counted as accepted is on the page.
    let mut scrapes = 0;
    let mut last: Option<BTreeMap<String, f64>> = None;
    let mut first_after_drain: Option<BTreeMap<String, f64>> = None;
    loop {
        match bridge.process().try_status().expect("polling") {
            Some(_) => break,
            None => {
                if let Ok(map) = http_metrics(bridge.web_addr()) {
                    scrapes += 1;
                    first_after_drain.get_or_insert_with(|| map.clone());
                    last = Some(map);
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        assert!(
            sigterm_at.elapsed() < scaled(Duration::from_secs(20)),
            "statsd-bridge still running 20 s after SIGTERM"
        );
    }
    let status = bridge.wait_exit(Duration::from_secs(1));
    assert!(status.success(), "exit after SIGTERM under load: {status}");
    let first = first_after_drain.expect("no scrape succeeded during the grace period");
    let last = last.expect("no scrape");
    for (which, map) in [
        ("first scrape after the drain", &first),
        ("last scrape", &last),
    ] {
        let value = get(map, "load_test{}").expect("load_test");
        let accepted = get(map, r#"statsd_bridge_samples_total{type="counter"}"#).expect("samples");
        println!(
            "shutdown: {which}: load_test = {value}, accepted counter samples = {accepted}, \
             lines udp = {:?} tcp = {:?}",
            map.get(r#"statsd_bridge_lines_total{transport="udp"}"#),
            map.get(r#"statsd_bridge_lines_total{transport="tcp"}"#)
        );
        assert!(value > 0.0, "{which}: load_test is {value}");
        assert_eq!(
            value, accepted,
            "{which}: load_test = {value} but the bridge counted {accepted} accepted counter samples"
        );
        assert!(
            value <= sent_total as f64,
            "{which}: load_test = {value} > {sent_total} sent"
        );
    }
    assert_eq!(
        user_series(&first),
        user_series(&last),
        "the page changed during the grace period after the drain"
    );
    println!(
        "shutdown: {} UDP datagrams and {} TCP lines sent",
        udp_sent.load(Ordering::SeqCst),
        tcp_sent.load(Ordering::SeqCst)
    );
    println!(
        "shutdown: {sent_at_sigterm} lines sent before SIGTERM, {sent_total} in all; drained \
         {drained:.1?} after SIGTERM; {scrapes} scrapes in the grace period; exited {:.1?} after \
         SIGTERM",
        sigterm_at.elapsed()
    );
    assert!(
        drained_under_load.is_some(),
        "the listeners did not finish draining within {DRAIN_UNDER_LOAD:?} of SIGTERM while \
         clients kept sending: shutdown waits for the clients to stop.\n  {}",
        progress.join("\n  ")
    );
}

/// `/metrics` as a map, without the running check of [`Bridge::metrics_map`] (the bridge may
/// exit between scrapes).
fn http_metrics(addr: SocketAddr) -> Result<BTreeMap<String, f64>> {
    let r = pipeline_tests::http::get(addr, "/metrics")?;
    ensure!(r.status == 200, "status {}", r.status);
    exposition::series_map(&r.text()?).context("parsing the page")
}
