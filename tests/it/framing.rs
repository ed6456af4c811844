//! The stream framer gives the same events however the network splits the bytes, and
//! never panics on garbage.

use crate::helpers;

use helpers::fixture;
use proptest::prelude::*;
use tollgate::config::StreamFormat;
use tollgate::proxy::framing::{Event, Framer, FramingError};

const FIXTURES: [&str; 4] = [
    "genstudio-stream.sse",
    "genstudio-chip3-stream.txt",
    "internlm-stream.sse",
    "openai-stream-include-usage.sse",
];
/// Events in each fixture, `[DONE]` included.
const EVENTS: [usize; 4] = [5, 4, 4, 5];

/// Frames `bytes` cut at `cuts` (positions, any order, duplicates allowed).
fn frame_split(bytes: &[u8], cuts: &[usize]) -> Result<Vec<Event>, FramingError> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.push(0);
    cuts.push(bytes.len());
    cuts.sort_unstable();
    let mut framer = Framer::new(StreamFormat::Auto);
    let mut events = Vec::new();
    for pair in cuts.windows(2) {
        framer.push(&bytes[pair[0]..pair[1]], &mut events)?;
    }
    framer.finish(&mut events)?;
    Ok(events)
}

/// The fixture as CRLF, and without its final blank line: both must frame the same.
fn variants(text: &str) -> Vec<Vec<u8>> {
    vec![
        text.as_bytes().to_vec(),
        text.replace('\n', "\r\n").into_bytes(),
        text.trim_end().as_bytes().to_vec(),
        text.replace("data: ", "data:").into_bytes(),
    ]
}

#[test]
fn every_fixture_frames_into_complete_json_events() {
    for (name, expected) in FIXTURES.into_iter().zip(EVENTS) {
        let text = fixture(name);
        let events = frame_split(text.as_bytes(), &[]).unwrap();
        let json_events = events.iter().filter(|e| e.data != "[DONE]");
        for event in json_events {
            serde_json::from_str::<serde_json::Value>(&event.data)
                .unwrap_or_else(|e| panic!("{name}: {e}: {}", event.data));
        }
        assert_eq!(events.len(), expected, "{name}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_split_of_any_fixture_gives_the_same_events(
        which in 0..FIXTURES.len(),
        variant in 0usize..4,
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let text = fixture(FIXTURES[which]);
        let bytes = &variants(&text)[variant];
        let whole = frame_split(bytes, &[]).unwrap();
        let reference = frame_split(text.as_bytes(), &[]).unwrap();
        prop_assert_eq!(&frame_split(bytes, &cuts).unwrap(), &whole);
        let data = |events: &[Event]| events.iter().map(|e| e.data.clone()).collect::<Vec<_>>();
        prop_assert_eq!(data(&whole), data(&reference));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), cuts in proptest::collection::vec(any::<usize>(), 0..10)) {
        let _ = frame_split(&bytes, &cuts);
    }
}
