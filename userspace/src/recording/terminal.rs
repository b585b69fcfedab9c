//! What `replay` lets through to the operator's terminal.
//!
//! A recording's output is the recorded user's to choose, and a terminal does more than
//! draw: it writes the clipboard (OSC 52), sets titles and links, takes device control
//! strings, and answers queries (device status, attributes, window reports) by typing the
//! answer into whatever reads the terminal next. A replayed log must not act on the auditor's
//! machine, so those are dropped here — OSC, DCS, SOS, PM and APC strings whole, and the
//! CSI and ESC sequences that make the terminal answer — in their 7-bit forms and as UTF-8
//! C1 controls. What draws (text, colours, cursor movement, erasing) passes as recorded.
//! `replay --raw` skips this.

/// Parameter and intermediate bytes kept for one CSI sequence; a longer one is dropped
/// whole (no terminal needs more, and the filter's memory stays bounded).
const CSI_MAX: usize = 64;

#[derive(Default)]
enum State {
    #[default]
    Ground,
    /// After ESC.
    Esc,
    /// Inside a CSI sequence: its parameter and intermediate bytes so far (`None`: too many,
    /// dropped when it ends).
    Csi(Option<Vec<u8>>),
    /// Inside a string (OSC, DCS, SOS, PM, APC): dropped up to its terminator.
    Str,
    /// ESC inside a string: `\` ends it.
    StrEsc,
    /// 0xC2 inside a string: 0x9C (ST as UTF-8) ends it.
    StrC2,
    /// After 0xC2 in text: a C1 control follows, or a character from U+0080 to U+00BF.
    C2,
}

/// Streams the target's output through; sequences may be split anywhere between calls.
#[derive(Default)]
pub struct Filter {
    state: State,
}

impl Filter {
    /// Appends to `out` what of `input` may reach the terminal.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.byte(b, out);
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        match std::mem::take(&mut self.state) {
            State::Ground => self.ground(b, out),
            State::Esc => match b {
                b'[' => self.state = State::Csi(Some(Vec::new())),
                b']' | b'P' | b'X' | b'^' | b'_' => self.state = State::Str,
                // DECID: the terminal answers with its identity.
                b'Z' => {}
                // CAN and SUB cancel the sequence.
                0x18 | 0x1a => {}
                0x1b => self.state = State::Esc,
                // A C1 control as UTF-8 interrupts the escape and acts on its own: the lone
                // ESC goes (sent on, it would make no difference to what the C1 does).
                0xc2 => self.state = State::C2,
                _ => out.extend_from_slice(&[0x1b, b]),
            },
            State::Csi(params) => match b {
                0x20..=0x3f => {
                    self.state = State::Csi(params.and_then(|mut p| {
                        p.push(b);
                        (p.len() <= CSI_MAX).then_some(p)
                    }))
                }
                0x40..=0x7e => {
                    if let Some(p) = params.filter(|p| !answers(p, b)) {
                        out.extend_from_slice(b"\x1b[");
                        out.extend_from_slice(&p);
                        out.push(b);
                    }
                }
                // Anything else ends the sequence unfinished; the byte counts on its own.
                _ => self.ground(b, out),
            },
            State::Str => match b {
                0x07 | 0x18 | 0x1a => {}
                0x1b => self.state = State::StrEsc,
                0xc2 => self.state = State::StrC2,
                _ => self.state = State::Str,
            },
            State::StrEsc => {
                if b != b'\\' {
                    self.state = State::Str;
                }
            }
            State::StrC2 => {
                if b != 0x9c {
                    self.state = State::Str;
                }
            }
            State::C2 => match b {
                // CSI, as a UTF-8 C1 control.
                0x9b => self.state = State::Csi(Some(Vec::new())),
                // DCS, SOS, OSC, PM, APC.
                0x90 | 0x98 | 0x9d | 0x9e | 0x9f => self.state = State::Str,
                // Other C1 controls (single shifts, ST, NEL…): dropped.
                0x80..=0x9f => {}
                // U+00A0 to U+00BF: sent together, so that a C2 sent alone can never join a
                // byte sent later into a C1 control.
                0xa0..=0xbf => out.extend_from_slice(&[0xc2, b]),
                // Not UTF-8 (a terminal would show U+FFFD): the lone C2 goes.
                _ => self.ground(b, out),
            },
        }
    }

    fn ground(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            0x1b => self.state = State::Esc,
            0xc2 => self.state = State::C2,
            _ => out.push(b),
        }
    }
}

/// Whether CSI `params` `last` asks the terminal for an answer: device status (`n`), device
/// attributes (`c`), window operations and reports (`t`), terminal parameters (`x`), mode,
/// presentation state and locator reports (`$p`, `$w`, `'|`).
fn answers(params: &[u8], last: u8) -> bool {
    match last {
        b'n' | b'c' | b't' | b'x' => true,
        b'p' | b'w' => params.contains(&b'$'),
        b'|' => params.contains(&b'\''),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filtered(chunks: &[&[u8]]) -> Vec<u8> {
        let mut f = Filter::default();
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut out);
        }
        out
    }

    #[test]
    fn drawing_passes_and_what_acts_on_the_terminal_is_dropped() {
        let drawing = "plain © text\r\n\x1b[1;31mred\x1b[0m \x1b[2J\x1b[H\x1b[?25l\x1b7\x1b8 é€".as_bytes();
        assert_eq!(filtered(&[drawing]), drawing);
        let hostile: &[(&[u8], &[u8])] = &[
            (b"a\x1b]52;c;aGk=\x07b", b"ab"),
            (b"a\x1b]0;title\x1b\\b", b"ab"),
            (b"a\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\b", b"alinkb"),
            (b"a\x1bP$q m\x1b\\b", b"ab"),
            (b"a\x1b_apc\x07\x1b^pm\x07\x1bXsos\x07b", b"ab"),
            (
                b"a\x1b[6n\x1b[c\x1b[>0c\x1b[21t\x1b[14t\x1b[?1$p\x1b[1'|\x1bZb",
                b"ab",
            ),
            ("a\u{9d}52;c;aGk=\u{9c}b".as_bytes(), b"ab"),
            ("a\u{9b}6nb\u{90}x\u{9c}c".as_bytes(), b"abc"),
            ("a\x1b\u{9d}52;c;aGk=\x07b".as_bytes(), b"ab"),
            // A lone C2 must not meet a later byte across a dropped control.
            (b"a\xc2\xc2\x9c\x96b", b"a\x96b"),
            // A CSI of more parameters than any terminal needs goes whole.
            (&[b"a\x1b[".as_slice(), &[b'1'; 100], b"mb"].concat(), b"ab"),
        ];
        for (input, want) in hostile {
            assert_eq!(
                filtered(&[input]),
                *want,
                "{}",
                String::from_utf8_lossy(input).escape_debug()
            );
            // Split at every byte: the same.
            let chunks: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(filtered(&chunks), *want);
        }
    }
}
