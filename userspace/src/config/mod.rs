//! The operator's TOML configuration: parsing, validation with precise locations
//! (`file:line:column: field: what was expected`), and the domain objects the rest of the
//! gateway runs on — the target set, the identity registry, the policy engine.

mod auth_methods;
mod build;
pub mod schema;
pub use auth_methods::AuthMethods;

use std::{
    ops::Range,
    path::{Path, PathBuf},
};

pub use build::{Account, Listener};
pub use schema::{Config, DataplaneConfig, XdpModeConfig};

use crate::{identity::Registry, policy::Engine, targets::TargetSet};

/// A configuration error: where (file, line, column, field) and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

/// A loaded, validated configuration.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub config: Config,
    pub targets: TargetSet,
    /// Which host keys targets may present.
    pub host_keys: crate::hostcheck::Rules,
    /// How clients may authenticate.
    pub auth: crate::config::AuthMethods,
    pub identities: Registry,
    pub policies: Engine,
    pub account: Option<Account>,
    pub listeners: Vec<Listener>,
    /// What is valid but probably not meant (`check` prints them, the daemon logs them).
    pub warnings: Vec<String>,
}

/// Which file a validation error points into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Main,
    Identities,
}

/// A validation error before it is given its file and line.
#[derive(Debug)]
pub(crate) struct Bad {
    pub source: Source,
    pub span: Range<usize>,
    pub message: String,
}

impl Bad {
    pub fn at(span: Range<usize>, message: impl Into<String>) -> Self {
        Self {
            source: Source::Main,
            span,
            message: message.into(),
        }
    }
}

pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    parse(path, &read(path)?)
}

/// Loads without requiring the account's secret files to exist yet (for `ca init`).
pub fn load_for_init(path: &Path) -> Result<Loaded, ConfigError> {
    parse_inner(path, &read(path)?, false)
}

/// Validates configuration text read from `path` (the identities file, if any, is read
/// relative to it).
pub fn parse(path: &Path, text: &str) -> Result<Loaded, ConfigError> {
    parse_inner(path, text, true)
}

fn parse_inner(path: &Path, text: &str, check_secrets: bool) -> Result<Loaded, ConfigError> {
    let config: Config = toml::from_str(text).map_err(|e| invalid(path, text, e.span(), e.message()))?;
    let (ids_path, ids_text, ids) = match &config.identities {
        Some(i) => {
            let p = relative_to(path, i.file.get_ref());
            let t = read(&p)?;
            let f: schema::IdentitiesFile =
                toml::from_str(&t).map_err(|e| invalid(&p, &t, e.span(), e.message()))?;
            (p, t, f.identity)
        }
        None => (PathBuf::new(), String::new(), Vec::new()),
    };
    let built = build::build(path, &config, &ids, check_secrets).map_err(|b| match b.source {
        Source::Main => invalid(path, text, Some(b.span), &b.message),
        Source::Identities => invalid(&ids_path, &ids_text, Some(b.span), &b.message),
    })?;
    Ok(Loaded {
        path: path.to_owned(),
        config,
        targets: built.targets,
        host_keys: built.host_keys,
        auth: built.auth,
        identities: built.identities,
        policies: built.policies,
        account: built.account,
        listeners: built.listeners,
        warnings: built.warnings,
    })
}

