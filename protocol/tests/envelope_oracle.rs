//! The envelope scanner against `serde_json` as the oracle, for any message, generated or
//! damaged:
//!
//! - [`Envelope::parse_strict`] accepts exactly what `serde_json` accepted for the envelope
//!   struct the codec used to parse (`op`, `s`, `t`, `d` kept raw), and reads the same `op`,
//!   `s`, `t` and the same text of `d`.
//! - [`Envelope::parse`], the codec's path, which checks `d` only structurally: (a) whatever
//!   `serde_json` accepts it accepts with the same `op`, `s`, `t` and `d`; (b) whatever it
//!   accepts with a `d` that `serde_json` parses on its own, `serde_json` accepts as a whole
//!   message with the same fields, so an application that parses `d` never reads a sequence
//!   number a strict parser would not.
//! - [`Envelope::parse_tail`], the codec's hot path, which reads nothing of an object or array
//!   `d` that ends the message after `op`, `s` and `t`: (a) whatever [`Envelope::parse`]
//!   accepts it accepts with the same `op`, `s` and `t`, and the same `d` or that `d` followed
//!   by the members after it (`,"x":1`); (b) as for `parse`, whatever it accepts with a `d` that
//!   `serde_json` parses on its own, `serde_json` reads the same as a whole.
//!
//! All three reject with a typed error, never a panic.

#[path = "fuzz_common/mod.rs"]
mod fuzz_common;

use std::borrow::Cow;

use handover_protocol::{Envelope, ProtocolError};
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct Wire<'a> {
    op: Option<u64>,
    #[serde(borrow, default)]
    d: Option<&'a RawValue>,
    #[serde(default)]
    s: Option<u64>,
    #[serde(borrow, default)]
    t: Option<Cow<'a, str>>,
}

type Fields<'a> = (u64, Option<u64>, Option<String>, Option<&'a str>);

/// What the codec accepted before the scanner: an object (first non-space byte `{`), parsed by
/// `serde_json::from_slice`, `op` present.
fn oracle(bytes: &[u8]) -> Option<Fields<'_>> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let w: Wire<'_> = serde_json::from_slice(bytes).ok()?;
    Some((
        w.op?,
        w.s,
        w.t.map(|t| t.into_owned()),
        w.d.map(RawValue::get),
    ))
}

fn fields<'a>(parsed: Result<Envelope<'a>, ProtocolError>, bytes: &[u8]) -> Option<Fields<'a>> {
    match parsed {
        Ok(e) => Some((e.op, e.s, e.t.map(|t| t.into_owned()), e.d)),
        Err(ProtocolError::MalformedJson { .. } | ProtocolError::MissingField { .. }) => None,
        Err(other) => panic!("untyped envelope error {other:?} for {bytes:?}"),
    }
}

fn check(text: &str) {
    check_bytes(text.as_bytes());
}

fn check_bytes(bytes: &[u8]) {
    let expected = oracle(bytes);
    let input = String::from_utf8_lossy(bytes);
    assert_eq!(
        fields(Envelope::parse_strict(bytes), bytes),
        expected,
        "strict, input: {input:?}"
    );
    let fast = fields(Envelope::parse(bytes), bytes);
    // (a) What serde accepts, the fast scan reads the same.
    if expected.is_some() {
        assert_eq!(fast, expected, "fast, input: {input:?}");
    }
    // (b) What the fast scan accepts with a `d` that parses on its own, serde reads the same.
    valid_d_agrees("fast", fast.as_ref(), expected.as_ref(), &input);
    let tail = fields(Envelope::parse_tail(bytes), bytes);
    // (a) What the structural scan accepts, the tail scan reads the same, but for the members
    // after a `d` taken unread, which its text then runs on into.
    if let Some(f) = &fast {
        let t = tail
            .as_ref()
            .unwrap_or_else(|| panic!("tail refused what the structural scan accepted: {input:?}"));
        assert_eq!((t.0, t.1, &t.2), (f.0, f.1, &f.2), "tail, input: {input:?}");
        if t.3 != f.3 {
            let (Some(td), Some(fd)) = (t.3, f.3) else {
                panic!("tail, d present in one only: {input:?}");
            };
            let rest = td.strip_prefix(fd).map(str::trim_ascii_start);
            assert!(
                rest.is_some_and(|r| r.starts_with(',')),
                "tail, d {td:?} against {fd:?}, input: {input:?}"
            );
        }
    }
    // (b) What it accepts with a `d` that parses on its own, serde reads the same.
    valid_d_agrees("tail", tail.as_ref(), expected.as_ref(), &input);
}

