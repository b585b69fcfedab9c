use crate::{link, unique, Netns};

/// DESIGN §8: two client devices in two virtual networks, a gateway, and one target per
/// vnet. Both targets have the same addresses (198.18.10.10, 2001:db8:10::10), so only the
/// vnet tells them apart.
///
/// ```text
/// client  (198.18.1.2)  eth0 ── cl1 ┐        ┌ tg1 ── eth0 target  (vnet corp, 198.18.10.10)
///                                   gw (fwd) ┤
/// client2 (198.18.2.2)  eth0 ── cl2 ┘        └ tg2 ── eth0 target2 (vnet lab,  198.18.10.10)
/// ```
///
/// The gateway forwards by ingress interface (`iif cl1 → table 101`, `iif cl2 → table 102`),
/// its own traffic uses corp's target by default. The proxy's upstream connections, marked
/// `0x40000000 | vnet`, are routed by the vnet's table through rules portcullis installs
/// (`[[vnet]] table`).
pub struct Topology {
    pub client: Netns,
    pub client2: Netns,
    pub gw: Netns,
    pub target: Netns,
    pub target2: Netns,
}

pub const TARGET_V4: &str = "198.18.10.10";
pub const TARGET_V6: &str = "2001:db8:10::10";

impl Topology {
    pub fn build() -> Self {
        let p = unique("pc");
        let t = Self {
            client: Netns::new(&format!("{p}-c1")),
            client2: Netns::new(&format!("{p}-c2")),
            gw: Netns::new(&format!("{p}-gw")),
            target: Netns::new(&format!("{p}-t1")),
            target2: Netns::new(&format!("{p}-t2")),
        };
        t.link_client();
        link(
            &t.client2,
            "eth0",
            &["198.18.2.2/24", "2001:db8:2::2/64"],
            &t.gw,
            "cl2",
            &["198.18.2.1/24", "2001:db8:2::1/64"],
        );
        link(
            &t.gw,
            "tg1",
            &["198.18.101.1/24", "2001:db8:101::1/64"],
            &t.target,
            "eth0",
            &["198.18.101.2/24", "2001:db8:101::2/64"],
        );
        link(
            &t.gw,
            "tg2",
            &["198.18.102.1/24", "2001:db8:102::1/64"],
            &t.target2,
            "eth0",
            &["198.18.102.2/24", "2001:db8:102::2/64"],
        );
        t.client2
            .exec("ip route add default via 198.18.2.1 && ip -6 route add default via 2001:db8:2::1");
        for (ns, n) in [(&t.target, 101), (&t.target2, 102)] {
            ns.exec(&format!(
                "ip addr add {TARGET_V4}/32 dev eth0 && ip addr add {TARGET_V6}/128 dev eth0 nodad \
                 && ip route add default via 198.18.{n}.1 && ip -6 route add default via 2001:db8:{n}::1"
            ));
        }
        t.gw.exec("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1");
        for (n, cl) in [(101, "cl1"), (102, "cl2")] {
            t.gw.exec(&format!(
                "ip route add {TARGET_V4}/32 via 198.18.{n}.2 table {n} \
                 && ip -6 route add {TARGET_V6}/128 via 2001:db8:{n}::2 table {n} \
                 && ip rule add iif {cl} lookup {n} pref 1000 && ip -6 rule add iif {cl} lookup {n} pref 1000 ",
            ));
        }
        t.gw.exec(&format!("ip route add {TARGET_V4}/32 via 198.18.101.2 && ip -6 route add {TARGET_V6}/128 via 2001:db8:101::2"));
        t
    }

    /// The client's veth pair (`eth0` ↔ the gateway's `cl1`), its addresses and routes.
    fn link_client(&self) {
        link(
            &self.client,
            "eth0",
            &["198.18.1.2/24", "2001:db8:1::2/64"],
            &self.gw,
            "cl1",
            &["198.18.1.1/24", "2001:db8:1::1/64"],
        );
        self.client
            .exec("ip route add default via 198.18.1.1 && ip -6 route add default via 2001:db8:1::1");
    }

    /// Deletes the client's veth pair and creates it again: the gateway's `cl1` comes back
    /// with a new ifindex and none of portcullis's programs (what a `wg-quick` restart or a
    /// re-created container veth does).
    pub fn recreate_client_link(&self) {
        self.gw.exec("ip link del cl1");
        self.link_client();
    }

    /// A portcullis configuration for this topology: vnet `corp` (client) and `lab`
    /// (client2), target `web-01` in corp and `lab-01` in lab, both at the same addresses,
    /// port 22 protected. The client is alice@example.com (group ops), client2 is
    /// bob@example.com; ops may log in to web-01 as root or by email prefix; nobody may
    /// reach lab-01.
    pub fn config(&self, state_dir: &std::path::Path, instance: &str) -> String {
        format!(
            r#"[dataplane]
instance = "{instance}"
state_dir = "{state}"
data_dir = "{state}"

[[vnet]]
name = "corp"
id = 1
ingress = ["cl1"]
upstream = ["tg1"]
table = 101

[[vnet]]
name = "lab"
id = 2
ingress = ["cl2"]
upstream = ["tg2"]
table = 102

[[target]]
hostname = "web-01"
ipv4 = "{TARGET_V4}"
ipv6 = "{TARGET_V6}"
vnet = "corp"

[[target]]
hostname = "lab-01"
ipv4 = "{TARGET_V4}"
ipv6 = "{TARGET_V6}"
vnet = "lab"

[[application]]
name = "ssh"
target = [{{ hostname = "web-01", ports = [22] }}, {{ hostname = "lab-01", ports = [22] }}]

[[identity]]
email = "alice@example.com"
groups = ["ops"]
sources = ["198.18.1.2", "2001:db8:1::2"]
vnet = "corp"

[[identity]]
email = "bob@example.com"
sources = ["198.18.2.2", "2001:db8:2::2"]
vnet = "lab"

[[policy]]
name = "ops-on-web"
application = "ssh"
action = "allow"
precedence = 10
include = [{{ group = "ops" }}]
require = [{{ vnet = "corp" }}]
logins = ["root"]
email_prefix_login = true
"#,
            state = state_dir.display()
        )
    }
}