/// Validates configuration text without touching the filesystem (for the fuzzer): an
/// `[identities]` file is not read, the account's secrets and recording key are not looked
/// up (relative paths are taken from the current directory). Errors name `<string>`.
#[doc(hidden)]
pub fn parse_str(text: &str) -> Result<Loaded, ConfigError> {
    let path = Path::new("<string>");
    let mut config: Config = toml::from_str(text).map_err(|e| invalid(path, text, e.span(), e.message()))?;
    // `build` looks the recording key up whatever `check_secrets` says: keep it from there.
    let recording_key = config
        .account
        .as_mut()
        .and_then(|a| a.recording_public_key.take());
    let built =
        build::build(path, &config, &[], false).map_err(|b| invalid(path, text, Some(b.span), &b.message))?;
    let mut account = built.account;
    if let (Some(a), Some(k)) = (account.as_mut(), &recording_key) {
        a.recording_public_key = Some(relative_to(path, k.get_ref()));
    }
    if let Some(a) = config.account.as_mut() {
        a.recording_public_key = recording_key;
    }
    Ok(Loaded {
        path: path.to_owned(),
        config,
        targets: built.targets,
        host_keys: built.host_keys,
        auth: built.auth,
        identities: built.identities,
        policies: built.policies,
        account,
        listeners: built.listeners,
        warnings: built.warnings,
    })
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn relative_to(config: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        config.parent().unwrap_or(Path::new(".")).join(p)
    }
}

fn invalid(path: &Path, text: &str, span: Option<Range<usize>>, message: &str) -> ConfigError {
    let (line, column) = line_col(text, span.map(|s| s.start).unwrap_or(0));
    ConfigError::Invalid {
        path: path.to_owned(),
        line,
        column,
        // The TOML parser says nothing for some syntax errors (a NUL in a comment, found by
        // fuzzing): the place alone is not an explanation.
        message: match message.trim() {
            "" => "invalid TOML syntax here (e.g. a control character)".to_string(),
            m => m.to_string(),
        },
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// Seed 004's hostname rules: ≤ 253 characters of alphanumerics, `-` and `.`, starting and
/// ending alphanumeric.
pub fn valid_hostname(h: &str) -> bool {
    let b = h.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A unix login name as the proxy accepts it: what useradd accepts, no control characters.
pub fn valid_login(l: &str) -> bool {
    let b = l.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'.'))
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::Ingress;

    fn p(text: &str) -> Result<Loaded, ConfigError> {
        parse(Path::new("t.toml"), text)
    }

    const GOOD: &str = r#"
[[vnet]]
name = "corp"
id = 7
ingress = ["veth0", { interface = "eth1", vlan = 100 }]

[[target]]
hostname = "Web-01"
ipv4 = "198.18.10.10"
ipv6 = "2001:db8::10"
vnet = "corp"

[[application]]
name = "ssh"
target = [{ hostname = "web-01", ports = [22, 2222] }]
"#;

    #[test]
    fn builds_the_target_set() {
        let l = p(GOOD).unwrap();
        let t = &l.targets;
        assert_eq!(t.addrs.len(), 2);
        assert_eq!(t.addrs[0].ports, vec![22, 2222]);
        assert_eq!(t.addrs[0].vnet, 7);
        assert!(t.vnets.iter().any(|v| v.name == "default"));
        let corp = t.vnet_by_id(7).unwrap();
        assert_eq!(
            corp.ingress[1],
            Ingress {
                interface: "eth1".into(),
                vlan: Some(100)
            }
        );
    }

    #[test]
    fn rejects_duplicate_address_with_location() {
        let text =
            format!("{GOOD}\n[[target]]\nhostname = \"db\"\nipv4 = \"198.18.10.10\"\nvnet = \"corp\"\n");
        let e = p(&text).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:"), "{e}");
        assert!(e.contains("already belongs to target \"Web-01\""), "{e}");
        let line: usize = e.split(':').nth(1).unwrap().parse().unwrap();
        assert_eq!(text.lines().nth(line - 1).unwrap(), "ipv4 = \"198.18.10.10\"");
    }

    #[test]
    fn rejects_unknown_keys_and_bad_hostnames() {
        assert!(p("[[vnet]]\nname=\"a\"\nid=1\nbogus=1\n")
            .unwrap_err()
            .to_string()
            .contains("bogus"));
        let e = p("[[target]]\nhostname=\"-bad\"\nipv4=\"198.18.0.1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.toml:2:10"), "{e}");
        let long = "a".repeat(254);
        assert!(p(&format!("[[target]]\nhostname=\"{long}\"\nipv4=\"198.18.0.1\"\n")).is_err());
        assert!(valid_hostname(&"a".repeat(253)));
    }

    #[test]
    fn rejects_dangling_vnet_and_bad_ids() {
        let e = p("[[target]]\nhostname=\"a\"\nipv4=\"198.18.0.1\"\nvnet=\"nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no [[vnet]] has this name"), "{e}");
        assert!(p("[[vnet]]\nname=\"a\"\nid=0\n").is_err());
        assert!(p("[[vnet]]\nname=\"a\"\nid=1\n[[vnet]]\nname=\"b\"\nid=1\n").is_err());
    }
}

