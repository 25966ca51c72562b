//! A blocking HTTP/1.1 client with keep-alive, over plain TCP or TLS, for measuring request
//! latency: one connection is reused, as the HPA controller's client reuses its own, so a
//! request's time is the server's work plus one loopback round trip, not a handshake.
//!
//! The adapter's serving certificate is self-signed, so TLS skips verification; the harness
//! only talks to loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::tls::AnyServerCert;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// Most a response body may hold (a 1M-series `/api/v1/series` answer fits).
const MAX_BODY: usize = 512 << 20;

/// A response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// From writing the request to the last body byte.
    pub elapsed: Duration,
}

impl Reply {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

enum Stream {
    Plain(BufReader<TcpStream>),
    Tls(Box<BufReader<StreamOwned<ClientConnection, TcpStream>>>),
}

impl Stream {
    fn reader(&mut self) -> &mut dyn BufRead {
        match self {
            Stream::Plain(r) => r,
            Stream::Tls(r) => r.as_mut(),
        }
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Stream::Plain(r) => r.get_mut(),
            Stream::Tls(r) => r.get_mut(),
        }
    }
}

/// One keep-alive connection to one server, reopened when the server closes it.
pub struct Client {
    addr: SocketAddr,
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
    stream: Option<Stream>,
}

impl Client {
    /// Plain HTTP to `addr` (loopback only).
    pub fn plain(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Client> {
        Self::new(addr, None, timeout)
    }

    /// HTTPS to `addr` (loopback only), without verifying the certificate.
    pub fn tls(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Client> {
        Self::new(addr, Some(insecure_config()), timeout)
    }

    fn new(
        addr: SocketAddr,
        tls: Option<Arc<ClientConfig>>,
        timeout: Duration,
    ) -> anyhow::Result<Client> {
        if !addr.ip().is_loopback() {
            bail!("the harness only talks to loopback, not {addr}");
        }
        Ok(Client {
            addr,
            tls,
            timeout,
            stream: None,
        })
    }

    /// `GET path`; a request on a reused connection that the server had closed is retried
    /// once on a new one.
    pub fn get(&mut self, path: &str) -> anyhow::Result<Reply> {
        let reused = self.stream.is_some();
        match self.try_get(path) {
            Ok(r) => Ok(r),
            Err(_) if reused => {
                self.stream = None;
                self.try_get(path)
            }
            Err(e) => Err(e),
        }
    }

    fn try_get(&mut self, path: &str) -> anyhow::Result<Reply> {
        if self.stream.is_none() {
            self.stream = Some(self.connect()?);
        }
        let Some(stream) = self.stream.as_mut() else {
            bail!("no connection");
        };
        let start = Instant::now();
        let result = exchange(stream, &self.addr, path);
        let elapsed = start.elapsed();
        match result {
            Ok((status, body, keep)) => {
                if !keep {
                    self.stream = None;
                }
                Ok(Reply {
                    status,
                    body,
                    elapsed,
                })
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    fn connect(&self) -> anyhow::Result<Stream> {
        let tcp = TcpStream::connect_timeout(&self.addr, self.timeout)
            .with_context(|| format!("connect {}", self.addr))?;
        tcp.set_read_timeout(Some(self.timeout))?;
        tcp.set_write_timeout(Some(self.timeout))?;
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            None => Stream::Plain(BufReader::with_capacity(1 << 16, tcp)),
            Some(config) => {
                let name = ServerName::IpAddress(self.addr.ip().into());
                let conn = ClientConnection::new(Arc::clone(config), name)?;
                Stream::Tls(Box::new(BufReader::with_capacity(
                    1 << 16,
                    StreamOwned::new(conn, tcp),
                )))
            }
        })
    }
}

/// Writes one request and reads its response: (status, body, whether the connection stays).
fn exchange(
    stream: &mut Stream,
    addr: &SocketAddr,
    path: &str,
) -> anyhow::Result<(u16, Vec<u8>, bool)> {
    let w = stream.writer();
    write!(
        w,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json, */*\r\nUser-Agent: adapter-harness\r\n\r\n"
    )?;
    w.flush()?;
    let r = stream.reader();
    let mut line = String::new();
    r.read_line(&mut line).context("read the status line")?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    let mut keep = true;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("connection closed in the headers");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => keep = !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let body = if chunked {
        read_chunked(r)?
    } else if let Some(n) = length {
        if n > MAX_BODY {
            bail!("a {n}-byte body is over the harness' limit");
        }
        let mut body = vec![0; n];
        r.read_exact(&mut body)?;
        body
    } else {
        keep = false;
        let mut body = Vec::new();
        r.take(MAX_BODY as u64).read_to_end(&mut body)?;
        body
    };
    Ok((status, body, keep))
}

fn read_chunked(r: &mut dyn BufRead) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .with_context(|| format!("bad chunk size {line:?}"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            bail!("chunked body over the harness' limit");
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(body.get_mut(start..).unwrap_or_default())?;
        line.clear();
        r.read_line(&mut line)?;
    }
}

fn insecure_config() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| unreachable!("ring supports the default versions: {e}"))
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert::new(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_chunked_bodies_with_trailers() {
        let mut r: &[u8] = b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(read_chunked(&mut r).unwrap(), b"abcde");
    }

    #[test]
    fn refuses_other_hosts() {
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert!(Client::plain(addr, Duration::from_secs(1)).is_err());
    }
}