/// What a scan accepted with a `d` that parses on its own, serde read the same.
fn valid_d_agrees(
    scan: &str,
    got: Option<&Fields<'_>>,
    expected: Option<&Fields<'_>>,
    input: &str,
) {
    if let Some(f) = got
        && f.3
            .is_none_or(|d| serde_json::from_str::<&RawValue>(d).is_ok())
    {
        assert_eq!(Some(f), expected, "{scan}, d valid, input: {input:?}");
    }
}

fn leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| format!("{n:?}")),
        Just("1e400".to_owned()),
        Just("-0".to_owned()),
        Just("0.5E-3".to_owned()),
        Just("18446744073709551616".to_owned()),
        "[a-z \\\\\"/\\x00-\\x1f\u{e9}\u{1f600}]{0,12}"
            .prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just(r#""\ud83d\ude00""#.to_owned()),
        Just(r#""\ud83d""#.to_owned()),
        Just(r#""\u00e9\n\t\/""#.to_owned()),
        // An escape (or a run of backslashes) at every offset around the eight-byte words.
        (
            0usize..18,
            prop::sample::select(vec![
                r#"\""#,
                r#"\\"#,
                r#"\\\""#,
                r#"\u0041"#,
                r#"\\\\"#,
                r#"\n"#
            ]),
            r"[a-z\]\}\[\{]{0,3}",
        )
            .prop_map(|(n, esc, tail)| format!("\"{}{esc}{tail}\"", "a".repeat(n))),
    ]
}

fn value() -> impl Strategy<Value = String> {
    leaf().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("[a-z]{0,3}", inner), 0..5).prop_map(|v| {
                let body: Vec<String> = v
                    .into_iter()
                    .map(|(k, v)| format!("{}:{v}", serde_json::to_string(&k).unwrap()))
                    .collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("\"op\"".to_owned()),
        4 => Just("\"d\"".to_owned()),
        4 => Just("\"s\"".to_owned()),
        4 => Just("\"t\"".to_owned()),
        1 => Just(r#""\u006fp""#.to_owned()),
        1 => Just(r#""\u0074""#.to_owned()),
        2 => "[a-z]{1,3}".prop_map(|k| format!("\"{k}\"")),
    ]
}

fn envelope() -> impl Strategy<Value = String> {
    (prop::collection::vec((key(), value()), 0..6), " {0,2}").prop_map(|(fields, ws)| {
        let body: Vec<String> = fields
            .into_iter()
            .map(|(k, v)| format!("{k}{ws}:{ws}{v}"))
            .collect();
        format!("{ws}{{{ws}{}{ws}}}{ws}", body.join(","))
    })
}

/// An envelope in the order Discord sends (`t`, `s`, `op`, then `d`), where the tail scan takes
/// `d` unread, or with `d` moved before one of the others; sometimes with members after all four.
fn discord_order() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("null".to_owned()),
            "[A-Z_]{1,16}".prop_map(|t| format!("\"{t}\"")),
            leaf()
        ],
        prop_oneof![
            Just("null".to_owned()),
            any::<u64>().prop_map(|s| s.to_string()),
            leaf()
        ],
        prop_oneof![Just("0".to_owned()), leaf()],
        value(),
        prop::collection::vec((key(), value()), 0..2),
        " {0,2}",
        prop_oneof![3 => Just(3usize), 1 => 0usize..3],
    )
        .prop_map(|(t, s, op, d, after, ws, at)| {
            let mut members = vec![
                format!(r#""t":{t}"#),
                format!(r#""s":{s}"#),
                format!(r#""op":{op}"#),
            ];
            members.insert(at, format!(r#""d":{ws}{d}{ws}"#));
            members.extend(after.into_iter().map(|(k, v)| format!("{ws}{k}:{v}")));
            format!("{ws}{{{}}}{ws}", members.join(","))
        })
}

fn mutated() -> impl Strategy<Value = String> {
    (
        prop_oneof![envelope(), discord_order()],
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<char>()), 0..3),
    )
        .prop_map(|(text, edits)| {
            let mut chars: Vec<char> = text.chars().collect();
            for (at, kind, ch) in edits {
                if chars.is_empty() {
                    break;
                }
                let i = at.index(chars.len());
                match kind {
                    0 => {
                        chars.remove(i);
                    }
                    1 => chars.insert(i, ch),
                    2 => chars[i] = ch,
                    _ => chars.truncate(i),
                }
            }
            chars.into_iter().collect()
        })
}

proptest! {
    #![proptest_config(fuzz_common::proptest_config(2_500, 0x5ca1_ab1e, 2_000))]

    #[test]
    fn envelopes_agree_with_serde(text in envelope()) {
        check(&text);
    }

    #[test]
    fn discord_ordered_envelopes_agree_with_serde(text in discord_order()) {
        check(&text);
    }

    #[test]
    fn damaged_envelopes_agree_with_serde(text in mutated()) {
        check(&text);
    }

    /// Bytes that need not be UTF-8: a valid envelope with a few bytes overwritten.
    #[test]
    fn damaged_bytes_agree_with_serde(
        text in envelope(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..3),
    ) {
        let mut bytes = text.into_bytes();
        for (at, b) in edits {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
        }
        check_bytes(&bytes);
    }

    /// Arbitrary bytes.
    #[test]
    fn arbitrary_bytes_agree_with_serde(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        check_bytes(&bytes);
    }

    /// An object or array `d` of JSON punctuation in any order, then `s`: the structural skip
    /// accepts much of it that the grammar refuses, and must still never read another `s`.
    #[test]
    fn structural_noise_in_d(
        open in prop::sample::select(vec!["{", "["]),
        noise in r#"[\[\]{}",:\\ a0-9\x01]{0,40}"#,
        s in any::<u64>(),
    ) {
        check(&format!(r#"{{"op":0,"d":{open}{noise},"s":{s}}}"#));
        check(&format!(r#"{{"op":0,"d":{open}{noise}}}"#));
    }

    /// A valid `d` with junk put inside it (between its first and last byte).
    #[test]
    fn damaged_d_agrees_with_serde(
        d in value(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), r#"[\[\]{}",:\\ a0-9.\-]"#), 1..4),
        s in any::<u64>(),
    ) {
        let mut d = d;
        for (at, junk) in edits {
            if d.len() > 2 {
                let i = 1 + at.index(d.len() - 2);
                if d.is_char_boundary(i) {
                    d.insert_str(i, &junk);
                }
            }
        }
        check(&format!(r#"{{"op":0,"t":"X","d":{d},"s":{s}}}"#));
    }
}

#[test]
fn fixed_cases() {
    for text in [
        r#"{"op":0,"d":{"a":[1,2,{"b":"c"}]},"s":42,"t":"MESSAGE_CREATE"}"#,
        r#"{"op":11}"#,
        r#"{"t":null,"s":null,"op":9,"d":false}"#,
        r#"{"op":1,"op":2}"#,
        r#"{"op":-0}"#,
        r#"{"op":1.0}"#,
        r#"{"op":"1"}"#,
        r#"{"op":1,"t":"\ud800"}"#,
        r#"{"op":1,"x":"\ud800"}"#,
        r#"{"op":1,"d":"\ud800"}"#,
        r#"{"op":1,"d":[1,]}"#,
        r#"{"op":1,}"#,
        r#"{"op":1} x"#,
        r#"[{"op":1}]"#,
        r#" {"op":1}"#,
        "{\"op\":1,\"d\":\"a\u{1}b\"}",
        r#"{"op":1,"d":01}"#,
        r#"{"op":1,"d":1.}"#,
        r#"{"op":1,"d":-}"#,
        r#"{"op":1,"d":1e}"#,
        r#"{"op":1,"d":tru}"#,
        r#"{"op":1,"d":{"a":1,"a":2}}"#,
        r#"{"op":1,"d":{"a"}}"#,
        r#"{"op":1,"d":{1:2}}"#,
        r#"{"op":1,"d":[}"#,
        r#"{"op":1,"d":{]}"#,
        "",
        "{",
        r#"{"op":18446744073709551615}"#,
        r#"{"op":18446744073709551616}"#,
        r#"{"op":0,"t":"MESSAGE_\u0043REATE","s":1,"d":{}}"#,
        "{\"op\":0,\"t\":\"X\",\"s\":1,\"d\":\"caf\u{e9} \u{1f600}\"}",
        r#"{"op":0,"s":1e2}"#,
        r#"{"op":0,"s":-1}"#,
        r#"{"op":null}"#,
        r#"{"op":0,"t":5}"#,
        // `d` followed by `s`, with brackets and quotes inside its strings.
        r#"{"op":0,"d":{"a":"]}[{\"","b":["}"]},"s":7,"t":"X"}"#,
        r#"{"op":0,"d":[{"s":1}],"s":2}"#,
        // Scalar `d`, strictly checked on both paths.
        r#"{"op":0,"d":"x","s":1}"#,
        r#"{"op":0,"d":12,"s":1}"#,
        r#"{"op":0,"d":1x,"s":1}"#,
        r#"{"op":0,"d":true,"s":1}"#,
        r#"{"op":0,"d":nul,"s":1}"#,
        // Structure broken inside `d`.
        r#"{"op":0,"d":{"a":"x},"s":1}"#,
        r#"{"op":0,"d":{"a":[1}],"s":1}"#,
        r#"{"op":0,"d":{"a":"\q"},"s":1}"#,
        r#"{"op":0,"d":{"a":"\u12"},"s":1}"#,
        "{\"op\":0,\"d\":{\"a\":\"x\u{1f}\"},\"s\":1}",
        r#"{"op":0,"d":{"a":1}},"s":1}"#,
        r#"{"op":0,"d":{"a":1},"s":1"#,
        // Integers read in one pass, and what must fall back to the number grammar.
        r#"{"op":01}"#,
        r#"{"op":0,"s":007}"#,
        r#"{"op":0,"s":0}"#,
        r#"{"op":0,"s":1E2}"#,
        r#"{"op":0,"s":12e}"#,
        r#"{"op":0,"s":1.0}"#,
        r#"{"op":0,"s":18446744073709551615}"#,
        r#"{"op":0,"s":18446744073709551616,"t":"X"}"#,
        r#"{"op":0,"s":184467440737095516150}"#,
        r#"{"op":0,"s":99999999999999999999}"#,
        // Keys matched in place, and the ones that only look like them.
        r#"{"opx":1,"op":2}"#,
        r#"{"o":1,"op":2}"#,
        r#"{"s ":1,"op":0}"#,
        r#"{"op\":1,"op":0}"#,
        r#"{"s":1,"op":0}"#,
        r#"{"op":0,"s":1,"s":2}"#,
        r#"{"op":0,"t":"X","t":"Y"}"#,
        // `d` in Discord's place, taken unread by the tail scan, and not in it.
        r#"{"t":"X","s":1,"op":0,"d":{"a":[1,{"b":"}"}]}}"#,
        r#"{"t":"X","s":1,"op":0,"d":[{"a":1}] }"#,
        r#"{"t":"X","s":1,"op":0,"d":{"a":"x}]}"#,
        r#"{"t":"X","s":1,"op":0,"d":{"a":1]}"#,
        r#"{"t":"X","s":1,"op":0,"d":{}"#,
        r#"{"t":"X","s":1,"op":0,"d":{}}}"#,
        r#"{"t":"X","s":1,"op":0,"d":{},"x":[]}"#,
        r#"{"t":"X","s":1,"op":0,"d":{},"s":2}"#,
        r#"{"t":"X","s":1,"op":0,"d":{},"s":[]}"#,
        r#"{"op":0,"d":{"a":1},"s":1,"t":"X","x":[]}"#,
        r#"{"t":"X","op":0,"d":[1],"s":5,"y":{}}"#,
        r#"{"s":5,"op":0,"d":{},"t":"X","y":{}}"#,
        // Grammar broken inside `d`, structure intact: the fast path keeps it (tested below).
        r#"{"op":0,"d":{"a":01,,:},"s":2}"#,
    ] {
        check(text);
    }
    // Escapes at every offset around the eight-byte words and the 64-byte blocks of the
    // structural skip, in `d` and in `t`; strings and escapes that straddle a block.
    for n in 0..140 {
        let long = format!("{}]}}[{{\\\"", "x".repeat(n));
        check(&format!(r#"{{"op":0,"d":{{"k":"{long}","l":[1]}},"s":4}}"#));
        check(&format!(r#"{{"op":0,"d":{{"k":"{long}"],"s":4}}"#));
    }
    for n in 0..80 {
        let pad = "a".repeat(n);
        for esc in [r#"\""#, r#"\\"#, r#"\\\""#, r#"\\\\"#, r#"\u0022"#, r#"\/"#] {
            check(&format!(r#"{{"op":0,"d":{{"k":"{pad}{esc}"}},"s":3}}"#));
            check(&format!(r#"{{"op":0,"d":["{pad}{esc}]"],"s":3}}"#));
            check(&format!(r#"{{"op":0,"t":"{pad}{esc}","d":{{}},"s":3}}"#));
        }
    }
    for bytes in [
        &b"{\"op\":0,\"d\":\"\xff\"}"[..],
        b"{\"op\":0,\"t\":\"\xc3\"}",
        b"\xef\xbb\xbf{\"op\":0}",
        b"{\"op\":0}\xff",
    ] {
        check_bytes(bytes);
    }
    let deep = format!("{{\"op\":1,\"d\":{}{}}}", "[".repeat(126), "]".repeat(126));
    check(&deep);
    let deeper = format!("{{\"op\":1,\"d\":{}{}}}", "[".repeat(127), "]".repeat(127));
    check(&deeper);
    let deepest = format!("{{\"op\":1,\"d\":{}{}}}", "[".repeat(200), "]".repeat(200));
    check(&deepest);
    // Mixed containers past the first word of the bracket stack, closed right and wrong.
    for n in [127usize, 128, 129, 255, 256, 257, 300] {
        let open: String = (0..n)
            .map(|i| if i % 3 == 0 { "{\"k\":" } else { "[" })
            .collect();
        let close: String = (0..n)
            .rev()
            .map(|i| if i % 3 == 0 { "}" } else { "]" })
            .collect();
        check(&format!("{{\"op\":1,\"d\":{open}1{close}}}"));
        let mut wrong = close.clone().into_bytes();
        let j = wrong.len() / 2;
        wrong[j] = if wrong[j] == b'}' { b']' } else { b'}' };
        check(&format!(
            "{{\"op\":1,\"d\":{open}1{}}}",
            String::from_utf8(wrong).unwrap()
        ));
    }
}

/// What the fast path keeps and the strict one refuses: a `d` whose brackets and strings are
/// sound but whose grammar is not. The envelope around it is still read exactly.
#[test]
fn fast_path_keeps_structurally_sound_d() {
    let text = br#"{"op":0,"t":"X","d":{"a":01,,: true false},"s":2}"#;
    let e = Envelope::parse(text).expect("structurally sound");
    assert_eq!((e.op, e.s, e.t.as_deref()), (0, Some(2), Some("X")));
    assert_eq!(e.d, Some(r#"{"a":01,,: true false}"#));
    assert!(serde_json::from_str::<&RawValue>(e.d.unwrap_or_default()).is_err());
    assert!(matches!(
        Envelope::parse_strict(text),
        Err(ProtocolError::MalformedJson { .. })
    ));
    // Nesting deeper than serde_json's recursion limit, on the fast path.
    let deep = format!(
        r#"{{"op":0,"d":{}"x"{},"s":9}}"#,
        r#"{"k":["#.repeat(300),
        "]}".repeat(300)
    );
    let e = Envelope::parse(deep.as_bytes()).expect("deep but balanced");
    assert_eq!(e.s, Some(9));
    let mismatched = deep.replacen("]}", "}}", 1);
    assert!(matches!(
        Envelope::parse(mismatched.as_bytes()),
        Err(ProtocolError::MalformedJson { .. })
    ));
}

/// What the tail path takes unread: a `d` in Discord's place, after `op`, `s` and `t`, whose
/// structure the structural path refuses; a `d` that does not close with its own kind of
/// bracket, or that is not last, is still checked structurally.
#[test]
fn tail_path_takes_discords_d_unread() {
    let text = "{\"t\":\"X\",\"s\":3,\"op\":0,\"d\":{\"a\":\"x\u{1}\",\"b\":[}} \n";
    assert!(matches!(
        Envelope::parse(text.as_bytes()),
        Err(ProtocolError::MalformedJson { .. })
    ));
    let e = Envelope::parse_tail(text.as_bytes()).expect("d taken unread");
    assert_eq!((e.op, e.s, e.t.as_deref()), (0, Some(3), Some("X")));
    assert_eq!(e.d, Some("{\"a\":\"x\u{1}\",\"b\":[}"));
    // The same `d` closed by the other kind of bracket, or before `s`: checked, refused.
    for text in [
        "{\"t\":\"X\",\"s\":3,\"op\":0,\"d\":{\"a\":\"x\u{1}\",\"b\":[]}",
        "{\"t\":\"X\",\"op\":0,\"d\":{\"a\":\"x\u{1}\",\"b\":[},\"s\":3}",
    ] {
        assert!(
            matches!(
                Envelope::parse_tail(text.as_bytes()),
                Err(ProtocolError::MalformedJson { .. })
            ),
            "{text:?}"
        );
    }
}