#[cfg(test)]
mod shipped {
    /// The configurations shipped in configs/ are valid.
    #[test]
    fn shipped_configs_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            // identities.toml is read through example-full.toml's [identities].
            if e.path().extension().is_some_and(|x| x == "toml") && !e.path().ends_with("identities.toml") {
                super::load(&e.path()).unwrap_or_else(|err| panic!("{err}"));
                n += 1;
            }
        }
        assert!(n >= 2);
    }
}

#[cfg(test)]
mod policy_tests {
    use std::{net::IpAddr, os::unix::fs::PermissionsExt};

    use super::*;
    use crate::policy::Request;

    const BASE: &str = r#"
[[vnet]]
name = "corp"
id = 1
ingress = ["veth0"]

[[target]]
hostname = "web-01"
ipv4 = "198.18.10.10"
vnet = "corp"

[[application]]
name = "ssh"
target = [{ hostname = "web-01", ports = [22] }]

[[identity]]
email = "alice@example.com"
groups = ["ops"]
sources = ["198.18.1.2"]
vnet = "corp"

[[policy]]
name = "ops"
application = "ssh"
action = "allow"
precedence = 1
include = [{ group = "ops" }]
require = [{ email_domain = "example.com" }]
exclude = [{ source = "198.18.1.99/32" }]
logins = ["root"]
email_prefix_login = true
"#;

    fn p(text: &str) -> Result<Loaded, ConfigError> {
        parse(Path::new("t.toml"), text)
    }

    fn err(text: &str) -> String {
        p(text).unwrap_err().to_string()
    }

    /// The error's line, as text.
    fn line_of(text: &str, e: &str) -> String {
        let n: usize = e.split(':').nth(1).unwrap().parse().unwrap();
        text.lines().nth(n - 1).unwrap().to_string()
    }

    /// A selector that can match nobody fails open where it excludes or requires: its
    /// notation is checked (`@contractor.example` as a domain, `bob` as an email).
    #[test]
    fn selectors_that_can_match_nobody_are_refused() {
        for (to, says) in [
            (
                "exclude = [{ email_domain = \"@contractor.example\" }]",
                "policy selector email_domain \"@contractor.example\": expected a domain",
            ),
            (
                "exclude = [{ email = \"bob\" }]",
                "policy selector email \"bob\": expected user@domain",
            ),
            (
                "exclude = [{ group = \" ops\" }]",
                "policy selector group \" ops\"",
            ),
            (
                "exclude = [{ email_domain = \"\" }]",
                "policy selector email_domain \"\"",
            ),
        ] {
            let t = BASE.replace("exclude = [{ source = \"198.18.1.99/32\" }]", to);
            let e = err(&t);
            assert!(e.contains(says), "{to}: {e}");
            assert_eq!(line_of(&t, &e), to, "{e}");
        }
    }

