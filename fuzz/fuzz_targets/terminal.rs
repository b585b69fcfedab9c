//! The replay's terminal filter (`recording::terminal::Filter`) on arbitrary recorded output.
//!
//! Input: one byte choosing how the output is cut into chunks, then the output.
//!
//! What must hold: no panic; the same result however the output is cut; and, read as a
//! terminal reads it (a VT500-style parser, UTF-8), the result starts no string (OSC, DCS,
//! SOS, PM, APC), holds no C1 control (as UTF-8 or as a raw byte outside a character), no
//! ENQ, DECID or encoding switch, only CSI sequences that draw, and ends outside any
//! sequence.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::recording::terminal::Filter;

fn filtered<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut f = Filter::default();
    let mut out = Vec::new();
    for c in chunks {
        f.push(c, &mut out);
    }
    out
}

/// A CSI sequence that only draws, as the filter's documentation lists them.
fn draws(params: &[u8], last: u8) -> bool {
    let text = std::str::from_utf8(params).unwrap();
    let (private, numbers) = match text.strip_prefix('?') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if !numbers.chars().all(|c| c.is_ascii_digit() || c == ';' || c == ':') {
        return false;
    }
    let last = last as char;
    if private {
        "hlJK".contains(last)
    } else {
        "@ABCDEFGHIJKLMPSTXZ`abdefghlmrsu".contains(last)
    }
}

/// The reference reading: `out` as a VT500-style parser in a UTF-8 terminal reads it (C0
/// controls run inside escape sequences without ending them, DEL is ignored there, CAN and
/// SUB end them); panics at anything that would act rather than draw, and at a sequence
/// left unfinished at the end.
fn check(out: &[u8]) {
    enum S {
        Ground,
        Esc,
        EscInter,
        Csi(Vec<u8>),
    }
    let mut s = S::Ground;
    let mut need = 0;
    for (i, &b) in out.iter().enumerate() {
        assert!(
            !(b == 0xc2 && out.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n))),
            "a C1 control as UTF-8 at {i}"
        );
        assert!(!((0x80..=0x9f).contains(&b) && need == 0), "a raw C1 byte at {i}");
        need = match b {
            0x80..=0xbf if need > 0 => need - 1,
            0xc2..=0xdf => 1,
            0xe0..=0xef => 2,
            0xf0..=0xf4 => 3,
            _ => 0,
        };
        assert_ne!(b, 0x05, "ENQ at {i}");
        s = match s {
            S::Ground => match b {
                0x1b => S::Esc,
                _ => S::Ground,
            },
            S::Esc => match b {
                0x1b => S::Esc,
                0x18 | 0x1a => S::Ground,
                0x00..=0x1f | 0x7f => S::Esc,
                b'[' => S::Csi(Vec::new()),
                b']' | b'P' | b'X' | b'^' | b'_' => panic!("a string starts at {i}"),
                b'Z' => panic!("DECID at {i}"),
                b'%' => panic!("an encoding switch at {i}"),
                0x20..=0x2f => S::EscInter,
                _ => S::Ground,
            },
            S::EscInter => match b {
                0x1b => S::Esc,
                0x18 | 0x1a => S::Ground,
                0x00..=0x1f | 0x7f | 0x20..=0x2f => S::EscInter,
                _ => S::Ground,
            },
            S::Csi(mut p) => match b {
                0x1b => S::Esc,
                0x18 | 0x1a => S::Ground,
                0x00..=0x1f | 0x7f => S::Csi(p),
                0x20..=0x3f => {
                    p.push(b);
                    S::Csi(p)
                }
                0x40..=0x7e => {
                    assert!(draws(&p, b), "CSI {:?} {} at {i}", String::from_utf8_lossy(&p), b as char);
                    S::Ground
                }
                _ => S::Ground,
            },
        };
    }
    assert!(matches!(s, S::Ground), "left inside a sequence");
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, output)) = data.split_first() else {
        return;
    };
    let whole = filtered(std::iter::once(output));
    let step = usize::from(cut % 16) + 1;
    assert_eq!(filtered(output.chunks(step)), whole, "cut every {step} bytes");
    assert_eq!(filtered(output.chunks(1)), whole, "cut at every byte");
    check(&whole);
});
