//! The loop devices attached to files, from sysfs: `rbdfs status IMAGE`
//! names the loop devices that hold an image's files open.

use std::path::{Path, PathBuf};

/// One attached loop device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub device: String,
    /// The file it reads and writes, as the kernel names it.
    pub backing: PathBuf,
    pub read_only: bool,
}

/// Every attached loop device, by name; none when sysfs cannot be read.
pub fn attached() -> Vec<LoopDevice> {
    attached_in(Path::new("/sys/block"))
}

/// [`attached`] under a sysfs `block` directory.
fn attached_in(block: &Path) -> Vec<LoopDevice> {
    let Ok(entries) = std::fs::read_dir(block) else {
        return Vec::new();
    };
    let mut found: Vec<LoopDevice> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if !name.starts_with("loop") {
                return None;
            }
            // Only an attached device has a backing file.
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let ro = std::fs::read_to_string(e.path().join("ro")).unwrap_or_default();
            Some(LoopDevice {
                device: format!("/dev/{name}"),
                backing: PathBuf::from(backing.trim_end_matches('\n')),
                read_only: ro.trim() == "1",
            })
        })
        .collect();
    found.sort_by(|a, b| natural(&a.device).cmp(&natural(&b.device)));
    found
}

/// Sort key putting `/dev/loop2` before `/dev/loop10`.
fn natural(device: &str) -> (usize, &str) {
    (device.len(), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_attached_reads_backing_files_and_skips_detached_devices() {
        let block = tempfile::tempdir().unwrap();
        let dev = |name: &str, backing: Option<&str>, ro: &str| {
            let d = block.path().join(name);
            std::fs::create_dir_all(d.join("loop")).unwrap();
            std::fs::write(d.join("ro"), ro).unwrap();
            if let Some(b) = backing {
                std::fs::write(d.join("loop/backing_file"), format!("{b}\n")).unwrap();
            }
        };
        dev("loop10", Some("/mnt/rbd/b"), "0\n");
        dev("loop2", Some("/mnt/rbd/a@s"), "1\n");
        dev("loop3", None, "0\n");
        std::fs::create_dir_all(block.path().join("vda")).unwrap();
        assert_eq!(
            attached_in(block.path()),
            vec![
                LoopDevice {
                    device: "/dev/loop2".into(),
                    backing: "/mnt/rbd/a@s".into(),
                    read_only: true,
                },
                LoopDevice {
                    device: "/dev/loop10".into(),
                    backing: "/mnt/rbd/b".into(),
                    read_only: false,
                },
            ]
        );
    }
}
