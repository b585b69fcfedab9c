//! The replay's terminal filter (`recording::terminal::Filter`) on arbitrary recorded output.
//!
//! Input: one byte choosing how the output is cut into chunks, then the output.
//!
//! What must hold: no panic; the same result however the output is cut; and, read as a
//! terminal reads it (ECMA-48, C1 controls as UTF-8), the result holds no string (OSC, DCS,
//! SOS, PM, APC), no C1 control, no DECID, and no CSI sequence that makes
//! the terminal answer (device status, attributes, window reports, DECREQTPARM, DECRQM,
//! DECRQPSR, DECRQLP).

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

/// The reference reading: panics at anything that would act on the terminal.
fn check(out: &[u8]) {
    let mut i = 0;
    while i < out.len() {
        match out[i] {
            0x1b => {
                let Some(&next) = out.get(i + 1) else {
                    panic!("a lone ESC at the end");
                };
                assert!(!b"]PX^_Z".contains(&next), "ESC {next:#x} at {i}");
                assert_ne!(next, 0xc2, "ESC before a C1 control at {i}");
                if next == b'[' {
                    let mut j = i + 2;
                    while out.get(j).is_some_and(|b| (0x20..=0x3f).contains(b)) {
                        j += 1;
                    }
                    let params = &out[i + 2..j];
                    let last = *out.get(j).expect("a CSI without its final byte");
                    assert!((0x40..=0x7e).contains(&last), "CSI cut by {last:#x} at {j}");
                    let answers = match last {
                        b'n' | b'c' | b't' | b'x' => true,
                        b'p' | b'w' => params.contains(&b'$'),
                        b'|' => params.contains(&b'\''),
                        _ => false,
                    };
                    assert!(!answers, "a CSI the terminal answers at {i}");
                    i = j + 1;
                } else {
                    i += 2;
                }
            }
            0xc2 => {
                if let Some(next) = out.get(i + 1) {
                    assert!(!(0x80..=0x9f).contains(next), "C1 {next:#x} at {i}");
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
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
