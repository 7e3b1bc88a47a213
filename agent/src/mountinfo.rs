//! `/proc/self/mountinfo`: where each file system is mounted, which part of it, and its type
//! (cgroup2 and bpffs may be mounted anywhere, or more than once).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;

pub const SELF: &str = "/proc/self/mountinfo";

/// One line of mountinfo: where a file system is mounted, which part of it, and its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The directory of the file system that is mounted (`/` unless a bind or cgroup
    /// namespace shows only a subtree).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fstype: String,
}

/// Parses `/proc/<pid>/mountinfo` (proc(5)): `id parent major:minor root mount-point options
/// [optional fields...] - fstype source super-options`.
pub fn parse_mountinfo(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let fstype = fs.split(' ').next()?;
            let mut fields = mount.split(' ');
            let root = fields.nth(3)?;
            let mount_point = fields.next()?;
            Some(Mount {
                root: PathBuf::from(unescape_octal(root)),
                mount_point: PathBuf::from(unescape_octal(mount_point)),
                fstype: fstype.to_owned(),
            })
        })
        .collect()
}

/// Undoes the kernel's `\ooo` escaping of space, tab, newline and backslash in mountinfo.
fn unescape_octal(field: &str) -> OsString {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    OsStr::from_bytes(&out).to_owned()
}

/// This process's mounts.
pub fn read() -> io::Result<Vec<Mount>> {
    Ok(parse_mountinfo(&fs::read_to_string(SELF)?))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn finds_cgroup2_and_bpffs_wherever_they_are() {
        let text = "\
24 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
50 24 0:40 /ecs /mnt/my\\040cgroups rw - cgroup2 none rw
60 24 0:41 / /tmp/pins rw - bpf bpf rw,mode=700
";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[1].mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(mounts[1].fstype, "cgroup2");
        assert_eq!(mounts[2].root, Path::new("/ecs"));
        assert_eq!(mounts[2].mount_point, Path::new("/mnt/my cgroups"));
        assert_eq!(mounts[3].fstype, "bpf");
    }

    #[test]
    fn unescapes_only_valid_octal_escapes() {
        let cases = [
            ("/a\\040b", "/a b"),
            ("/tab\\011", "/tab\t"),
            ("/back\\134slash", "/back\\slash"),
            ("/not\\08", "/not\\08"),
            ("/end\\04", "/end\\04"),
            ("/plain", "/plain"),
        ];
        for (field, expected) in cases {
            assert_eq!(unescape_octal(field), OsStr::new(expected), "{field}");
        }
    }
}
