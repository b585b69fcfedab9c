//! One daemon per instance: an exclusive `flock` on `<state>/lock` holding the owner's pid.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek, Write},
    os::fd::AsRawFd,
    path::Path,
};

use super::DataplaneError;

pub struct InstanceLock {
    _file: File,
}

impl InstanceLock {
    pub fn acquire(state: &Path) -> Result<Self, DataplaneError> {
        fs::create_dir_all(state)
            .map_err(|e| DataplaneError::io(format!("create {}", state.display()), e))?;
        let path = state.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| DataplaneError::io(format!("open {}", path.display()), e))?;
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(DataplaneError::Locked {
                path,
                pid: pid.trim().to_string(),
            });
        }
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| write!(file, "{}", std::process::id()))
            .map_err(|e| DataplaneError::io(format!("write {}", path.display()), e))?;
        Ok(Self { _file: file })
    }
}
