//! What the daemon leaves in its state directory for other commands (`stats`): the address
//! ids it assigned.

use std::{fs, net::IpAddr, path::Path};

use serde::{Deserialize, Serialize};

use super::DataplaneError;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StateEntry {
    pub id: u32,
    pub target: String,
    pub vnet: u16,
    pub vnet_name: String,
    pub addr: IpAddr,
    pub ports: Vec<u16>,
}

const FILE: &str = "targets.json";

pub fn write(dir: &Path, entries: &[StateEntry]) -> Result<(), DataplaneError> {
    let path = dir.join(FILE);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let body = serde_json::to_vec_pretty(entries).expect("state serializes");
    fs::write(&tmp, body)
        .and_then(|_| fs::rename(&tmp, &path))
        .map_err(|e| DataplaneError::io(format!("write {}", path.display()), e))
}

pub fn read(dir: &Path) -> Result<Vec<StateEntry>, DataplaneError> {
    let path = dir.join(FILE);
    let body = fs::read(&path).map_err(|e| {
        DataplaneError::io(
            format!("read {} (is the dataplane installed?)", path.display()),
            e,
        )
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| DataplaneError::io(format!("parse {}", path.display()), e.into()))
}

pub fn remove(dir: &Path) -> Result<(), DataplaneError> {
    for f in [FILE, "sysctl.json"] {
        let p = dir.join(f);
        if p.exists() {
            fs::remove_file(&p).map_err(|e| DataplaneError::io(format!("remove {}", p.display()), e))?;
        }
    }
    Ok(())
}
