//! Checks made before anything is changed, so that a bad environment or config leaves the
//! system as it was.

use std::{ffi::CString, path::Path};

use super::DataplaneError;
use crate::targets::TargetSet;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub fn check_kernel() -> Result<(), DataplaneError> {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Ok(())
    } else {
        Err(DataplaneError::NoBtf)
    }
}

pub fn check_bpffs(path: &Path) -> Result<(), DataplaneError> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| DataplaneError::NoBpffs(path.into()))?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 || st.f_type as i64 != BPF_FS_MAGIC {
        return Err(DataplaneError::NoBpffs(path.into()));
    }
    Ok(())
}

/// The interface index of `name` in the current network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => None,
        i => Some(i),
    }
}

pub fn resolve_interfaces(set: &TargetSet) -> Result<(), DataplaneError> {
    for v in &set.vnets {
        let names = v.ingress.iter().map(|i| &i.interface).chain(v.upstream.iter());
        for name in names {
            if ifindex(name).is_none() {
                return Err(DataplaneError::NoInterface {
                    interface: name.clone(),
                    vnet: v.name.clone(),
                });
            }
        }
    }
    Ok(())
}
