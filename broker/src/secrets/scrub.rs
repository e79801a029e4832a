//! Finding secret values in text, in the forms text takes on its way through services
//! and scripts.
//!
//! A value can come back from an allowed service, or out of a script that obtained it,
//! encoded: a JSON string escapes `/` as `\/` and `&` as `\u0026` (or every character, or
//! any mix); a URL percent-encodes any subset of characters, in either case of hex, and a
//! form writes a space as `+`; an `Authorization: Basic` header or a token echo carries it
//! in base64 or base64url, at any of three alignments inside a longer encoded run. Rather
//! than list every spelling, the text is decoded into *views* (JSON escapes undone,
//! percent escapes undone, and up to three of these on top of each other), each of which
//! keeps the way back to the text's byte offsets, and the plain value is looked for in
//! every view. Base64 cannot be decoded
//! without knowing where a run starts, so it goes the other way: each value's encoding
//! at each alignment, less the characters that also depend on the neighbouring bytes,
//! is looked for in every view, and a match is widened to the characters that carry
//! any of the value's bits.
//!
//! What this cannot find: a value split into pieces, transformed (reversed, hashed,
//! hex, HTML entities, ...), or too short to have a distinctive base64 encoding. Binding
//! each secret to where it may be sent is the defence there (README, "Tools and
//! secrets").

use std::ops::Range;

use base64::Engine as _;
use memchr::memmem;
use zeroize::Zeroizing;

/// Decodings applied on top of each other, at most: enough for a percent-encoded URL in
/// a JSON text that a service returned as a string in its JSON answer.
const MAX_DEPTH: usize = 3;
/// A base64 core shorter than this is not looked for: so few characters also occur by
/// chance in unrelated encoded data (images, tokens), which would then be mangled.
const MIN_BASE64_CORE: usize = 8;

/// One secret's searchable forms, computed once when the store is loaded.
pub(super) struct Forms {
    raw: Zeroizing<Vec<u8>>,
    base64: Vec<Core>,
}

/// The value's base64 (or base64url) encoding at one alignment, without the characters
/// at either end that also carry bits of the neighbouring bytes.
struct Core {
    bytes: Zeroizing<Vec<u8>>,
    /// Characters just before / after the core that carry some of the value's bits
    /// (mixed with a neighbour's): replaced with the core so that no bit of it remains.
    lead: usize,
    trail: usize,
}

impl Forms {
    pub(super) fn new(value: &str) -> Forms {
        let engines = [
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        let mut base64: Vec<Core> = Vec::new();
        for offset in 0..3 {
            // The value after `offset` other bytes: where it starts in a 3-byte group.
            let mut shifted = Zeroizing::new(vec![0u8; offset]);
            shifted.extend_from_slice(value.as_bytes());
            // With 1 or 2 bytes before it, the first 2 or 3 characters hold those
            // bytes' bits, the last of them mixed with the value's; an incomplete
            // final group's last character mixes the value with what follows.
            let head = [0, 2, 3][offset];
            let lead = usize::from(offset > 0);
            let trail = usize::from(shifted.len() % 3 != 0);
            for engine in engines {
                let encoded = Zeroizing::new(engine.encode(&*shifted));
                let encoded = encoded.as_bytes();
                if encoded.len() < head + trail + MIN_BASE64_CORE {
                    continue;
                }
                let bytes = Zeroizing::new(encoded[head..encoded.len() - trail].to_vec());
                if !base64.iter().any(|c| *c.bytes == *bytes) {
                    base64.push(Core { bytes, lead, trail });
                }
            }
        }
        Forms {
            raw: Zeroizing::new(value.as_bytes().to_vec()),
            base64,
        }
    }
}

/// The searches for a set of secrets' forms, built once and used on many texts (every
/// string of a tool result). The finders borrow the forms: no copy of a value is made.
pub(super) struct Searcher<'a> {
    patterns: Vec<Pattern<'a>>,
    /// Whether to decode `+` as a space: only when some value has a space, since doing
    /// so otherwise would hide a raw `+`.
    plus: bool,
}

