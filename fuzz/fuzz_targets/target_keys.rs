//! The `target-keys` file (`hostcheck::parse_target_keys`): what the daemon remembers of the
//! host keys targets presented, read back at start.
//!
//! What must hold: no panic; every line is either an entry or reported unreadable (never
//! both, never more than there are lines); what was read, written back as the daemon writes
//! it (`{vnet} {address} {fingerprint}\n`), reads back the same; and a line appended the way
//! `KeyMemory` appends after a crash (a newline first if the file does not end in one) is
//! read back as the latest word for its target, whatever garbage came before.

#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use portcullis::hostcheck::parse_target_keys;

fuzz_target!(|data: &[u8]| {
    let (seen, unreadable) = parse_target_keys(data);
    let lines = String::from_utf8_lossy(data).lines().count();
    assert!(seen.len() + unreadable.len() <= lines);
    assert!(unreadable.windows(2).all(|w| w[0] < w[1]) && unreadable.iter().all(|&n| n >= 1 && n <= lines));

    // Written back as the daemon writes lines, it reads back the same.
    let mut entries: Vec<_> = seen.iter().collect();
    entries.sort();
    let mut text = String::new();
    for ((vnet, addr), fp) in &entries {
        assert!(
            !fp.is_empty() && !fp.chars().any(char::is_whitespace),
            "fingerprint {fp:?}"
        );
        text.push_str(&format!("{vnet} {addr} {fp}\n"));
    }
    let (again, bad) = parse_target_keys(text.as_bytes());
    assert!(bad.is_empty(), "lines {bad:?} of {text:?} unreadable");
    assert_eq!(again, seen);

    // A line appended after whatever the file holds (a crash may have cut its last line).
    let vnet = data.first().copied().unwrap_or(1) as u16;
    let target: SocketAddr = "[2001:db8::7]:2222".parse().unwrap();
    let fp = "SHA256:fuzz";
    let mut file = data.to_vec();
    if file.last().is_some_and(|&c| c != b'\n') {
        file.push(b'\n');
    }
    file.extend_from_slice(format!("{vnet} {target} {fp}\n").as_bytes());
    let (after, _) = parse_target_keys(&file);
    assert_eq!(
        after.get(&(vnet, target)).map(String::as_str),
        Some(fp),
        "the appended line was lost"
    );
    assert_eq!(
        after.len(),
        seen.len() + usize::from(!seen.contains_key(&(vnet, target)))
    );
});
