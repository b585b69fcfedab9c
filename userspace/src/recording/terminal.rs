//! What `replay` lets through to the operator's terminal.
//!
//! A recording's output is the recorded user's to choose, and a terminal does more than
//! draw: it writes the clipboard (OSC 52), sets titles and links, takes device control
//! strings, switches character encodings, and answers queries (device status, attributes,
//! window and mode reports, its version) by typing the answer into whatever reads the
//! terminal next. A replayed log must not act on the auditor's machine, so this reads the
//! output as a terminal does (ECMA-48 with the VT500 parser's rules: C0 controls run inside
//! escape sequences without ending them, ESC or a C1 control ends a string and starts what
//! it introduces) and passes on only what draws: text; C0 controls but ENQ (which a terminal
//! answers); ESC sequences but DECID and the encoding switches; CSI sequences from a list of
//! those that move the cursor, erase, insert, scroll, set tab stops, colours and modes. OSC,
//! DCS, SOS, PM and APC strings are dropped whole, as are C1 controls, whether written as
//! UTF-8 or as raw bytes outside a UTF-8 character (the terminal is taken to speak UTF-8).
//! A sequence is sent whole or not at all, so the terminal is never left inside one.
//! `replay --raw` skips this.

/// Parameter and intermediate bytes kept for one CSI sequence; a longer one is dropped
/// whole (no terminal needs more, and the filter's memory stays bounded).
const CSI_MAX: usize = 64;

const ESC: u8 = 0x1b;
/// ENQ: a terminal answers it with its answerback string.
const ENQ: u8 = 0x05;
/// CAN and SUB end any sequence.
const CAN: u8 = 0x18;
const SUB: u8 = 0x1a;
const DEL: u8 = 0x7f;

#[derive(Default)]
enum State {
    #[default]
    Ground,
    /// After ESC.
    Esc,
    /// After ESC and intermediate bytes (kept; `None`: too many, dropped when it ends).
    EscInter(Option<Vec<u8>>),
    /// After ESC `%` (an encoding switch): dropped up to its final byte.
    EscDrop,
    /// Inside a CSI sequence: its parameter and intermediate bytes so far (`None`: too many,
    /// dropped when it ends).
    Csi(Option<Vec<u8>>),
    /// Inside a string, dropped up to its terminator (BEL ends an OSC only).
    Str { osc: bool },
    /// ESC inside a string: `\` ends it; anything else ends it and starts an escape.
    StrEsc,
    /// 0xC2 inside a string: a C1 control ends it (and acts).
    StrC2 { osc: bool },
    /// After 0xC2 outside a string: a C1 control, or a character from U+00A0 to U+00BF.
    C2,
}

