//! Which platform an ELF executable is for, from its first bytes: the server checks every
//! binary of an agent release against the platform it is given for, the device checks a new
//! agent version against itself, by this one rule.

use crate::platform::Platform;

/// Bytes of the file [`platform_of`] reads.
pub const ELF_HEAD_BYTES: usize = 20;

/// The platform of the ELF executable whose file starts with `head` (at least
/// [`ELF_HEAD_BYTES`] bytes), or why it is not one Fleet runs: not ELF, not an executable,
/// big-endian, or for a machine no device is (`x86_64`, `aarch64`, 32-bit ARM, `x86`).
pub fn platform_of(head: &[u8]) -> Result<Platform, String> {
    if !head.starts_with(b"\x7fELF") {
        return Err("not an ELF executable".into());
    }
    if head.len() < ELF_HEAD_BYTES {
        return Err("too short for an ELF executable".into());
    }
    let class64 = match head[4] {
        1 => false,
        2 => true,
        other => return Err(format!("ELF class {other} is neither 32 nor 64-bit")),
    };
    if head[5] != 1 {
        return Err("a big-endian ELF file".into());
    }
    let kind = u16::from_le_bytes([head[16], head[17]]);
    // 2: executable; 3: position-independent executable (static-pie).
    if kind != 2 && kind != 3 {
        return Err(format!("ELF type {kind}, not an executable"));
    }
    let machine = u16::from_le_bytes([head[18], head[19]]);
    let rust_arch = match (machine, class64) {
        (62, true) => "x86_64",
        (183, true) => "aarch64",
        (40, false) => "arm",
        (3, false) => "x86",
        _ => {
            return Err(format!(
                "an ELF{} executable for machine {machine}, which no Fleet device is",
                if class64 { 64 } else { 32 }
            ))
        }
    };
    Ok(Platform::for_rust_arch(rust_arch))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF header: class (1: 32-bit, 2: 64-bit), type, machine.
    fn header(class: u8, kind: u16, machine: u16) -> Vec<u8> {
        let mut head = vec![0u8; 64];
        head[..4].copy_from_slice(b"\x7fELF");
        head[4] = class;
        head[5] = 1;
        head[16..18].copy_from_slice(&kind.to_le_bytes());
        head[18..20].copy_from_slice(&machine.to_le_bytes());
        head
    }

    #[test]
    fn each_device_machine_maps_to_its_oci_platform() {
        let arch = |h: Vec<u8>| platform_of(&h).map(|p| (p.architecture, p.variant));
        assert_eq!(arch(header(2, 2, 62)), Ok(("amd64".into(), None)));
        assert_eq!(arch(header(2, 3, 183)), Ok(("arm64".into(), None)));
        assert_eq!(arch(header(1, 2, 40)), Ok(("arm".into(), Some("v7".into()))));
    }

    #[test]
    fn what_no_device_runs_is_refused_by_name() {
        let why = |h: &[u8]| platform_of(h).unwrap_err();
        assert_eq!(why(b"#!/bin/sh\nexit 0\n"), "not an ELF executable");
        assert_eq!(why(b"\x7fELF\x02"), "too short for an ELF executable");
        assert!(why(&header(2, 1, 62)).contains("ELF type 1, not an executable"));
        assert!(why(&header(1, 2, 183)).contains("ELF32 executable for machine 183"));
        assert!(why(&header(2, 2, 243)).contains("machine 243"), "riscv64");
        let mut big = header(2, 2, 62);
        big[5] = 2;
        assert_eq!(why(&big), "a big-endian ELF file");
    }
}
