//! Which mount is on top of a path, from `/proc/self/mountinfo`: so that the
//! daemon unmounts its own mount and never one that replaced it at the same
//! path (after a lazy `umount -l` of ours, another can be mounted there).

use std::path::Path;

/// The mount seen at `path` now (the last of those mounted there): its
/// mount ID, unique while it is mounted, and its file system type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopMount {
    pub id: u64,
    pub fstype: String,
}

/// The mount on top of `path` (canonical), or `None` when nothing is
/// mounted there or mountinfo cannot be read.
pub fn top_mount_at(path: &Path) -> Option<TopMount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    top_mount_in(&text, path.to_str()?)
}

/// [`top_mount_at`] over mountinfo's text.
fn top_mount_in(mountinfo: &str, path: &str) -> Option<TopMount> {
    mountinfo
        .lines()
        .rev()
        .filter_map(parse_line)
        .find(|(_, point, _)| point == path)
        .map(|(id, _, fstype)| TopMount { id, fstype })
}

/// (mount ID, mount point, file system type) of one line: fields 1 and 5,
/// and the first after the ` - ` separator (proc_pid_mountinfo(5)).
fn parse_line(line: &str) -> Option<(u64, String, String)> {
    let (left, right) = line.split_once(" - ")?;
    let fields: Vec<&str> = left.split(' ').collect();
    let id = fields.first()?.parse().ok()?;
    let point = unescape(fields.get(4)?);
    let fstype = right.split(' ').next()?.to_string();
    Some((id, point, fstype))
}

/// Undo mountinfo's octal escapes (`\040` for a space, `\011`, `\012`,
/// `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:35 / /var/tmp/a\\040b rw,nosuid,nodev,relatime shared:20 - fuse.rbdfs rbdfs rw,user_id=0
41 22 0:36 / /var/tmp/m rw,nosuid,nodev,relatime shared:21 - fuse.rbdfs rbdfs rw,user_id=0
45 41 0:40 / /var/tmp/m rw,relatime shared:25 - tmpfs tmpfs rw
";

    #[test]
    fn test_top_mount_is_the_last_mounted_at_the_path() {
        let top = top_mount_in(SAMPLE, "/var/tmp/m").unwrap();
        assert_eq!(
            top,
            TopMount {
                id: 45,
                fstype: "tmpfs".into()
            }
        );
    }

    #[test]
    fn test_escaped_mount_point_matches_the_plain_path() {
        assert_eq!(top_mount_in(SAMPLE, "/var/tmp/a b").map(|t| t.id), Some(40));
        assert_eq!(top_mount_in(SAMPLE, "/var/tmp/a\\040b"), None);
    }

    #[test]
    fn test_no_mount_at_a_path_is_none_and_bad_lines_are_skipped() {
        let text = format!("garbage\n\n{SAMPLE}x y\n");
        assert_eq!(top_mount_in(&text, "/nowhere"), None);
        assert_eq!(top_mount_in(&text, "/").map(|t| t.id), Some(22));
    }

    #[test]
    fn test_unescape_decodes_octal_and_keeps_other_backslashes() {
        assert_eq!(unescape("a\\040b\\011c\\134d"), "a b\tc\\d");
        assert_eq!(unescape("x\\9y\\"), "x\\9y\\");
    }

    #[test]
    fn test_own_mount_table_has_the_root() {
        assert!(top_mount_at(Path::new("/")).is_some());
    }
}