struct Pattern<'a> {
    finder: memmem::Finder<'a>,
    /// Index of the secret in the slice the searcher was built from.
    secret: usize,
    /// Base64 characters to take in on either side (see [`Core`]); 0 for the raw value.
    lead: usize,
    trail: usize,
}

impl<'a> Searcher<'a> {
    pub(super) fn new(secrets: &[&'a Forms]) -> Searcher<'a> {
        let mut patterns = Vec::new();
        for (secret, forms) in secrets.iter().enumerate() {
            patterns.push(Pattern {
                finder: memmem::Finder::new(&forms.raw[..]),
                secret,
                lead: 0,
                trail: 0,
            });
            for core in &forms.base64 {
                patterns.push(Pattern {
                    finder: memmem::Finder::new(&core.bytes[..]),
                    secret,
                    lead: core.lead,
                    trail: core.trail,
                });
            }
        }
        Searcher {
            patterns,
            plus: secrets.iter().any(|f| f.raw.contains(&b' ')),
        }
    }

    /// Where in `text` any of the secrets appears, as `(byte range, index of the
    /// secret)`: sorted, not overlapping, on character boundaries.
    pub(super) fn find(&self, text: &str) -> Vec<(Range<usize>, usize)> {
        let source = text.as_bytes();
        let decoders: &[Decoder] = if self.plus {
            &[json_unescape, percent_decode, form_decode]
        } else {
            &[json_unescape, percent_decode]
        };
        // Every decoding, and every sequence of up to MAX_DEPTH of them (JSON in a JSON
        // string, a percent-encoded URL in a JSON text inside a JSON string, ...).
        let mut nodes: Vec<(Layer, Option<usize>)> = Vec::new();
        let mut frontier: Vec<Option<usize>> = vec![None];
        for _ in 0..MAX_DEPTH {
            let mut next = Vec::new();
            for parent in frontier {
                let bytes = parent.map_or(source, |i| &nodes[i].0.bytes[..]);
                let made: Vec<Layer> = decoders.iter().filter_map(|d| d(bytes)).collect();
                for layer in made {
                    nodes.push((layer, parent));
                    next.push(Some(nodes.len() - 1));
                }
            }
            frontier = next;
        }
        let mut views: Vec<(&[u8], Vec<&Layer>)> = vec![(source, Vec::new())];
        for (i, (layer, _)) in nodes.iter().enumerate() {
            let mut layers = vec![layer];
            let mut at = nodes[i].1;
            while let Some(parent) = at {
                layers.push(&nodes[parent].0);
                at = nodes[parent].1;
            }
            layers.reverse();
            views.push((&layer.bytes[..], layers));
        }

        let mut found = Vec::new();
        for (bytes, layers) in &views {
            for pattern in &self.patterns {
                for at in pattern.finder.find_iter(bytes) {
                    let mut range = at..at + pattern.finder.needle().len();
                    for _ in 0..pattern.lead {
                        if range.start > 0 && is_base64(bytes[range.start - 1]) {
                            range.start -= 1;
                        }
                    }
                    for _ in 0..pattern.trail {
                        if range.end < bytes.len() && is_base64(bytes[range.end]) {
                            range.end += 1;
                        }
                    }
                    found.push((map(layers, range), pattern.secret));
                }
            }
        }
        if found.is_empty() {
            return found;
        }
        for (range, _) in &mut found {
            while !text.is_char_boundary(range.start) {
                range.start -= 1;
            }
            while !text.is_char_boundary(range.end) {
                range.end += 1;
            }
        }
        found.sort_by_key(|(range, _)| (range.start, usize::MAX - range.end));
        let mut merged: Vec<(Range<usize>, usize)> = Vec::with_capacity(found.len());
        for (range, index) in found {
            match merged.last_mut() {
                Some((last, _)) if range.start < last.end => last.end = last.end.max(range.end),
                _ => merged.push((range, index)),
            }
        }
        merged
    }
}

fn is_base64(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'/' | b'-' | b'_')
}

/// A range of the top layer's bytes as a range of the original text.
fn map(layers: &[&Layer], mut range: Range<usize>) -> Range<usize> {
    for layer in layers.iter().rev() {
        range = layer.start_below(range.start)..layer.end_below(range.end);
    }
    range
}

/// Undoes one encoding; `None` when there is nothing to undo.
type Decoder = fn(&[u8]) -> Option<Layer>;

/// One decoding step: its output, and where each decoded escape came from in its input.
struct Layer {
    bytes: Zeroizing<Vec<u8>>,
    /// In order. Bytes between escapes are copied unchanged.
    escapes: Vec<Escape>,
}

/// `len` decoded bytes at `at` that came from `src_len` input bytes at `src`.
#[derive(Debug, Clone, Copy)]
struct Escape {
    at: usize,
    len: usize,
    src: usize,
    src_len: usize,
}

impl Layer {
    fn new(capacity: usize) -> Layer {
        Layer {
            bytes: Zeroizing::new(Vec::with_capacity(capacity)),
            escapes: Vec::new(),
        }
    }