    /// A prefix that says who someone is or what a rule covers is taken as written:
    /// `198.18.1.5/0` (a typo of /32) named every IPv4 source as this identity.
    #[test]
    fn identity_sources_and_source_selectors_refuse_host_bits() {
        for (from, to, says) in [
            (
                "sources = [\"198.18.1.2\"]",
                "sources = [\"198.18.1.5/0\"]",
                "identity.sources: \"198.18.1.5/0\": host bits are set (did you mean 0.0.0.0/0?)",
            ),
            (
                "sources = [\"198.18.1.2\"]",
                "sources = [\"2001:db8::1/64\"]",
                "host bits are set (did you mean 2001:db8::/64?)",
            ),
            (
                "exclude = [{ source = \"198.18.1.99/32\" }]",
                "exclude = [{ source = \"10.1.2.3/8\" }]",
                "policy selector source: \"10.1.2.3/8\": host bits are set (did you mean 10.0.0.0/8?)",
            ),
        ] {
            assert!(BASE.contains(from), "{from}");
            let t = BASE.replace(from, to);
            let e = err(&t);
            assert!(e.contains(says), "{to}: {e}");
        }
        for ok in [
            "198.18.1.0/24",
            "198.18.1.2/32",
            "198.18.1.2",
            "::ffff:198.18.1.0/120",
            "2001:db8::/64",
        ] {
            let t = BASE.replace("sources = [\"198.18.1.2\"]", &format!("sources = [{ok:?}]"));
            assert!(p(&t).is_ok(), "{ok}: {:?}", p(&t).err().map(|e| e.to_string()));
        }
    }

    /// Issue 11 #3: `::ffff:a.b.c.d` is one address in two notations; a second target so
    /// written overwrote the first one's ports in the dataplane while `check` said ok.
    #[test]
    fn ipv4_mapped_notation_is_refused_for_targets_and_canonical_elsewhere() {
        let dup = format!(
            "{BASE}\n[[target]]\nhostname = \"web-01\"\nipv6 = \"::ffff:198.18.10.10\"\nvnet = \"corp\"\n"
        );
        let e = err(&dup);
        assert!(
            e.contains("IPv4-mapped address; write it as ipv4 = \"198.18.10.10\""),
            "{e}"
        );
        assert_eq!(line_of(&dup, &e), "ipv6 = \"::ffff:198.18.10.10\"");
        // Selectors and identity sources in that notation mean the IPv4 prefix.
        let text = BASE
            .replace("198.18.1.99/32", "::ffff:198.18.1.0/120")
            .replace("sources = [\"198.18.1.2\"]", "sources = [\"::ffff:198.18.1.2\"]");
        let l = p(&text).unwrap();
        let alice = l.identities.lookup(1, "198.18.1.2".parse().unwrap()).unwrap();
        assert_eq!(alice.email, "alice@example.com");
        assert!(l.identities.lookup(1, "::1".parse().unwrap()).is_none());
        let e = err(&BASE.replace("198.18.1.99/32", "::ffff:0:0/64"));
        assert!(e.contains("IPv4-mapped prefix must be /96 or longer"), "{e}");
    }

    /// Found by fuzzing: some TOML syntax errors come with an empty message.
    #[test]
    fn syntax_errors_always_say_something() {
        let e = err("# a comment with a \u{0} in it\n");
        assert!(
            e.ends_with("invalid TOML syntax here (e.g. a control character)"),
            "{e}"
        );
    }

    /// Issue 11 #4: a target no application selects would be open on every port.
    #[test]
    fn a_target_no_application_covers_is_an_error() {
        let text = BASE.replace("hostname = \"web-01\"\nipv4", "hostname = \"web-O1\"\nipv4");
        let e = err(&text);
        assert!(
            e.contains("target \"web-O1\": no [[application]] selects this hostname"),
            "{e}"
        );
        assert_eq!(line_of(&text, &e), "hostname = \"web-O1\"");
        // A wildcard application covers every target.
        let wild = text.replace(
            "target = [{ hostname = \"web-01\"",
            "target = [{ hostname = \"*\"",
        );
        assert!(p(&wild).is_ok());
    }