/// Streams the target's output through; sequences may be split anywhere between calls.
#[derive(Default)]
pub struct Filter {
    state: State,
    /// Continuation bytes the UTF-8 character being sent still has: only these may be in
    /// 0x80–0x9F (elsewhere such a byte is a C1 control to a terminal that is not UTF-8).
    need: u8,
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
                b']' => self.state = State::Str { osc: true },
                b'P' | b'X' | b'^' | b'_' => self.state = State::Str { osc: false },
                // DECID: the terminal answers with its identity.
                b'Z' => {}
                b'%' => self.state = State::EscDrop,
                0x20..=0x2f => self.state = State::EscInter(Some(vec![b])),
                0x30..=0x7e => out.extend_from_slice(&[ESC, b]),
                _ => self.inside(b, State::Esc, out),
            },
            State::EscInter(inter) => match b {
                0x20..=0x2f => self.state = State::EscInter(kept(inter, b)),
                0x30..=0x7e => {
                    if let Some(i) = inter {
                        whole(out, &[ESC], &i, b);
                    }
                }
                _ => self.inside(b, State::EscInter(inter), out),
            },
            State::EscDrop => match b {
                0x20..=0x2f => self.state = State::EscDrop,
                0x30..=0x7e => {}
                _ => self.inside(b, State::EscDrop, out),
            },
            State::Csi(params) => match b {
                0x20..=0x3f => self.state = State::Csi(kept(params, b)),
                0x40..=0x7e => {
                    if let Some(p) = params.filter(|p| draws(p, b)) {
                        whole(out, &[ESC, b'['], &p, b);
                    }
                }
                _ => self.inside(b, State::Csi(params), out),
            },
            State::Str { osc } => match b {
                0x07 if osc => {}
                CAN | SUB => {}
                ESC => self.state = State::StrEsc,
                0xc2 => self.state = State::StrC2 { osc },
                _ => self.state = State::Str { osc },
            },
            State::StrEsc => {
                if b != b'\\' {
                    self.state = State::Esc;
                    self.byte(b, out);
                }
            }
            State::StrC2 { osc } => {
                // A C1 control ends the string and acts; anything else is the string's, as
                // a terminator too (`C2 ESC \`, `C2 BEL`).
                self.state = match b {
                    0x80..=0x9f => State::C2,
                    _ => State::Str { osc },
                };
                self.byte(b, out);
            }
            State::C2 => match b {
                // CSI, as a UTF-8 C1 control.
                0x9b => self.state = State::Csi(Some(Vec::new())),
                0x9d => self.state = State::Str { osc: true },
                // DCS, SOS, PM, APC.
                0x90 | 0x98 | 0x9e | 0x9f => self.state = State::Str { osc: false },
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

    /// A byte other than the sequence's own inside an escape sequence (`state`), as the
    /// terminal takes it: C0 controls run and the sequence goes on, DEL is ignored, CAN and
    /// SUB end it, ESC or a C1 control ends it and starts anew; anything else ends it (we
    /// had sent nothing of it, or only the whole ESC part) and counts on its own.
    fn inside(&mut self, b: u8, state: State, out: &mut Vec<u8>) {
        match b {
            CAN | SUB => {}
            ESC => self.state = State::Esc,
            DEL | ENQ => self.state = state,
            0xc2 => self.state = State::C2,
            0x00..=0x1f => {
                out.push(b);
                self.state = state;
            }
            _ => self.ground(b, out),
        }
    }

    fn ground(&mut self, b: u8, out: &mut Vec<u8>) {
        let need = std::mem::take(&mut self.need);
        match b {
            ESC => self.state = State::Esc,
            0xc2 => self.state = State::C2,
            ENQ => {}
            0x80..=0xbf if need > 0 => {
                out.push(b);
                self.need = need - 1;
            }
            // Outside a character: to a terminal that is not UTF-8, a C1 control.
            0x80..=0x9f => {}
            0xc3..=0xdf => {
                out.push(b);
                self.need = 1;
            }
            0xe0..=0xef => {
                out.push(b);
                self.need = 2;
            }
            0xf0..=0xf4 => {
                out.push(b);
                self.need = 3;
            }
            _ => out.push(b),
        }
    }
}

/// A sequence sent whole: its introducer, the bytes kept, its final byte.
fn whole(out: &mut Vec<u8>, intro: &[u8], kept: &[u8], last: u8) {
    out.extend_from_slice(intro);
    out.extend_from_slice(kept);
    out.push(last);
}

/// A sequence's bytes so far with `b`; `None` once past [`CSI_MAX`] (dropped when it ends).
fn kept(bytes: Option<Vec<u8>>, b: u8) -> Option<Vec<u8>> {
    bytes.and_then(|mut v| {
        v.push(b);
        (v.len() <= CSI_MAX).then_some(v)
    })
}

/// Whether CSI `params` `last` only draws: cursor movement and position (`@ A–H I Z \` a d
/// e f`), erasing and inserting (`J K L M P X b`), scrolling (`S T r`), tab stops (`g`),
/// modes (`h l`, also DEC private ones with `?`), colours and attributes (`m`), cursor save
/// and restore (`s u`). The private `?` only with `h l J K`; no other private marker and no
/// intermediates (those are the queries and the settings of keyboards and windows).
fn draws(params: &[u8], last: u8) -> bool {
    let (private, rest) = match params.split_first() {
        Some((&m @ b'<'..=b'?', rest)) => (Some(m), rest),
        _ => (None, params),
    };
    if !rest
        .iter()
        .all(|b| b.is_ascii_digit() || matches!(b, b';' | b':'))
    {
        return false;
    }
    match private {
        None => matches!(
            last,
            b'@' | b'A'..=b'M' | b'P' | b'S' | b'T' | b'X' | b'Z' | b'`' | b'a' | b'b' | b'd'..=b'h'
                | b'l' | b'm' | b'r' | b's' | b'u'
        ),
        Some(b'?') => matches!(last, b'h' | b'l' | b'J' | b'K'),
        Some(_) => false,
    }
}

