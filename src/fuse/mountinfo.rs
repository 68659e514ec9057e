//! Which mount is on top of a path, from `/proc/self/mountinfo`: so that the
//! daemon unmounts its own mount and never one that replaced it at the same
//! path (after a lazy `umount -l` of ours, another can be mounted there).

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The mount seen at a path now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopMount {
    /// Mount ID: unique among the mounts that exist, but reused once one
    /// is gone.
    pub id: u64,
    /// `major:minor` of its file system: a FUSE mount's stays its own while
    /// its connection lives, so that with `id` it names this mount.
    pub dev: String,
    pub fstype: String,
}

/// The mount on top of `path` (canonical), or `None` when nothing is
/// mounted there or mountinfo cannot be read.
pub fn top_mount_at(path: &Path) -> Option<TopMount> {
    let text = std::fs::read("/proc/self/mountinfo").ok()?;
    top_mount_in(&text, path.as_os_str().as_bytes())
}

/// [`top_mount_at`] over mountinfo's text. Of the mounts at `path`, the one
/// no other mount there sits on (lines are in creation order, and a mount
/// moved onto the path, or under one, keeps its place in that order).
fn top_mount_in(mountinfo: &[u8], path: &[u8]) -> Option<TopMount> {
    let at: Vec<Line> = mountinfo
        .split(|b| *b == b'\n')
        .filter_map(parse_line)
        .filter(|l| l.point == path)
        .collect();
    at.iter()
        .rev()
        .find(|l| !at.iter().any(|o| o.parent == l.id && o.id != l.id))
        .map(|l| TopMount {
            id: l.id,
            dev: l.dev.clone(),
            fstype: l.fstype.clone(),
        })
}

struct Line {
    id: u64,
    parent: u64,
    dev: String,
    point: Vec<u8>,
    fstype: String,
}

/// Fields 1, 2, 3 and 5 of one line, and the first after the ` - `
/// separator (proc_pid_mountinfo(5)).
fn parse_line(line: &[u8]) -> Option<Line> {
    let sep = line.windows(3).position(|w| w == b" - ")?;
    let fields: Vec<&[u8]> = line[..sep].split(|b| *b == b' ').collect();
    let num = |f: &[u8]| std::str::from_utf8(f).ok()?.parse().ok();
    Some(Line {
        id: num(fields.first()?)?,
        parent: num(fields.get(1)?)?,
        dev: String::from_utf8_lossy(fields.get(2)?).into_owned(),
        point: unescape(fields.get(4)?),
        fstype: String::from_utf8_lossy(line[sep + 3..].split(|b| *b == b' ').next()?).into_owned(),
    })
}

/// Undo mountinfo's octal escapes (`\040` for a space, `\011`, `\012`,
/// `\134`).
fn unescape(b: &[u8]) -> Vec<u8> {
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
    out
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

    fn top(text: &str, path: &str) -> Option<TopMount> {
        top_mount_in(text.as_bytes(), path.as_bytes())
    }

    #[test]
    fn test_top_mount_is_the_one_mounted_over_the_other() {
        assert_eq!(
            top(SAMPLE, "/var/tmp/m"),
            Some(TopMount {
                id: 45,
                dev: "0:40".into(),
                fstype: "tmpfs".into()
            })
        );
    }

    #[test]
    fn test_a_mount_moved_on_top_counts_though_listed_first() {
        // Mount 30 was created before 41 and later moved onto the path,
        // on top of it (41's parent is 30 now).
        let text = "\
22 1 252:1 / / rw - ext4 /dev/vda rw
30 22 0:40 / /var/tmp/m rw - tmpfs tmpfs rw
41 30 0:36 / /var/tmp/m rw - fuse.rbdfs rbdfs rw
";
        // Listed in creation order: 41 was mounted over 30.
        assert_eq!(top(text, "/var/tmp/m").map(|t| t.id), Some(41));
        let moved = "\
22 1 252:1 / / rw - ext4 /dev/vda rw
30 41 0:40 / /var/tmp/m rw - tmpfs tmpfs rw
41 22 0:36 / /var/tmp/m rw - fuse.rbdfs rbdfs rw
";
        assert_eq!(top(moved, "/var/tmp/m").map(|t| t.id), Some(30));
    }

    #[test]
    fn test_escaped_mount_point_matches_the_plain_path() {
        assert_eq!(top(SAMPLE, "/var/tmp/a b").map(|t| t.id), Some(40));
        assert_eq!(top(SAMPLE, "/var/tmp/a\\040b"), None);
    }

    #[test]
    fn test_no_mount_at_a_path_is_none_and_bad_lines_are_skipped() {
        let text = format!("garbage\n\n{SAMPLE}x y\n1 2 3\n");
        assert_eq!(top(&text, "/nowhere"), None);
        assert_eq!(top(&text, "/").map(|t| t.id), Some(22));
    }

    #[test]
    fn test_unescape_decodes_octal_and_keeps_other_backslashes() {
        assert_eq!(unescape(b"a\\040b\\011c\\134d"), b"a b\tc\\d");
        assert_eq!(unescape(b"x\\9y\\"), b"x\\9y\\");
    }

    #[test]
    fn test_own_mount_table_has_the_root() {
        assert!(top_mount_at(Path::new("/")).is_some());
    }
}
