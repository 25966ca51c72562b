//! Decoding the Prometheus HTTP API's JSON answers (sans-IO).
//!
//! Success: `{"status":"success","data":…,"warnings":[…],"infos":[…]}`; VictoriaMetrics adds
//! `"isPartial"` and `"stats"`, Prometheus adds `data.stats` with `stats=all`: everything not
//! needed is ignored. Error: `{"status":"error","errorType":"bad_data","error":"…"}` with a
//! 4xx/5xx status. Sample values stay the strings sent (`"NaN"`, `"+Inf"`, `"1e+21"`); callers
//! decide how to turn them into quantities. Nothing here panics on any input.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{Labels, PromError, QueryResult, Sample};

/// The most of a non-API error body kept in [`PromError::Http`].
pub const MAX_ERROR_BODY: usize = 512;

/// The `data` of an `/api/v1/query` answer as Prometheus writes it, for `explain`.
pub fn data_json(result: &QueryResult) -> serde_json::Value {
    use serde_json::json;
    let sample = |s: &Sample| json!({"metric": s.labels, "value": [s.timestamp, s.value]});
    match result {
        QueryResult::Vector(samples) => {
            json!({"resultType": "vector", "result": samples.iter().map(sample).collect::<Vec<_>>()})
        }
        QueryResult::Scalar { timestamp, value } => {
            json!({"resultType": "scalar", "result": [timestamp, value]})
        }
        QueryResult::Matrix(series) => json!({
            "resultType": "matrix",
            "result": series.iter().map(|l| json!({"metric": l, "values": "(not kept)"})).collect::<Vec<_>>()
        }),
        QueryResult::String { timestamp, value } => {
            json!({"resultType": "string", "result": [timestamp, value]})
        }
    }
}

/// Decodes a 2xx answer of `/api/v1/query`.
pub fn decode_query(status: u16, body: &[u8]) -> Result<QueryResult, PromError> {
    let env: Envelope<QueryData> = decode_envelope(status, body)?;
    let data = env
        .data
        .ok_or_else(|| decode("success answer without \"data\""))?;
    Ok(match data {
        QueryData::Vector(samples) => QueryResult::Vector(
            samples
                .into_iter()
                .map(|s| match s.value {
                    Some(Point(timestamp, value)) => Ok(Sample {
                        labels: s.metric,
                        timestamp,
                        value,
                    }),
                    None if s.histogram.is_some() => Err(decode(
                        "native histogram samples are not supported; query a float series",
                    )),
                    None => Err(decode("vector sample without \"value\"")),
                })
                .collect::<Result<_, _>>()?,
        ),
        QueryData::Scalar(Point(timestamp, value)) => QueryResult::Scalar { timestamp, value },
        QueryData::String(Point(timestamp, value)) => QueryResult::String { timestamp, value },
        QueryData::Matrix(series) => {
            QueryResult::Matrix(series.into_iter().map(|s| s.metric).collect())
        }
    })
}

/// Decodes a 2xx answer of `/api/v1/series`.
pub fn decode_series(status: u16, body: &[u8]) -> Result<Vec<Labels>, PromError> {
    let env: Envelope<Vec<Labels>> = decode_envelope(status, body)?;
    env.data
        .ok_or_else(|| decode("success answer without \"data\""))
}

/// Decodes a 2xx answer of `/api/v1/series` into its shapes: each distinct (`__name__`, label
/// names) once, in first-seen order, with every other label's value empty. Discovery needs
/// no more, and decoded this way a million series cost their answer's bytes and a few maps,
/// not a million maps.
pub fn decode_series_shapes(status: u16, body: &[u8]) -> Result<Vec<Labels>, PromError> {
    let env: Envelope<Shapes> = decode_envelope(status, body)?;
    env.data
        .map(|s| s.0)
        .ok_or_else(|| decode("success answer without \"data\""))
}

/// [`decode_series_shapes`] of series already decoded.
pub fn shapes_of(series: Vec<Labels>) -> Vec<Labels> {
    let mut shapes = ShapeSet::default();
    for labels in series {
        shapes.add(
            labels
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k), Cow::Owned(v))),
        );
    }
    shapes.list
}

/// The shapes seen so far, and the key of each.
#[derive(Default)]
struct ShapeSet {
    seen: HashSet<String>,
    list: Vec<Labels>,
    key: String,
}

