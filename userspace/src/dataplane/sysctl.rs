//! Sysctls the steering needs, with their original values saved so `down` restores them.

use std::{collections::BTreeMap, fs, path::Path};

use super::DataplaneError;

/// The accepted socket inherits the SYN's fwmark, which carries the vnet id to the proxy.
const SETTINGS: &[(&str, &str)] = &[("net/ipv4/tcp_fwmark_accept", "1")];
const SAVED: &str = "sysctl.json";

fn proc_path(name: &str) -> String {
    format!("/proc/sys/{name}")
}

fn read(name: &str) -> Result<String, DataplaneError> {
    fs::read_to_string(proc_path(name))
        .map(|s| s.trim().to_string())
        .map_err(|e| DataplaneError::io(format!("read sysctl {name}"), e))
}

fn write(name: &str, value: &str) -> Result<(), DataplaneError> {
    fs::write(proc_path(name), value).map_err(|e| DataplaneError::io(format!("set sysctl {name}={value}"), e))
}

/// Sets the sysctls; the originals are saved once, so a restart does not save our own values.
pub fn apply(state: &Path) -> Result<(), DataplaneError> {
    let saved = state.join(SAVED);
    if !saved.exists() {
        let mut orig = BTreeMap::new();
        for (name, _) in SETTINGS {
            orig.insert(name.to_string(), read(name)?);
        }
        let body = serde_json::to_vec(&orig).expect("sysctls serialize");
        fs::write(&saved, body).map_err(|e| DataplaneError::io(format!("write {}", saved.display()), e))?;
    }
    for (name, value) in SETTINGS {
        write(name, value)?;
    }
    Ok(())
}

pub fn restore(state: &Path) -> Result<(), DataplaneError> {
    let saved = state.join(SAVED);
    let Ok(body) = fs::read(&saved) else {
        return Ok(());
    };
    let orig: BTreeMap<String, String> = serde_json::from_slice(&body)
        .map_err(|e| DataplaneError::io(format!("parse {}", saved.display()), e.into()))?;
    for (name, value) in orig {
        write(&name, &value)?;
    }
    Ok(())
}
