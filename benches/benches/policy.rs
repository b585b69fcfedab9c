//! Policy evaluation at scale (criterion): 10 000 policies over 100 000 targets against the
//! same request shape at 10 policies / 10 targets, and loading + validating the large
//! configuration. `cargo xtask bench policy` reads the medians into the report.

use std::{hint::black_box, net::IpAddr, path::Path};

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::{config, policy::Request};

/// A configuration with `targets` targets in one vnet, one application per 10 hostnames
/// and one policy per application (`policies` of them), and one identity.
pub fn generate(targets: usize, policies: usize) -> String {
    let mut s = String::with_capacity(targets * 80 + policies * 200);
    s.push_str("[[vnet]]\nname = \"corp\"\nid = 1\ningress = [\"eth1\"]\n\n");
    s.push_str("[[identity]]\nemail = \"alice@example.com\"\ngroups = [\"ops\", \"g7\"]\nsources = [\"198.18.1.0/24\"]\nvnet = \"corp\"\n\n");
    for i in 0..targets {
        let ip = 0xc612_0000u32 + 0x100 + i as u32; // inside 198.18.0.0/15
        s.push_str(&format!(
            "[[target]]\nhostname = \"host-{i}\"\nipv4 = \"{}\"\nvnet = \"corp\"\n",
            std::net::Ipv4Addr::from(ip)
        ));
    }
    let per_app = targets.div_ceil(policies).max(1);
    for a in 0..policies {
        let hosts: Vec<String> = (a * per_app..((a + 1) * per_app).min(targets))
            .map(|i| format!("{{ hostname = \"host-{i}\", ports = [22] }}"))
            .collect();
        s.push_str(&format!(
            "[[application]]\nname = \"app-{a}\"\ntarget = [{}]\n",
            hosts.join(", ")
        ));
        s.push_str(&format!(
            "[[policy]]\nname = \"pol-{a}\"\napplication = \"app-{a}\"\naction = \"allow\"\nprecedence = {a}\ninclude = [{{ group = \"g{}\" }}, {{ email_domain = \"corp{}.example\" }}]\nexclude = [{{ source = \"198.18.9.0/24\" }}]\nlogins = [\"root\", \"deploy\"]\n\n",
            a % 10,
            a % 3
        ));
    }
    s
}

fn eval(c: &mut Criterion, name: &str, targets: usize, policies: usize) {
    let text = generate(targets, policies);
    let l = config::parse(Path::new("bench.toml"), &text).expect("generated config is valid");
    let source: IpAddr = "198.18.1.2".parse().unwrap();
    let id = l.identities.lookup(1, source).unwrap().clone();
    // The same decision path at both sizes: an application whose policy matches (group g7)
    // and allows the login.
    let per_app = targets.div_ceil(policies).max(1);
    let app = 7 + 10 * (policies / 10 * 7 / 10);
    let target = format!("host-{}", app * per_app);
    c.bench_function(name, |b| {
        b.iter(|| {
            let r = Request {
                identity: &id,
                source,
                vnet: "corp",
                target: black_box(&target),
                port: 22,
                login: black_box("root"),
            };
            black_box(l.policies.evaluate(&r))
        })
    });
}

fn benches(c: &mut Criterion) {
    eval(c, "policy_eval_small", 10, 10);
    eval(c, "policy_eval_large", 100_000, 10_000);
    let text = generate(100_000, 10_000);
    let mut g = c.benchmark_group("config");
    g.sample_size(10);
    g.bench_function("load_100k_targets", |b| {
        b.iter(|| config::parse(Path::new("bench.toml"), black_box(&text)).expect("valid"))
    });
    g.finish();
}

criterion_group!(policy, benches);
criterion_main!(policy);
