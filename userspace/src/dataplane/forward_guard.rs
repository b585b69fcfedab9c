//! The second line that does not depend on ifindexes: an nftables forward chain that drops
//! every packet the gateway *forwards* (not one it originates or delivers locally) to a
//! protected (vnet, address, port).
//!
//! The eBPF programs are attached by ifindex; an interface deleted and re-created (a
//! `wg-quick` restart, a container's veth) comes back without them until the link monitor
//! re-attaches, and a missed event would leave it open. nftables matches interfaces by
//! *name* (`iifname`/`oifname`), which survives re-creation. Steered flows never reach the
//! forward hook (they are delivered locally), nor do the proxy's own upstream connections
//! (locally originated), so nothing legitimate matches.
//!
//! Per vnet, with its protected (address, port) set:
//! - arriving on one of its ingress interfaces (by name), or
//! - leaving through one of its upstream interfaces (by name; this also covers VLAN
//!   ingress, whose VLAN device names the configuration does not know)
//!
//! → drop. Vnets sharing an address are kept apart by their interfaces, so the drop is per
//! (vnet, address, port). The table is replaced in one `nft -f` transaction, stays when the
//! daemon exits or dies (fail closed) and is removed by `portcullis down`.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::IpAddr,
    process::{Command, Stdio},
};

use super::DataplaneError;
use crate::targets::{canonical, TargetSet};

/// nft identifiers allow letters, digits and '_': the instance name (letters, digits, '-',
/// '_') is escaped so that two instances never share a table.
pub fn table_name(instance: &str) -> String {
    let mut t = String::from("portcullis_");
    for c in instance.chars() {
        match c {
            '_' => t.push_str("__"),
            '-' => t.push_str("_h"),
            c => t.push(c),
        }
    }
    t
}

/// The ruleset for `set`: a whole-table replacement (`add` makes `delete` valid on the
/// first run; both apply atomically with the new table).
pub fn ruleset(table: &str, set: &TargetSet) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "add table inet {table}\ndelete table inet {table}\ntable inet {table} {{"
    );
    let mut rules = String::new();
    for v in &set.vnets {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for t in set.addrs.iter().filter(|t| t.vnet == v.id) {
            for p in &t.ports {
                match canonical(t.addr) {
                    IpAddr::V4(a) => v4.push(format!("{a} . {p}")),
                    IpAddr::V6(a) => v6.push(format!("{a} . {p}")),
                }
            }
        }
        let ingress: Vec<String> = {
            let mut n: Vec<String> = v
                .ingress
                .iter()
                .filter(|i| i.vlan.is_none())
                .map(|i| format!("\"{}\"", i.interface))
                .collect();
            n.sort();
            n.dedup();
            n
        };
        let upstream: Vec<String> = v.upstream.iter().map(|u| format!("\"{u}\"")).collect();
        for (family, ty, elems) in [("ip", "ipv4_addr", &v4), ("ip6", "ipv6_addr", &v6)] {
            if elems.is_empty() || (ingress.is_empty() && upstream.is_empty()) {
                continue;
            }
            let name = format!("{family}_{}", v.id);
            let _ = writeln!(
                r,
                "  set {name} {{ type {ty} . inet_service; elements = {{ {} }} }}",
                elems.join(", ")
            );
            for (dir, names) in [("iifname", &ingress), ("oifname", &upstream)] {
                if !names.is_empty() {
                    let _ = writeln!(
                        rules,
                        "    {dir} {{ {} }} {family} daddr . tcp dport @{name} counter drop comment \"vnet {}\"",
                        names.join(", "),
                        v.id
                    );
                }
            }
        }
    }
    // Before the usual filter chains (priority 0), so an accept there cannot pre-empt it.
    let _ = writeln!(
        r,
        "  chain forward {{\n    type filter hook forward priority -10; policy accept;\n{rules}  }}\n}}"
    );
    r
}

fn nft(script: &str, what: &str) -> Result<(), DataplaneError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| DataplaneError::io(format!("{what}: run nft (install the nftables package)"), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| DataplaneError::io(format!("{what}: write to nft"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| DataplaneError::io(format!("{what}: wait for nft"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DataplaneError::Nft {
            what: what.into(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Whether the instance's forward guard is in place (something else may flush nftables:
/// `systemctl restart nftables` runs `flush ruleset`).
pub fn present(instance: &str) -> Result<bool, DataplaneError> {
    let status = Command::new("nft")
        .args(["list", "table", "inet", &table_name(instance)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| DataplaneError::io("check the forward guard: run nft".to_string(), e))?;
    Ok(status.success())
}

/// Installs or replaces the forward guard for `set`.
pub fn install(instance: &str, set: &TargetSet) -> Result<(), DataplaneError> {
    nft(&ruleset(&table_name(instance), set), "install the forward guard")
}

/// Removes the forward guard (absent is fine).
pub fn remove(instance: &str) -> Result<(), DataplaneError> {
    let t = table_name(instance);
    nft(
        &format!("add table inet {t}\ndelete table inet {t}\n"),
        "remove the forward guard",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::{Ingress, TargetAddr, Vnet};

    #[test]
    fn table_names_are_distinct_identifiers() {
        assert_eq!(table_name("demo"), "portcullis_demo");
        assert_ne!(table_name("a-b"), table_name("a_b"));
        assert!(table_name("x-_y")
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }

    #[test]
    fn rules_are_per_vnet_by_interface_name() {
        let vnet = |name: &str, id, ingress: &[(&str, Option<u16>)], up: &[&str]| Vnet {
            name: name.into(),
            id,
            ingress: ingress
                .iter()
                .map(|(i, v)| Ingress {
                    interface: i.to_string(),
                    vlan: *v,
                })
                .collect(),
            upstream: up.iter().map(|u| u.to_string()).collect(),
            table: Some(100 + id as u32),
        };
        let addr = |vnet, a: &str, ports: Vec<u16>| TargetAddr {
            target: "t".into(),
            vnet,
            addr: a.parse().unwrap(),
            ports,
        };
        let set = TargetSet {
            vnets: vec![
                vnet("corp", 1, &[("cl1", None)], &["tg1"]),
                vnet("lab", 2, &[("trunk", Some(200))], &["tg2"]),
            ],
            addrs: vec![
                addr(1, "198.18.10.10", vec![22, 2222]),
                addr(1, "2001:db8:10::10", vec![22]),
                addr(2, "198.18.10.10", vec![22]),
            ],
        };
        let r = ruleset("portcullis_t", &set);
        assert!(r.contains("set ip_1 { type ipv4_addr . inet_service; elements = { 198.18.10.10 . 22, 198.18.10.10 . 2222 } }"), "{r}");
        assert!(
            r.contains("set ip6_1 { type ipv6_addr . inet_service; elements = { 2001:db8:10::10 . 22 } }"),
            "{r}"
        );
        assert!(
            r.contains("iifname { \"cl1\" } ip daddr . tcp dport @ip_1 counter drop"),
            "{r}"
        );
        assert!(
            r.contains("oifname { \"tg1\" } ip daddr . tcp dport @ip_1 counter drop"),
            "{r}"
        );
        // A VLAN ingress has no device name here: its vnet is fenced by its upstream name.
        assert!(!r.contains("\"trunk\""), "{r}");
        assert!(
            r.contains("oifname { \"tg2\" } ip daddr . tcp dport @ip_2 counter drop"),
            "{r}"
        );
        assert!(!r.contains("@ip6_2"), "{r}");
    }
}
