//! Datagram in, store updated, self-metrics counted: the glue between the parser and the
//! store that every listener calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::aggregate::{Outcome, Rejection, Scratch, Store};
use crate::protocol::{self, Line, MetricType, ParseError, ParseOptions};
use crate::relay::Relay;
use crate::telemetry::{Telemetry, Transport};

/// What one line did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LineResult {
    /// Applied to the store.
    Accepted {
        /// Counts for the self-metrics.
        outcome: Outcome,
        /// The StatsD type, or `None` for events and service checks.
        kind: Option<MetricType>,
        /// The line's sample rate was invalid and read as 1.
        rate_invalid: bool,
    },
    /// The event or service check was applied.
    AcceptedEvent(Outcome),
    /// The service check was applied.
    AcceptedServiceCheck(Outcome),
    /// The parser rejected it.
    Rejected(ParseError),
    /// The store refused it.
    Dropped(Rejection),
}

/// Parses one line and applies it to the store. Pure apart from the store.
pub fn ingest_line(
    store: &Store,
    line: &[u8],
    opts: &ParseOptions,
    scratch: &mut Scratch,
    now: Instant,
) -> LineResult {
    match protocol::parse_line(line, opts) {
        Err(e) => LineResult::Rejected(e),
        Ok(Line::Metric(s)) => match store.ingest_sample(&s, scratch, now) {
            Ok(outcome) => LineResult::Accepted {
                outcome,
                kind: Some(s.kind),
                rate_invalid: s.rate_invalid,
            },
            Err(r) => LineResult::Dropped(r),
        },
        Ok(Line::Event(e)) => match store.ingest_event(&e, scratch, now) {
            Ok(outcome) => LineResult::AcceptedEvent(outcome),
            Err(r) => LineResult::Dropped(r),
        },
        Ok(Line::ServiceCheck(sc)) => match store.ingest_service_check(&sc, scratch, now) {
            Ok(outcome) => LineResult::AcceptedServiceCheck(outcome),
            Err(r) => LineResult::Dropped(r),
        },
    }
}

/// Shared by every listener: the store, parse options and self-metrics.
#[derive(Debug)]
pub struct Ingester {
    /// The series store.
    pub store: Arc<Store>,
    /// Which tag styles are read.
    pub opts: ParseOptions,
    /// Self-metrics.
    pub telemetry: Arc<Telemetry>,
    /// Where received lines are forwarded, if anywhere.
    pub relay: Option<Relay>,
    log_limit: RateLimit,
}

impl Ingester {
    /// Builds an ingester.
    pub fn new(
        store: Arc<Store>,
        opts: ParseOptions,
        telemetry: Arc<Telemetry>,
        relay: Option<Relay>,
    ) -> Self {
        Self {
            store,
            opts,
            telemetry,
            relay,
            log_limit: RateLimit::new(1_000),
        }
    }

    /// Applies every line of a datagram (or a TCP chunk of whole lines).
    pub fn datagram(&self, bytes: &[u8], transport: Transport, scratch: &mut Scratch) {
        let counters = self.telemetry.transport(transport);
        counters.packets.inc();
        counters.bytes.inc_by(bytes.len() as u64);
        let now = Instant::now();
        for line in protocol::lines(bytes) {
            self.line(line, transport, scratch, now);
        }
    }

    /// Applies one line (without its line ending).
    pub fn line(&self, line: &[u8], transport: Transport, scratch: &mut Scratch, now: Instant) {
        let t = &self.telemetry;
        t.transport(transport).lines.inc();
        if let Some(relay) = &self.relay {
            relay.line(line);
        }
        let outcome = match ingest_line(&self.store, line, &self.opts, scratch, now) {
            LineResult::Accepted {
                outcome,
                kind,
                rate_invalid,
            } => {
                if let Some(kind) = kind {
                    t.samples(kind, outcome.samples);
                }
                if rate_invalid {
                    t.sample_rate_invalid.inc();
                }
                outcome
            }
            LineResult::AcceptedEvent(outcome) => {
                t.events.inc();
                outcome
            }
            LineResult::AcceptedServiceCheck(outcome) => {
                t.service_checks.inc();
                outcome
            }
            LineResult::Rejected(e) => {
                t.line_rejected(e);
                self.log_limit.run(|suppressed| {
                    tracing::warn!(
                        transport = transport.as_str(),
                        reason = e.reason(),
                        error = %e,
                        line = %String::from_utf8_lossy(line.get(..200).unwrap_or(line)),
                        suppressed,
                        "Rejected a malformed line."
                    );
                });
                return;
            }
            LineResult::Dropped(r) => {
                t.sample_dropped(r);
                self.log_limit.run(|suppressed| {
                    tracing::warn!(
                        transport = transport.as_str(),
                        reason = r.reason(),
                        error = %r,
                        line = %String::from_utf8_lossy(line.get(..200).unwrap_or(line)),
                        suppressed,
                        "Dropped a line the store refused."
                    );
                });
                return;
            }
        };
        if outcome.tags_skipped > 0 {
            t.tags_skipped.inc_by(u64::from(outcome.tags_skipped));
        }
        if outcome.labels_renamed > 0 {
            t.labels_renamed.inc_by(u64::from(outcome.labels_renamed));
        }
        if outcome.new_series {
            t.series_created.inc();
        }
    }
}

/// Lets one log line through per period and counts the ones it held back.
#[derive(Debug)]
struct RateLimit {
    period_ms: u64,
    start: Instant,
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    fn new(period_ms: u64) -> Self {
        Self {
            period_ms,
            start: Instant::now(),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    fn run(&self, log: impl FnOnce(u64)) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.period_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            log(self.suppressed.swap(0, Ordering::Relaxed));
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