    /// Issue 11 #2: two vnets sharing an address are told apart upstream only by their
    /// routing tables.
    #[test]
    fn vnets_sharing_an_address_need_their_own_tables() {
        let two = |corp_table: &str, lab_table: &str| {
            format!(
                "{}\n[[vnet]]\nname = \"lab\"\nid = 2\ningress = [\"veth1\"]\n{lab_table}\n[[target]]\nhostname = \"web-01\"\nipv4 = \"198.18.10.10\"\nvnet = \"lab\"\n",
                BASE.replace("ingress = [\"veth0\"]\n", &format!("ingress = [\"veth0\"]\n{corp_table}\n"))
            )
        };
        let e = err(&two("table = 101", ""));
        assert!(
            e.contains(
                "address 198.18.10.10 is also a target in vnet \"corp\", but vnet \"lab\" has no `table`"
            ),
            "{e}"
        );
        let e = err(&two("", "table = 102"));
        assert!(e.contains("but vnet \"corp\" has no `table`"), "{e}");
        let e = err(&two("table = 101", "table = 101"));
        assert!(e.contains("share routing table 101"), "{e}");
        assert!(p(&two("table = 101", "table = 102")).is_ok());
        // The system's tables route as if there were none.
        for t in [0, 253, 254, 255] {
            let e = err(&two("table = 101", &format!("table = {t}")));
            assert!(
                e.contains(&format!("table {t} is not a usable routing table")),
                "{t}: {e}"
            );
        }
        // An upstream interface belongs to one vnet (the egress guard checks the vnet).
        let e = err(&format!(
            "{}\n[[vnet]]\nname = \"lab\"\nid = 2\nupstream = [\"up0\"]\n",
            BASE.replace(
                "ingress = [\"veth0\"]\n",
                "ingress = [\"veth0\"]\nupstream = [\"up0\"]\n"
            )
        ));
        assert!(
            e.contains("already an upstream interface of vnet \"corp\""),
            "{e}"
        );
        let e = err(&BASE.replace("[\"veth0\"]", "[\"ve\\\"th\"]"));
        assert!(e.contains("not an interface name"), "{e}");
    }