impl ShapeSet {
    fn add<'a>(&mut self, labels: impl IntoIterator<Item = (Cow<'a, str>, Cow<'a, str>)>) {
        let mut pairs: Vec<(Cow<'a, str>, Cow<'a, str>)> = labels.into_iter().collect();
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.key.clear();
        for (k, v) in &pairs {
            self.key.push_str(k);
            if k == "__name__" {
                self.key.push('=');
                self.key.push_str(v);
            }
            // Label names can't hold a NUL; values can, but only the name's is in the key,
            // behind its `=`.
            self.key.push('\0');
        }
        if self.seen.contains(self.key.as_str()) {
            return;
        }
        self.seen.insert(self.key.clone());
        self.list.push(
            pairs
                .into_iter()
                .map(|(k, v)| {
                    let v = if k == "__name__" {
                        v.into_owned()
                    } else {
                        String::new()
                    };
                    (k.into_owned(), v)
                })
                .collect(),
        );
    }
}

/// `data` of a series answer, folded into shapes while it is read.
struct Shapes(Vec<Labels>);

impl<'de> Deserialize<'de> for Shapes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = Shapes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of label sets")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shapes, A::Error> {
                let mut shapes = ShapeSet::default();
                while let Some(Series(pairs)) = seq.next_element::<Series<'de>>()? {
                    shapes.add(pairs);
                }
                Ok(Shapes(shapes.list))
            }
        }
        d.deserialize_seq(List)
    }
}

/// One label set, its strings borrowed from the answer unless escaped.
struct Series<'de>(Vec<(Cow<'de, str>, Cow<'de, str>)>);

impl<'de> Deserialize<'de> for Series<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Map;
        impl<'de> Visitor<'de> for Map {
            type Value = Series<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a label set")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Series<'de>, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Text(k), Text(v))) = map.next_entry::<Text<'de>, Text<'de>>()? {
                    pairs.push((k, v));
                }
                Ok(Series(pairs))
            }
        }
        d.deserialize_map(Map)
    }
}

/// A string, borrowed when the JSON holds it without escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Str;
        impl<'de> Visitor<'de> for Str {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(Str)
    }
}

/// Turns a non-2xx answer into [`PromError::Api`] when the body is the API's error JSON, else
/// into [`PromError::Http`] with the start of the body.
pub fn decode_error(status: u16, body: &[u8]) -> PromError {
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(ErrorEnvelope {
            status: s,
            error_type: Some(error_type),
            error,
        }) if s == "error" => PromError::Api {
            status,
            error_type,
            error: error.unwrap_or_default(),
        },
        _ => PromError::Http {
            status,
            body: truncate_body(body),
        },
    }
}

