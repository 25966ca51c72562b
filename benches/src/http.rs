//! A tiny blocking HTTP/1.0 `GET` for metrics pages on loopback: no keep-alive, no gzip, the
//! whole body read, chunked bodies decoded in case a server sends one anyway.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The body, decoded if it was chunked.
    pub body: Vec<u8>,
    /// From connect to the last byte read.
    pub elapsed: Duration,
}

/// `GET path` from `addr` (loopback only), with `timeout` for the connect and each read.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<Response> {
    if !addr.ip().is_loopback() {
        bail!("only loopback addresses are scraped, not {addr}");
    }
    let start = Instant::now();
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::with_capacity(1 << 16);
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("read the response of {addr}{path}"))?;
    let elapsed = start.elapsed();
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(raw.get(..head_end).unwrap_or(&[])).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status code")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = raw.get(head_end + 4..).unwrap_or(&[]);
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok(Response {
        status,
        body,
        elapsed,
    })
}

/// Decodes a chunked body.
fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk header")?;
        let size_text = String::from_utf8_lossy(data.get(..eol).unwrap_or(&[])).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        data = data.get(eol + 2..).unwrap_or(&[]);
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).context("short chunk")?);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
}

/// Sums the values of the samples of `name` on a text exposition page whose labels contain
/// every one of `label_filters` (e.g. `transport="udp"`). Returns `None` when no sample
/// matched.
pub fn sum_samples(page: &str, name: &str, label_filters: &[&str]) -> Option<f64> {
    let mut total = None;
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            match r.rsplit_once('}') {
                Some((labels, v)) => (labels, v),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        if !label_filters.iter().all(|f| labels.contains(f)) {
            continue;
        }
        let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        if v.is_finite() {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_matching_samples() {
        let page = "# HELP x\nstatsd_bridge_lines_total{transport=\"udp\"} 12\n\
                    statsd_bridge_lines_total{transport=\"tcp\"} 3\n\
                    statsd_bridge_lines_total_other 5\n\
                    collectd_statsd_derive_total{statsd=\"bench.requests.s1\",instance=\"vm\"} 6 1795441436968\n\
                    collectd_statsd_derive_total{statsd=\"bench.requests.s2\",instance=\"vm\"} 3 1795441436968\n\
                    collectd_statsd_derive_total{statsd=\"other\",instance=\"vm\"} 100\n\
                    plain 7\n";
        assert_eq!(
            sum_samples(page, "statsd_bridge_lines_total", &["transport=\"udp\""]),
            Some(12.0)
        );
        assert_eq!(
            sum_samples(page, "statsd_bridge_lines_total", &[]),
            Some(15.0)
        );
        assert_eq!(
            sum_samples(page, "collectd_statsd_derive_total", &["statsd=\"bench."]),
            Some(9.0)
        );
        assert_eq!(sum_samples(page, "plain", &[]), Some(7.0));
        assert_eq!(sum_samples(page, "missing", &[]), None);
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
    }
}