    fn push_escape(&mut self, decoded: &[u8], src: usize, src_len: usize) {
        self.escapes.push(Escape {
            at: self.bytes.len(),
            len: decoded.len(),
            src,
            src_len,
        });
        self.bytes.extend_from_slice(decoded);
    }

    /// The last escape that starts at or before decoded offset `at`.
    fn escape_before(&self, at: usize) -> Option<&Escape> {
        let after = self.escapes.partition_point(|e| e.at <= at);
        after.checked_sub(1).map(|i| &self.escapes[i])
    }

    /// Where the decoded byte at `at` starts in the input (its escape's start when it
    /// is part of one).
    fn start_below(&self, at: usize) -> usize {
        match self.escape_before(at) {
            None => at,
            Some(e) if at < e.at + e.len => e.src,
            Some(e) => e.src + e.src_len + (at - e.at - e.len),
        }
    }

    /// Where the decoded range ending (exclusively) at `end` ends in the input.
    fn end_below(&self, end: usize) -> usize {
        let Some(last) = end.checked_sub(1) else {
            return 0;
        };
        match self.escape_before(last) {
            None => end,
            Some(e) if last < e.at + e.len => e.src + e.src_len,
            Some(e) => e.src + e.src_len + (end - e.at - e.len),
        }
    }
}

/// JSON string escapes undone wherever they appear (`\"`, `\\`, `\/`, `\b`, `\f`, `\n`,
/// `\r`, `\t`, `\uXXXX` and surrogate pairs); anything else is copied. `None` when the
/// input has no backslash.
fn json_unescape(input: &[u8]) -> Option<Layer> {
    memchr::memchr(b'\\', input)?;
    let mut layer = Layer::new(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'\\'
            && let Some((ch, src_len)) = json_escape(&input[i..])
        {
            let mut buf = [0u8; 4];
            layer.push_escape(ch.encode_utf8(&mut buf).as_bytes(), i, src_len);
            i += src_len;
        } else {
            layer.bytes.push(input[i]);
            i += 1;
        }
    }
    Some(layer)
}

/// The character a JSON escape at the start of `s` stands for, and the escape's length.
fn json_escape(s: &[u8]) -> Option<(char, usize)> {
    let ch = match *s.get(1)? {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let unit = hex(s.get(2..6)?)?;
            if (0xD800..0xDC00).contains(&unit) {
                if s.get(6..8)? != b"\\u" {
                    return None;
                }
                let low = hex(s.get(8..12)?)?;
                if !(0xDC00..0xE000).contains(&low) {
                    return None;
                }
                let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                return Some((char::from_u32(code)?, 12));
            }
            return Some((char::from_u32(unit)?, 6));
        }
        _ => return None,
    };
    Some((ch, 2))
}

fn hex(digits: &[u8]) -> Option<u32> {
    digits
        .iter()
        .try_fold(0u32, |n, &d| Some(n * 16 + char::from(d).to_digit(16)?))
}

/// `%XX` escapes undone (either case). `None` when there is nothing to decode.
fn percent_decode(input: &[u8]) -> Option<Layer> {
    decode_percent(input, false)
}

