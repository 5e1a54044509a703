//! Reading a step pipeline's output (`script::pipeline`): the marker lines
//! that say where each step starts and ends, and the bytes in between.
//! Markers may be split across SSH packets, so a partial one is carried to
//! the next chunk; anything that is not a well-formed marker of this batch
//! is output.

use crate::node::script::PIPE_MARK;

/// What a chunk of pipeline output held, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Output(Vec<u8>),
    /// Step `i` of the batch began.
    Start(usize),
    /// Step `i` of the batch exited with this code.
    End(usize, u32),
}

/// The longest marker line after its prefix: `<i>:end:<rc>`.
const MAX_MARKER: usize = 32;

pub struct Scanner {
    prefix: Vec<u8>,
    carry: Vec<u8>,
}

impl Scanner {
    pub fn new(nonce: &str) -> Scanner {
        Scanner {
            prefix: format!("{PIPE_MARK}{nonce}:").into_bytes(),
            carry: Vec::new(),
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Event> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut out_from = 0;
        let mut pos = 0;
        loop {
            let Some(off) = find(&buf[pos..], &self.prefix) else {
                // Keep what may be the start of a marker for the next chunk.
                let keep = partial_suffix(&buf[pos..], &self.prefix);
                let end = buf.len() - keep;
                push_output(&mut events, &buf[out_from..end]);
                self.carry = buf[end..].to_vec();
                return events;
            };
            let at = pos + off;
            let body = at + self.prefix.len();
            match buf[body..].iter().position(|&b| b == b'\n') {
                Some(nl) if nl <= MAX_MARKER => match parse(&buf[body..body + nl]) {
                    Some(ev) => {
                        push_output(&mut events, &buf[out_from..at]);
                        events.push(ev);
                        pos = body + nl + 1;
                        out_from = pos;
                    }
                    None => pos = at + 1,
                },
                None if buf.len() - body <= MAX_MARKER => {
                    push_output(&mut events, &buf[out_from..at]);
                    self.carry = buf[at..].to_vec();
                    return events;
                }
                // Too long to be ours: output.
                _ => pos = at + 1,
            }
        }
    }

    /// What is left when the stream ends: a partial marker is output.
    pub fn finish(&mut self) -> Vec<Event> {
        let rest = std::mem::take(&mut self.carry);
        let mut events = Vec::new();
        push_output(&mut events, &rest);
        events
    }
}

fn push_output(events: &mut Vec<Event>, bytes: &[u8]) {
    if !bytes.is_empty() {
        events.push(Event::Output(bytes.to_vec()));
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The length of the longest suffix of `buf` that is a proper prefix of
/// `prefix`.
fn partial_suffix(buf: &[u8], prefix: &[u8]) -> usize {
    (1..prefix.len().min(buf.len() + 1))
        .rev()
        .find(|&n| buf.ends_with(&prefix[..n]))
        .unwrap_or(0)
}

fn parse(line: &[u8]) -> Option<Event> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(':');
    let i: usize = parts.next()?.parse().ok()?;
    let ev = match (parts.next()?, parts.next()) {
        ("start", None) => Event::Start(i),
        ("end", Some(rc)) => Event::End(i, rc.parse().ok()?),
        _ => return None,
    };
    parts.next().is_none().then_some(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(s: &mut Scanner, chunks: &[&[u8]]) -> Vec<Event> {
        let mut evs: Vec<Event> = chunks.iter().flat_map(|c| s.feed(c)).collect();
        evs.extend(s.finish());
        // Adjacent outputs are one for comparison.
        let mut merged: Vec<Event> = Vec::new();
        for e in evs {
            match (merged.last_mut(), e) {
                (Some(Event::Output(a)), Event::Output(b)) => a.extend(b),
                (_, e) => merged.push(e),
            }
        }
        merged
    }

    #[test]
    fn markers_split_anywhere_are_found() {
        let stream = b"\x1eEFab12:0:start\nhello\nno newline\x1eEFab12:0:end:0\n\x1eEFab12:1:start\n\x1eEFab12:1:end:10\n";
        let want = vec![
            Event::Start(0),
            Event::Output(b"hello\nno newline".to_vec()),
            Event::End(0, 0),
            Event::Start(1),
            Event::End(1, 10),
        ];
        for cut in 0..stream.len() {
            for cut2 in cut..stream.len() {
                let mut s = Scanner::new("ab12");
                let got = all(
                    &mut s,
                    &[&stream[..cut], &stream[cut..cut2], &stream[cut2..]],
                );
                assert_eq!(got, want, "cut at {cut} and {cut2}");
            }
        }
    }

    #[test]
    fn other_nonces_and_malformed_markers_are_output() {
        let mut s = Scanner::new("ab12");
        let stream: &[u8] =
            b"\x1eEFzz99:0:end:0\n\x1eEFab12:0:end:x\n\x1eEFab12:7:start:1\n\x1eEFab12";
        assert_eq!(all(&mut s, &[stream]), vec![Event::Output(stream.to_vec())]);
        let long = [b"\x1eEFab12:".as_slice(), &[b'1'; 40], b"\n"].concat();
        let mut s = Scanner::new("ab12");
        assert_eq!(all(&mut s, &[&long]), vec![Event::Output(long.clone())]);
    }
}