/// What puts a terminal back as a shell expects it, whatever a replay left: attributes,
/// character set, scroll region, main screen, cursor shown, mouse and focus reports,
/// bracketed paste. Written before the verdict that follows a replay.
pub const RESET: &[u8] = b"\x1b[0m\x1b(B\x0f\x1b[r\x1b[?1049l\x1b[?25h\x1b[?1000l\x1b[?1002l\x1b[?1003l\
\x1b[?1004l\x1b[?1005l\x1b[?1006l\x1b[?1015l\x1b[?2004l\r\n";

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
        let drawing = "plain © text ” ok\r\n\t\x1b[1;31mred\x1b[0m \x1b[2J\x1b[H\x1b[?25l\x1b[?1049h\x1b7\x1b8\x1b(0q\x1b(B é€😀"
            .as_bytes();
        assert_eq!(filtered(&[drawing]), drawing);
        let hostile: &[(&[u8], &[u8])] = &[
            (b"a\x1b]52;c;aGk=\x07b", b"ab"),
            (b"a\x1b]0;title\x1b\\b", b"ab"),
            (b"a\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\b", b"alinkb"),
            (b"a\x1bP$q m\x1b\\b", b"ab"),
            (b"a\x1b_apc\x1b\\\x1b^pm\x1b\\\x1bXsos\x1b\\b", b"ab"),
            (
                b"a\x1b[6n\x1b[c\x1b[>0c\x1b[21t\x1b[14t\x1b[?1$p\x1b[1'|\x1bZb",
                b"ab",
            ),
            (
                b"a\x1b[>q\x1b[1;1;1;1;1*y\x1b[$u\x1b[?4m\x1b[?u\x1b[?1;1S\x1b[#|\x1b[\"v\x05b",
                b"ab",
            ),
            ("a\u{9d}52;c;aGk=\u{9c}b".as_bytes(), b"ab"),
            ("a\u{9b}6nb\u{90}x\u{9c}c".as_bytes(), b"abc"),
            ("a\x1b\u{9d}52;c;aGk=\x07b".as_bytes(), b"ab"),
            // C0 controls inside an escape run and leave it going (the VT500 parser's way).
            (b"a\x1b\x00]52;c;aGk=\x07b", b"a\x00b"),
            (b"a\x1b\x7f[6nb", b"ab"),
            (b"a\x1b\x05Zb", b"ab"),
            (b"a\x1b[\x006nb", b"a\x00b"),
            // ESC % switches the encoding: dropped.
            (b"a\x1b%@b", b"ab"),
            // A lone C2 must not meet a later byte across a dropped control.
            (b"a\xc2\xc2\x9c\x96b", b"ab"),
            // Raw C1 bytes outside a UTF-8 character.
            (b"a\x9b6n\x9d0;x\x07b", b"a6n0;x\x07b"),
            // A CSI of more parameters than any terminal needs goes whole.
            (&[b"a\x1b[".as_slice(), &[b'1'; 100], b"mb"].concat(), b"ab"),
        ];
        for (input, want) in hostile {
            let name = String::from_utf8_lossy(input).escape_debug().to_string();
            assert_eq!(filtered(&[input]), *want, "{name}");
            // Split at every byte: the same.
            let chunks: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(filtered(&chunks), *want, "{name}");
        }
    }

    /// A string ends where the terminal ends it, so what follows is shown as the user saw it.
    #[test]
    fn strings_end_where_a_terminal_ends_them() {
        assert_eq!(filtered(&[b"\x1b]0;t\x1b[0mvisible"]), b"\x1b[0mvisible");
        assert_eq!(
            filtered(&["\x1b]0;t\u{9b}1mvisible".as_bytes()]),
            b"\x1b[1mvisible"
        );
        // A lone C2 in a string does not hide the terminator after it.
        assert_eq!(filtered(&[b"\x1b]0;t\xc2\x1b\\shown"]), b"shown");
        assert_eq!(filtered(&[b"\x1b]0;t\xc2\x07shown"]), b"shown");
        // BEL ends an OSC, not a DCS.
        assert_eq!(filtered(&[b"\x1bPx\x07hidden\x1b\\shown"]), b"shown");
    }
}
