//! Any byte stream, cut into chunks at fuzzer-chosen points, frames into the same lines as
//! the whole stream, and no line exceeds the bound.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use statsd_bridge::framing::LineFramer;

fn frames(max: usize, chunks: &[&[u8]]) -> Vec<Result<Vec<u8>, ()>> {
    let mut f = LineFramer::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        loop {
            match f.next_line(&mut buf) {
                Ok(Some(l)) => {
                    assert!(l.len() <= max);
                    out.push(Ok(l.to_vec()));
                }
                Ok(None) => break,
                Err(_) => out.push(Err(())),
            }
        }
    }
    match f.finish(&mut buf) {
        Ok(Some(l)) => out.push(Ok(l.to_vec())),
        Ok(None) => {}
        Err(_) => out.push(Err(())),
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&max, rest)) = data.split_first() else { return };
    let Some((&cut, stream)) = rest.split_first() else { return };
    let max = usize::from(max % 64) + 1;
    let cut = usize::from(cut).min(stream.len());
    let (a, b) = stream.split_at(cut);
    assert_eq!(frames(max, &[a, b]), frames(max, &[stream]));
});