/// Like [`percent_decode`], and `+` as a space, as in forms.
fn form_decode(input: &[u8]) -> Option<Layer> {
    decode_percent(input, true)
}

fn decode_percent(input: &[u8], plus: bool) -> Option<Layer> {
    if memchr::memchr(b'%', input).is_none() && !(plus && memchr::memchr(b'+', input).is_some()) {
        return None;
    }
    let mut layer = Layer::new(input.len());
    let mut i = 0;
    while i < input.len() {
        let escaped = match input[i] {
            b'%' => input.get(i + 1..i + 3).and_then(hex).map(|b| (b as u8, 3)),
            b'+' if plus => Some((b' ', 1)),
            _ => None,
        };
        match escaped {
            Some((byte, src_len)) => {
                layer.push_escape(&[byte], i, src_len);
                i += src_len;
            }
            None => {
                layer.bytes.push(input[i]);
                i += 1;
            }
        }
    }
    Some(layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(text: &str, values: &[&str]) -> Vec<String> {
        let forms: Vec<Forms> = values.iter().map(|v| Forms::new(v)).collect();
        let refs: Vec<&Forms> = forms.iter().collect();
        Searcher::new(&refs)
            .find(text)
            .into_iter()
            .map(|(r, _)| text[r].to_string())
            .collect()
    }

    #[test]
    fn layers_map_back_to_the_text() {
        let text = r#"a\u0026b\/c"#;
        let layer = json_unescape(text.as_bytes()).unwrap();
        assert_eq!(&layer.bytes[..], b"a&b/c");
        // "&b/" in the decoded text is `\u0026b\/` in the original.
        assert_eq!(layer.start_below(1)..layer.end_below(4), 1..10);
        assert_eq!(layer.start_below(4)..layer.end_below(5), 10..11);
        assert_eq!(layer.start_below(0)..layer.end_below(1), 0..1);
    }

    #[test]
    fn surrogate_pairs_and_bad_escapes() {
        assert_eq!(spans(r#"x\ud83d\ude00y"#, &["😀y"]), [r#"\ud83d\ude00y"#]);
        // A lone surrogate, a short escape and an unknown one are left as they are.
        assert!(spans(r#"\ud83dz \u12 \q"#, &["z \\u12"]).len() == 1);
        assert!(json_unescape(br"\ud83d").unwrap().escapes.is_empty());
    }

    #[test]
    fn base64_cores_cover_every_alignment_and_both_alphabets() {
        let value = "sk-live-Abc/123&x=y+z?>";
        let forms = Forms::new(value);
        let engines = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::URL_SAFE,
        ];
        for engine in engines {
            for prefix in ["", "u", "us", "user:", "Bearer "] {
                for suffix in ["", "!", "!!", "!!!"] {
                    let encoded = engine.encode(format!("{prefix}{value}{suffix}"));
                    let text = format!("<{encoded}>");
                    let found = Searcher::new(&[&forms]).find(&text);
                    assert_eq!(found.len(), 1, "{prefix}|{suffix}: {text}");
                    // No character left on either side carries a bit of the value: the
                    // left holds only the prefix's whole sextets, the right only the
                    // suffix's (and padding).
                    let range = found[0].0.clone();
                    let (p, n) = (prefix.len(), value.len());
                    let left = &text[1..range.start];
                    let right = text[range.end..text.len() - 1].trim_end_matches('=');
                    assert!(left.len() <= p * 8 / 6, "{prefix}|{suffix}: {text} {left}");
                    let unpadded = (p + n + suffix.len()) * 8;
                    let right_max = unpadded.div_ceil(6) - ((p + n) * 8).div_ceil(6);
                    assert!(
                        right.len() <= right_max,
                        "{prefix}|{suffix}: {text} {right}"
                    );
                    // And no more than that is replaced.
                    assert!(range.len() <= n * 8 / 6 + 3, "{text}");
                }
            }
        }
    }

    #[test]
    fn short_values_have_no_base64_forms() {
        assert!(Forms::new("abcd").base64.is_empty());
        assert_eq!(spans("YWJjZA==", &["abcd"]), Vec::<String>::new());
    }
}
