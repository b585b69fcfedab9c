//! Network namespaces and veth pairs for end-to-end tests, removed on drop (also when the
//! test fails). Built with iproute2: test scaffolding, not the product.

use std::process::{Command, Output};

pub fn sh(cmd: &str) -> Output {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("run sh");
    if !out.status.success() {
        panic!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    out
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Self {
        sh(&format!("ip netns add {name}"));
        let ns = Self { name: name.to_string() };
        ns.exec("ip link set lo up");
        ns
    }

    /// Runs a shell command inside the namespace; panics on failure.
    pub fn exec(&self, cmd: &str) -> Output {
        sh(&format!("ip netns exec {} sh -c '{}'", self.name, cmd.replace('\'', "'\\''")))
    }

    /// Runs a command inside the namespace and returns its output whatever the status.
    pub fn try_exec(&self, cmd: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .expect("run ip netns exec")
    }

    /// A command prefix that enters only this namespace's network (keeps mounts such as
    /// bpffs), for spawning long-running processes.
    pub fn nsenter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name)).arg("--");
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "pids", &self.name]).output().map(|o| {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        });
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Connects two namespaces with a veth pair and addresses.
pub fn link(a: &Netns, a_if: &str, a_addrs: &[&str], b: &Netns, b_if: &str, b_addrs: &[&str]) {
    sh(&format!("ip link add {a_if} netns {} type veth peer name {b_if} netns {}", a.name, b.name));
    for (ns, ifn, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        for addr in addrs {
            ns.exec(&format!("ip addr add {addr} dev {ifn} nodad"));
        }
        ns.exec(&format!("ip link set {ifn} up"));
    }
}