    #[test]
    fn auth_methods_default_to_all_three_and_never_password() {
        assert_eq!(p(BASE).unwrap().auth, crate::config::AuthMethods::default());
        let l = p(&format!("{BASE}\n[auth]\nmethods = [\"publickey\"]\n")).unwrap();
        assert!(l.auth.publickey && !l.auth.none && !l.auth.keyboard_interactive);
        for (methods, says) in [
            (
                "[\"none\", \"password\"]",
                "auth.methods \"password\": not supported",
            ),
            ("[\"gssapi\"]", "auth.methods \"gssapi\": expected"),
            ("[]", "at least one method"),
        ] {
            let e = err(&format!("{BASE}\n[auth]\nmethods = {methods}\n"));
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn host_key_pins_and_host_cas_are_parsed_or_named_when_bad() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK42LAYW0KMgWPoPEixWS+QziGH07AgkaH5dZUPINh8Z ca";
        let fp = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
        let pinned = BASE.replace(
            "vnet = \"corp\"\n\n[[application]]",
            &format!("vnet = \"corp\"\nhost_keys = [\"{key}\", \"{fp}\"]\n\n[[application]]"),
        );
        let l = p(&format!("{pinned}\n[upstream]\nhost_ca_keys = [\"{key}\"]\n")).unwrap();
        let ip: IpAddr = "198.18.10.10".parse().unwrap();
        assert_eq!(l.host_keys.pins[&(1, ip)].len(), 2);
        assert_eq!(l.host_keys.cas.len(), 1);

        for (bad, what) in [
            ("SHA256:short", "target.host_keys \"SHA256:short\""),
            ("ssh-ed25519 garbage", "target.host_keys \"ssh-ed25519 garbage\""),
        ] {
            let t = BASE.replace(
                "vnet = \"corp\"\n\n[[application]]",
                &format!("vnet = \"corp\"\nhost_keys = [\"{bad}\"]\n\n[[application]]"),
            );
            let e = err(&t);
            assert!(e.contains(what), "{e}");
            assert!(line_of(&t, &e).starts_with("host_keys"), "{e}");
        }
        let e = err(&format!("{BASE}\n[upstream]\nhost_ca_keys = [\"nope\"]\n"));
        assert!(e.contains("upstream.host_ca_keys \"nope\""), "{e}");
    }

    #[test]
    fn identities_and_policies_decide() {
        let l = p(BASE).unwrap();
        let ip: IpAddr = "198.18.1.2".parse().unwrap();
        let id = l.identities.lookup(1, ip).unwrap();
        let mut r = Request {
            identity: id,
            source: ip,
            vnet: "corp",
            target: "web-01",
            port: 22,
            login: "root",
        };
        assert!(l.policies.evaluate(&r).allow.is_ok());
        r.login = "alice";
        assert!(l.policies.evaluate(&r).allow.is_ok(), "email prefix login");
        r.login = "bob";
        assert!(l.policies.evaluate(&r).allow.is_err());
    }

    #[test]
    fn policy_errors_point_at_the_field() {
        let t = BASE.replace("application = \"ssh\"\naction", "application = \"nope\"\naction");
        let e = err(&t);
        assert!(e.contains("no [[application]] has this name"), "{e}");
        assert_eq!(line_of(&t, &e), "application = \"nope\"");

        let t = BASE.replace("logins = [\"root\"]", "logins = [\"Root\\u0007\"]");
        let e = err(&t);
        assert!(e.contains("expected a unix user name"), "{e}");

        let t = BASE.replace("{ group = \"ops\" }", "{ grop = \"ops\" }");
        let e = err(&t);
        assert!(e.contains("grop"), "{e}");

        let t = BASE.replace(
            "{ source = \"198.18.1.99/32\" }",
            "{ source = \"198.18.1.99/40\" }",
        );
        let e = err(&t);
        assert!(e.contains("prefix length 40"), "{e}");

        let t = format!("{BASE}\n[[policy]]\nname = \"two\"\napplication = \"ssh\"\naction = \"block\"\nprecedence = 1\ninclude = [{{ everyone = true }}]\n");
        assert!(err(&t).contains("precedence 1: another policy"));

        let t = BASE.replace("logins = [\"root\"]\nemail_prefix_login = true", "");
        assert!(err(&t).contains("needs `logins` or `email_prefix_login"));

        let t = BASE.replace(
            "email_prefix_login = true",
            "email_prefix_login = true\nforwarding = [\"local\", \"tun\"]",
        );
        let e = err(&t);
        assert!(
            e.contains("policy.forwarding \"tun\"") && e.contains("\"x11\""),
            "{e}"
        );
    }

    #[test]
    fn identity_errors_and_identities_file() {
        let t = BASE.replace(
            "sources = [\"198.18.1.2\"]",
            "sources = [\"198.18.1.2\", \"bogus\"]",
        );
        let e = err(&t);
        assert!(e.contains("identity.sources") && e.contains("bogus"), "{e}");

        let dir = std::env::temp_dir().join(format!("portcullis-ids-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("people.toml"),
            "[[identity]]\nemail = \"bob@example.com\"\nsources = [\"198.18.1.2\"]\nvnet = \"corp\"\n",
        )
        .unwrap();
        let t = format!("[identities]\nfile = \"people.toml\"\n{BASE}");
        std::fs::write(dir.join("main.toml"), &t).unwrap();
        let e = load(&dir.join("main.toml")).unwrap_err().to_string();
        assert!(
            e.contains("people.toml:3:") && e.contains("already used by alice@example.com"),
            "{e}"
        );
        std::fs::write(
            dir.join("people.toml"),
            "[[identity]]\nemail = \"bob@example.com\"\nsources = [\"198.18.1.3\"]\nvnet = \"corp\"\n",
        )
        .unwrap();
        let l = load(&dir.join("main.toml")).unwrap();
        assert_eq!(l.identities.len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn secrets_must_exist_and_be_private() {
        let dir = std::env::temp_dir().join(format!("portcullis-sec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = format!("[account]\nsecret = \"secret\"\nca_key = \"ca\"\n{BASE}");
        std::fs::write(dir.join("c.toml"), &t).unwrap();
        let e = load(&dir.join("c.toml")).unwrap_err().to_string();
        assert!(
            e.contains("account.secret") && e.contains("portcullis ca init"),
            "{e}"
        );
        for f in ["secret", "ca"] {
            std::fs::write(dir.join(f), "x").unwrap();
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o640)).unwrap();
        }
        let e = load(&dir.join("c.toml")).unwrap_err().to_string();
        assert!(
            e.contains("readable by group or others (mode 0640): chmod 600"),
            "{e}"
        );
        for f in ["secret", "ca"] {
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        // Issue 11 #9: a short (here 1-byte) or empty secret makes the host keys derivable.
        let e = load(&dir.join("c.toml")).unwrap_err().to_string();
        assert!(
            e.contains("account.secret") && e.contains("secret holds 1 bytes; at least 32"),
            "{e}"
        );
        assert_eq!(line_of(&t, &e), "secret = \"secret\"");
        std::fs::write(dir.join("secret"), "").unwrap();
        assert!(load(&dir.join("c.toml"))
            .unwrap_err()
            .to_string()
            .contains("holds 0 bytes"));
        std::fs::write(dir.join("secret"), [7u8; 32]).unwrap();
        assert!(load(&dir.join("c.toml")).unwrap().account.is_some());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Issue 11 #9: `[ca]` lifetimes are bounded and `source_address` entries are prefixes
    /// sshd accepts, each error at its field; issue 14: `host_certificates` is a boolean,
    /// off by default.
    #[test]
    fn ca_lifetime_and_source_address_are_validated() {
        let ok = p(&format!(
            "{BASE}\n[ca]\nlifetime_secs = 60\nsource_address = [\"198.18.0.1\", \"2001:db8::1/128\"]\n"
        ))
        .unwrap();
        assert_eq!(ok.config.ca.source_address.len(), 2);
        assert!(!ok.config.ca.host_certificates, "off unless asked for");
        let on = p(&format!("{BASE}\n[ca]\nhost_certificates = true\n")).unwrap();
        assert!(on.config.ca.host_certificates);
        for (ca, says, at) in [
            (
                "lifetime_secs = 0",
                "ca.lifetime_secs 0: expected 1..=86400",
                "lifetime_secs = 0",
            ),
            (
                "lifetime_secs = 9223372036854775807",
                "ca.lifetime_secs 9223372036854775807",
                "lifetime_secs = 9223372036854775807",
            ),
            (
                "skew_secs = 86400",
                "ca.skew_secs 86400: expected 0..=3600",
                "skew_secs = 86400",
            ),
            (
                "source_address = [\"198.18.0.1\", \"198.18.0.1/24\"]",
                "ca.source_address: \"198.18.0.1/24\": host bits are set",
                "source_address = [\"198.18.0.1\", \"198.18.0.1/24\"]",
            ),
            (
                "source_address = [\"gw.example\"]",
                "not an IPv4 or IPv6 address",
                "source_address = [\"gw.example\"]",
            ),
            ("source_address = true", "invalid type", "source_address = true"),
            (
                "host_certificates = \"yes\"",
                "invalid type",
                "host_certificates = \"yes\"",
            ),
        ] {
            let t = format!("{BASE}\n[ca]\n{ca}\n");
            let e = err(&t);
            assert!(e.contains(says), "{ca}: {e}");
            assert_eq!(line_of(&t, &e), at, "{e}");
        }
    }

    #[test]
    fn limits_are_validated() {
        let l = p(&format!(
            "{BASE}\n[limits]\nunauthenticated = 64\nunauthenticated_per_source = 8\nrefusal_audit_interval_secs = 5\n"
        ))
        .unwrap();
        assert_eq!(
            l.config.limits.unauthenticated.as_ref().map(|v| *v.get_ref()),
            Some(64)
        );
        for (limits, says) in [
            (
                "unauthenticated = 0",
                "limits.unauthenticated 0: expected at least 1",
            ),
            (
                "unauthenticated_per_source = 0",
                "limits.unauthenticated_per_source 0",
            ),
            (
                "unauthenticated = 4\nunauthenticated_per_source = 8",
                "limits.unauthenticated_per_source 8: more than limits.unauthenticated (4)",
            ),
            ("refusal_audit_interval_secs = 0", "expected 1..=3600"),
            (
                "upstream_dials_per_identity = 0",
                "limits.upstream_dials_per_identity 0: expected at least 1",
            ),
            (
                "upstream_dials_per_target = 0",
                "limits.upstream_dials_per_target 0: expected at least 1",
            ),
            ("unauthenticated = -1", "invalid value"),
            ("bogus = 1", "bogus"),
        ] {
            let e = err(&format!("{BASE}\n[limits]\n{limits}\n"));
            assert!(e.contains(says), "{limits}: {e}");
        }
    }

    /// Issue 11 #9: two identities whose email prefixes collide, when prefixes name logins
    /// or principals, are a warning naming both.
    #[test]
    fn email_prefix_collisions_are_warned_about() {
        let twin = "\n[[identity]]\nemail = \"alice@example.org\"\ngroups = [\"ops\"]\nsources = [\"198.18.1.3\"]\nvnet = \"corp\"\n";
        // BASE's policy allows email-prefix logins.
        let w = p(&format!("{BASE}{twin}")).unwrap().warnings;
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("alice@example.com and alice@example.org share the email prefix \"alice\"")
                && w[0].contains("email_prefix_login (policy \"ops\")"),
            "{w:?}"
        );
        // Neither prefix logins nor prefix principals: no warning.
        let plain = BASE.replace("email_prefix_login = true", "");
        assert!(p(&format!("{plain}{twin}")).unwrap().warnings.is_empty());
        let w = p(&format!("{plain}{twin}\n[ca]\nprincipal = \"email_prefix\"\n"))
            .unwrap()
            .warnings;
        assert!(w.len() == 1 && w[0].contains("name the same principal"), "{w:?}");
        // The same person listed in two vnets is not a collision.
        let same = twin.replace("alice@example.org", "Alice@Example.com");
        assert!(p(&format!("{BASE}{same}")).unwrap().warnings.is_empty());
    }

    /// The forward guard cannot name a VLAN device: a vnet reached only through VLANs
    /// needs its upstream interfaces named for the second line to hold.
    #[test]
    fn vlan_ingress_without_upstream_is_warned_about() {
        let vlan = BASE.replace(
            "ingress = [\"veth0\"]",
            "ingress = [{ interface = \"trunk0\", vlan = 200 }]",
        );
        assert_ne!(vlan, BASE);
        let w = p(&vlan).unwrap().warnings;
        assert!(
            w.len() == 1 && w[0].contains("vnet \"corp\" has VLAN ingress but no upstream"),
            "{w:?}"
        );
        let guarded = vlan.replace("id = 1\n", "id = 1\nupstream = [\"tg1\"]\n");
        assert_ne!(guarded, vlan);
        assert!(p(&guarded).unwrap().warnings.is_empty());
        assert!(
            p(BASE).unwrap().warnings.is_empty(),
            "untagged ingress is guarded by name"
        );
    }

    #[test]
    fn listeners_resolve_their_target() {
        let t = format!(
            "{BASE}\n[[listener]]\nlisten = \"127.0.0.1:2222\"\ntarget = \"web-01\"\nvnet = \"corp\"\n"
        );
        let l = p(&t).unwrap();
        assert_eq!(l.listeners[0].addr, "198.18.10.10:22".parse().unwrap());
        let t = format!(
            "{BASE}\n[[listener]]\nlisten = \"127.0.0.1:2222\"\ntarget = \"web-02\"\nvnet = \"corp\"\n"
        );
        assert!(err(&t).contains("no target has this hostname"));
    }
}
