use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::Netns;

type Lines = Arc<Mutex<Vec<String>>>;

/// A `portcullis run` process inside a namespace, with its stdout (audit events) and stderr
/// (logs) collected line by line. Killed on drop.
pub struct Daemon {
    child: Child,
    stdout: Lines,
    stderr: Lines,
}

fn collect(r: impl std::io::Read + Send + 'static, echo: bool) -> Lines {
    let lines: Lines = Arc::default();
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if echo {
                eprintln!("  | {line}");
            }
            l.lock().unwrap().push(line);
        }
    });
    lines
}

impl Daemon {
    pub fn start(ns: &Netns, bin: &Path, config: &Path) -> Self {
        let mut child = ns
            .command(bin.to_str().unwrap())
            .args(["run", "--config"])
            .arg(config)
            .env("PORTCULLIS_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn portcullis");
        let stdout = collect(child.stdout.take().unwrap(), false);
        let stderr = collect(
            child.stderr.take().unwrap(),
            std::env::var_os("PORTCULLIS_TEST_ECHO").is_some(),
        );
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits until the daemon says it serves; `Err(stderr)` if it exits first.
    pub fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.stderr().iter().any(|l| l.contains("dataplane up")) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                return Err(format!("exited with {status}: {}", self.stderr().join("\n")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("not ready after 30 s: {}", self.stderr().join("\n")))
    }

    /// Waits for the process to exit on its own (for daemons expected to fail).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let status = self.child.wait().expect("wait");
        std::thread::sleep(Duration::from_millis(50));
        status
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until a stdout line contains every one of `needles`.
    pub fn wait_event(&self, needles: &[&str]) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(l) = self
                .stdout()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return Some(l);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) -> ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}
