//! JSON that leaves the sandbox: results, tool-call arguments and error descriptions.
//!
//! The engine's `JSON.stringify` writes a lone surrogate as an escape (`"\ud800"`), which
//! ECMAScript allows and RFC 8259 parsers (serde_json, Go's, browsers' `TextDecoder`
//! paths) refuse or garble, and it nests as deep as the script likes, while common
//! parsers stop at 128 levels (serde_json) or a little more. So every JSON text the
//! sandbox hands out has lone surrogates replaced by U+FFFD and is refused past
//! [`MAX_DEPTH`]: whatever a client is written in, it can read what it is given.

/// The deepest nesting of arrays and objects a result or tool-call argument may have.
pub const MAX_DEPTH: usize = 100;

/// Replaces every escaped lone surrogate in `json` (text produced by `JSON.stringify`)
/// with `\ufffd`, and returns the text with its nesting depth.
pub fn make_well_formed(json: String) -> (String, usize) {
    let mut bytes = json.into_bytes();
    let (mut depth, mut deepest, mut in_string, mut i) = (0usize, 0usize, false, 0usize);
    while i < bytes.len() {
        match (in_string, bytes[i]) {
            (false, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, b']' | b'}') => depth = depth.saturating_sub(1),
            (_, b'"') => in_string = !in_string,
            (true, b'\\') if bytes.get(i + 1) == Some(&b'u') => {
                match hex4(&bytes, i + 2) {
                    Some(0xD800..=0xDBFF)
                        if bytes.get(i + 6..i + 8) == Some(b"\\u")
                            && matches!(hex4(&bytes, i + 8), Some(0xDC00..=0xDFFF)) =>
                    {
                        i += 12; // a proper pair
                        continue;
                    }
                    Some(0xD800..=0xDFFF) => bytes[i + 2..i + 6].copy_from_slice(b"fffd"),
                    _ => {}
                }
                i += 6;
                continue;
            }
            (true, b'\\') => {
                i += 2;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    // Only ASCII hex digits were swapped for others: still UTF-8.
    let text = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    (text, deepest)
}

/// The value of the four hex digits at `at`, if there are four.
fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = bytes.get(at..at + 4)?;
    let text = std::str::from_utf8(digits).ok()?;
    u32::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(json: &str) -> (String, usize) {
        make_well_formed(json.to_string())
    }

    #[test]
    fn lone_surrogates_become_the_replacement_character_and_pairs_stay() {
        assert_eq!(fixed(r#""a\ud800b""#).0, r#""a\ufffdb""#);
        assert_eq!(fixed(r#""\udc00""#).0, r#""\ufffd""#);
        assert_eq!(fixed(r#""\ud83d\ude00""#).0, r#""\ud83d\ude00""#);
        assert_eq!(fixed(r#""\ud83d\u0041""#).0, r#""\ufffd\u0041""#);
        // an escaped backslash followed by "ud800" is text, not an escape
        assert_eq!(fixed(r#""\\ud800""#).0, r#""\\ud800""#);
        assert_eq!(fixed(r#"{"\ud800":1}"#).0, r#"{"\ufffd":1}"#);
        let (text, _) = fixed(r#"["x\udbff"]"#);
        let parsed: Vec<String> = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, ["x\u{fffd}"]);
    }

    #[test]
    fn depth_counts_arrays_and_objects_but_not_brackets_in_strings() {
        assert_eq!(fixed("1").1, 0);
        assert_eq!(fixed(r#"[{"a":[1]},[]]"#).1, 3);
        assert_eq!(fixed(r#"["[[[[", "\"[[["]"#).1, 1);
        let deep = "[".repeat(500) + &"]".repeat(500);
        assert_eq!(fixed(&deep).1, 500);
    }
}