/// The body as (lossy) UTF-8, trimmed, cut to at most [`MAX_ERROR_BODY`] bytes on a character
/// boundary.
pub fn truncate_body(body: &[u8]) -> String {
    let head = body.get(..MAX_ERROR_BODY + 4).unwrap_or(body);
    let mut text = String::from_utf8_lossy(head).trim().to_owned();
    if text.len() > MAX_ERROR_BODY {
        let mut cut = MAX_ERROR_BODY;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

fn decode(reason: impl Into<String>) -> PromError {
    PromError::Decode {
        reason: reason.into(),
    }
}

/// Parses the envelope; a `status: error` body (some proxies send it with 200) becomes
/// [`PromError::Api`] even when its `data` doesn't have the success shape.
fn decode_envelope<'de, T: Deserialize<'de>>(
    status: u16,
    body: &'de [u8],
) -> Result<Envelope<T>, PromError> {
    match serde_json::from_slice::<Envelope<T>>(body) {
        Ok(env) if env.status == "success" => Ok(env),
        Ok(env) if env.status == "error" => Err(PromError::Api {
            status,
            error_type: env.error_type.unwrap_or_default(),
            error: env.error.unwrap_or_default(),
        }),
        Ok(env) => Err(decode(format!("unknown status {:?}", env.status))),
        Err(e) => match serde_json::from_slice::<ErrorEnvelope>(body) {
            Ok(err) if err.status == "error" => Err(PromError::Api {
                status,
                error_type: err.error_type.unwrap_or_default(),
                error: err.error.unwrap_or_default(),
            }),
            _ => Err(decode(format!("not the prometheus api's json: {e}"))),
        },
    }
}

#[derive(Deserialize)]
struct Envelope<T> {
    status: String,
    data: Option<T>,
    #[serde(rename = "errorType", default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    status: String,
    #[serde(rename = "errorType", default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum QueryData {
    Vector(Vec<WireSample>),
    Scalar(Point),
    Matrix(Vec<WireSeries>),
    String(Point),
}

#[derive(Deserialize)]
struct WireSample {
    #[serde(default)]
    metric: Labels,
    #[serde(default)]
    value: Option<Point>,
    #[serde(default)]
    histogram: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct WireSeries {
    #[serde(default)]
    metric: Labels,
}

/// `[<unix seconds>, "<value>"]`.
#[derive(Deserialize)]
struct Point(f64, String);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sample(pairs: &[(&str, &str)], timestamp: f64, value: &str) -> Sample {
        Sample {
            labels: labels(pairs),
            timestamp,
            value: value.to_owned(),
        }
    }

    /// Decodes `body` as a query answer and compares, or expects a `Decode` error whose reason
    /// contains the given text.
    fn check_query(body: &str, expected: Result<QueryResult, &str>) {
        let got = decode_query(200, body.as_bytes());
        match (got, expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "body: {body}"),
            (Err(PromError::Decode { reason }), Err(want)) => {
                assert!(reason.contains(want), "reason {reason:?} lacks {want:?}")
            }
            (got, want) => panic!("body {body}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn vector() {
        check_query(
            r#"{"status":"success","data":{"resultType":"vector","result":[
                {"metric":{"__name__":"up","job":"prometheus","instance":"localhost:9090"},"value":[1435781451.781,"1"]},
                {"metric":{"__name__":"up","job":"node","instance":"localhost:9100"},"value":[1435781451.781,"0"]}]}}"#,
            Ok(QueryResult::Vector(vec![
                sample(
                    &[
                        ("__name__", "up"),
                        ("job", "prometheus"),
                        ("instance", "localhost:9090"),
                    ],
                    1435781451.781,
                    "1",
                ),
                sample(
                    &[
                        ("__name__", "up"),
                        ("job", "node"),
                        ("instance", "localhost:9100"),
                    ],
                    1435781451.781,
                    "0",
                ),
            ])),
        );
    }

    #[test]
    fn special_values_and_exponents_are_kept_as_sent() {
        for v in ["NaN", "+Inf", "-Inf", "1e+21", "0.30000000000000004", "-0"] {
            check_query(
                &format!(
                    r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1700000000,"{v}"]}}]}}}}"#
                ),
                Ok(QueryResult::Vector(vec![sample(&[], 1700000000.0, v)])),
            );
        }
    }

    #[test]
    fn empty_vector() {
        check_query(
            r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
            Ok(QueryResult::Vector(vec![])),
        );
    }

    #[test]
    fn scalar_and_string() {
        check_query(
            r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.5,"42"]}}"#,
            Ok(QueryResult::Scalar {
                timestamp: 1700000000.5,
                value: "42".into(),
            }),
        );
        check_query(
            r#"{"status":"success","data":{"resultType":"string","result":[1700000000,"hello"]}}"#,
            Ok(QueryResult::String {
                timestamp: 1700000000.0,
                value: "hello".into(),
            }),
        );
    }

    #[test]
    fn matrix_keeps_label_sets() {
        check_query(
            r#"{"status":"success","data":{"resultType":"matrix","result":[
                {"metric":{"__name__":"up","job":"prometheus"},"values":[[1435781430.781,"1"],[1435781445.781,"1"]]},
                {"metric":{"__name__":"up","job":"node"},"values":[[1435781430.781,"0"]]}]}}"#,
            Ok(QueryResult::Matrix(vec![
                labels(&[("__name__", "up"), ("job", "prometheus")]),
                labels(&[("__name__", "up"), ("job", "node")]),
            ])),
        );
    }

    #[test]
    fn warnings_infos_and_stats_are_ignored() {
        // Prometheus 2.x/3.x with warnings, infos and `stats=all` inside data.
        check_query(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"pod":"a"},"value":[1700000000.123,"2.5"]}],
                "stats":{"timings":{"evalTotalTime":0.0001},"samples":{"totalQueryableSamples":1,"peakSamples":1}}},
                "warnings":["PromQL warning: encountered a mix of histograms and floats"],"infos":["PromQL info: metric might not be a counter"]}"#,
            Ok(QueryResult::Vector(vec![sample(
                &[("pod", "a")],
                1700000000.123,
                "2.5",
            )])),
        );
    }

    #[test]
    fn victoriametrics_bodies() {
        // VictoriaMetrics: `isPartial` before `data`, `stats` after, integer timestamps.
        check_query(
            r#"{"status":"success","isPartial":false,"data":{"resultType":"vector","result":[{"metric":{"__name__":"http_requests_total","pod":"web-1"},"value":[1700000000,"17"]}]},"stats":{"seriesFetched": "1","executionTimeMsec":0}}"#,
            Ok(QueryResult::Vector(vec![sample(
                &[("__name__", "http_requests_total"), ("pod", "web-1")],
                1700000000.0,
                "17",
            )])),
        );
        let series = decode_series(
            200,
            br#"{"status":"success","isPartial":false,"data":[{"__name__":"up","job":"vm"}]}"#,
        );
        assert_eq!(
            series,
            Ok(vec![labels(&[("__name__", "up"), ("job", "vm")])])
        );
    }

    #[test]
    fn result_type_may_follow_result() {
        check_query(
            r#"{"data":{"result":[1700000000,"1"],"resultType":"scalar"},"status":"success"}"#,
            Ok(QueryResult::Scalar {
                timestamp: 1700000000.0,
                value: "1".into(),
            }),
        );
    }

    #[test]
    fn malformed_bodies_are_decode_errors() {
        check_query("", Err("not the prometheus api's json"));
        check_query("<html>hello</html>", Err("not the prometheus api's json"));
        check_query(r#"{"status":"success"}"#, Err("without \"data\""));
        check_query(r#"{"status":"weird","data":null}"#, Err("unknown status"));
        check_query(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,1]}]}}"#,
            Err("not the prometheus api's json"),
        );
        check_query(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1]}]}}"#,
            Err("not the prometheus api's json"),
        );
        check_query(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{}}]}}"#,
            Err("without \"value\""),
        );
        check_query(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"histogram":[1,{"count":"1","sum":"1"}]}]}}"#,
            Err("native histogram"),
        );
        check_query(
            r#"{"status":"success","data":{"resultType":"tensor","result":[]}}"#,
            Err("not the prometheus api's json"),
        );
        check_query(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":1},"value":[1,"1"]}]}}"#,
            Err("not the prometheus api's json"),
        );
    }

    #[test]
    fn series_shapes_fold_series_of_one_name_and_label_names() {
        let body = br#"{"status":"success","data":[
            {"__name__":"up","job":"a","instance":"x:1"},
            {"instance":"y:2","__name__":"up","job":"b"},
            {"__name__":"up","job":"c"},
            {"__name__":"esc\u0041ped","pod":"p\"1"},
            {"__name__":"up","job":"d","instance":"z"}]}"#;
        let want = vec![
            labels(&[("__name__", "up"), ("instance", ""), ("job", "")]),
            labels(&[("__name__", "up"), ("job", "")]),
            labels(&[("__name__", "escAped"), ("pod", "")]),
        ];
        assert_eq!(decode_series_shapes(200, body), Ok(want.clone()));
        // The fold of decoded series is the same.
        assert_eq!(decode_series(200, body).map(shapes_of), Ok(want));
        assert_eq!(
            decode_series_shapes(200, br#"{"status":"success","data":[]}"#),
            Ok(vec![])
        );
        for bad in [
            &br#"{"status":"success","data":[{"a":1}]}"#[..],
            br#"{"status":"success","data":{"a":"b"}}"#,
            br#"{"status":"success"}"#,
            b"[",
        ] {
            assert!(
                matches!(
                    decode_series_shapes(200, bad),
                    Err(PromError::Decode { .. })
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            decode_series_shapes(
                200,
                br#"{"status":"error","errorType":"bad_data","error":"x"}"#
            ),
            Err(PromError::Api { .. })
        ));
    }

    #[test]
    fn series_list() {
        let body = br#"{"status":"success","data":[
            {"__name__":"up","job":"prometheus","instance":"localhost:9090"},
            {"__name__":"process_start_time_seconds","job":"prometheus","instance":"localhost:9090"}]}"#;
        assert_eq!(
            decode_series(200, body),
            Ok(vec![
                labels(&[
                    ("__name__", "up"),
                    ("job", "prometheus"),
                    ("instance", "localhost:9090")
                ]),
                labels(&[
                    ("__name__", "process_start_time_seconds"),
                    ("job", "prometheus"),
                    ("instance", "localhost:9090")
                ]),
            ])
        );
        assert_eq!(
            decode_series(200, br#"{"status":"success","data":[]}"#),
            Ok(vec![])
        );
        assert!(matches!(
            decode_series(
                200,
                br#"{"status":"success","data":{"resultType":"vector"}}"#
            ),
            Err(PromError::Decode { .. })
        ));
    }

    #[test]
    fn api_error_bodies() {
        let cases: &[(u16, &str, &str, &str, &str)] = &[
            (
                400,
                r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error: unexpected right parenthesis ')'"}"#,
                "bad_data",
                "invalid parameter \"query\": 1:5: parse error: unexpected right parenthesis ')'",
                "bad_data",
            ),
            (
                422,
                r#"{"status":"error","errorType":"execution","error":"query processing would load too many samples into memory in query execution"}"#,
                "execution",
                "query processing would load too many samples into memory in query execution",
                "execution",
            ),
            (
                503,
                r#"{"status":"error","errorType":"unavailable","error":"TSDB not ready"}"#,
                "unavailable",
                "TSDB not ready",
                "unavailable",
            ),
            (
                503,
                r#"{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}"#,
                "timeout",
                "query timed out in expression evaluation",
                "timeout",
            ),
            (
                422,
                r#"{"status":"error","errorType":"execution","error":"boom","data":{"resultType":"vector","result":[]},"warnings":["w"]}"#,
                "execution",
                "boom",
                "execution",
            ),
        ];
        for &(status, body, error_type, error, kind) in cases {
            let want = PromError::Api {
                status,
                error_type: error_type.into(),
                error: error.into(),
            };
            let got = decode_error(status, body.as_bytes());
            assert_eq!(got, want);
            assert_eq!(got.kind(), kind);
        }
    }

    #[test]
    fn error_status_in_a_2xx_answer_is_an_api_error() {
        let body = br#"{"status":"error","errorType":"bad_data","error":"nope","data":"odd"}"#;
        let want = PromError::Api {
            status: 200,
            error_type: "bad_data".into(),
            error: "nope".into(),
        };
        assert_eq!(decode_query(200, body), Err(want.clone()));
        assert_eq!(decode_series(200, body), Err(want));
    }

    #[test]
    fn other_error_bodies_are_http_errors_truncated() {
        assert_eq!(
            decode_error(404, b"404 page not found\n"),
            PromError::Http {
                status: 404,
                body: "404 page not found".into()
            }
        );
        assert_eq!(
            decode_error(502, br#"{"message":"bad gateway"}"#),
            PromError::Http {
                status: 502,
                body: r#"{"message":"bad gateway"}"#.into()
            }
        );
        let long = "é".repeat(1000);
        match decode_error(401, long.as_bytes()) {
            PromError::Http { status: 401, body } => {
                assert!(body.len() <= MAX_ERROR_BODY);
                assert!(body.len() >= MAX_ERROR_BODY - 4);
                assert!(body.chars().all(|c| c == 'é'));
            }
            e => panic!("unexpected {e:?}"),
        }
        assert_eq!(truncate_body(b"\xff\xfeabc"), "\u{fffd}\u{fffd}abc");
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512), status in 100u16..600) {
            let _ = decode_query(status, &body);
            let _ = decode_series(status, &body);
            let _ = decode_error(status, &body);
            let _ = truncate_body(&body);
        }

        #[test]
        fn decoding_json_like_text_never_panics(body in r#"[\[\]{}":,0-9a-zA-Z_. \\+-]{0,200}"#) {
            let wrapped = format!(r#"{{"status":"success","data":{{"resultType":"vector","result":{body}}}}}"#);
            let _ = decode_query(200, wrapped.as_bytes());
            let _ = decode_query(200, body.as_bytes());
            let _ = decode_series(200, body.as_bytes());
            let _ = decode_error(500, body.as_bytes());
        }
    }
}
