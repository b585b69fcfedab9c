//! Text a peer may have written, made fit to show or log.

/// `text` as one printable line of at most `max` bytes: control characters dropped, cut at
/// a character boundary (peers' UTF-8 is quoted in errors, and cutting inside a character
/// panics).
pub fn printable(text: &str, max: usize) -> String {
    let mut t: String = text.chars().filter(|c| !c.is_control()).take(max).collect();
    if t.len() > max {
        let mut end = max;
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        t.truncate(end);
    }
    t
}
