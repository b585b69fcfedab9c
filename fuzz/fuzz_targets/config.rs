//! Configuration text → validated snapshot (`config::parse_str`: no filesystem).
//!
//! What must hold: no panic; an error names `<string>:line:column` inside the text; a valid
//! configuration keeps the invariants the dataplane and the proxy rely on (one target per
//! (vnet, address), every target in a declared vnet, addresses in one notation, vnet ids
//! and names unique), and every identity and target it declares can be looked up and
//! judged by the policy engine without a panic.

#![no_main]

use std::{collections::HashSet, net::IpAddr};

use libfuzzer_sys::fuzz_target;
use portcullis::{
    config::{parse_str, ConfigError},
    policy::Request,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let loaded = match parse_str(text) {
        Ok(l) => l,
        Err(ConfigError::Invalid {
            path,
            line,
            column,
            message,
        }) => {
            assert_eq!(path.to_str(), Some("<string>"));
            let lines = text.split('\n').count();
            assert!(line >= 1 && line <= lines, "line {line} of {lines}: {message}");
            let len = text.split('\n').nth(line - 1).unwrap().len();
            assert!(
                column >= 1 && column <= len + 1,
                "column {column} of {len}: {message}"
            );
            // Found here and fixed: toml gives some syntax errors (a control character in a
            // comment) an empty message; the configuration supplies a text.
            assert!(
                !message.is_empty(),
                "an error without a message at {line}:{column}"
            );
            return;
        }
        Err(e @ ConfigError::Read { .. }) => panic!("parse_str read a file: {e}"),
        #[allow(unreachable_patterns)]
        Err(e) => panic!("unexpected error kind: {e}"),
    };

    let t = &loaded.targets;
    let mut ids = HashSet::new();
    let mut names = HashSet::new();
    for v in &t.vnets {
        assert!(ids.insert(v.id), "vnet id {} twice", v.id);
        assert!(names.insert(v.name.as_str()), "vnet {:?} twice", v.name);
    }
    let mut seen = HashSet::new();
    for a in &t.addrs {
        assert!(
            ids.contains(&a.vnet),
            "target {} in undeclared vnet {}",
            a.target,
            a.vnet
        );
        assert!(
            seen.insert((a.vnet, a.addr)),
            "{} twice in vnet {}",
            a.addr,
            a.vnet
        );
        if let IpAddr::V6(v6) = a.addr {
            assert!(
                v6.to_ipv4_mapped().is_none(),
                "{v6}: an IPv4 address in IPv6 notation"
            );
        }
        let found = t.lookup(a.vnet, a.addr).expect("a target's own address finds it");
        assert_eq!(found.target, a.target);
    }

    // Judge a bounded sample: every declared identity's first source against every target.
    let vnet_name = |id: u16| t.vnet_by_id(id).map(|v| v.name.as_str()).unwrap_or("?");
    for i in loaded.config.identity.iter().take(4) {
        let Some(vnet) = t.vnets.iter().find(|v| v.name == *i.vnet.get_ref()) else {
            continue;
        };
        let Some(source) = i
            .sources
            .first()
            .and_then(|s| s.get_ref().split('/').next().unwrap().parse::<IpAddr>().ok())
        else {
            continue;
        };
        let Some(identity) = loaded.identities.lookup(vnet.id, source) else {
            continue;
        };
        for a in t.addrs.iter().take(8) {
            for port in a.ports.iter().take(4).copied().chain([22]) {
                for login in ["root", identity.email_prefix()] {
                    let d = loaded.policies.evaluate(&Request {
                        identity,
                        source,
                        vnet: vnet_name(a.vnet),
                        target: &a.target,
                        port,
                        login,
                    });
                    if d.allow.is_ok() {
                        assert!(d.policy.is_some(), "an allow without a policy: {d:?}");
                    }
                }
            }
        }
    }
});
