//! The `user.rbd.*` extended attributes: which a file has, and what a
//! `setxattr` asks for. Parsing is pure and happens before anything changes,
//! so a bad name or value is refused with nothing done.

use super::errno::FsError;
use super::fs::FsResult;
use crate::rbd::{ImageSpec, RbdError};

/// Prefix of every extended attribute the mount serves.
pub const PREFIX: &str = "user.rbd.";

/// Attributes only read (set: EPERM).
const READ_ONLY: [&str; 5] = ["id", "size", "object_size", "features", "parent"];

/// Attribute names (without the prefix) of an image head or a snapshot file,
/// in `getfattr -d` order. `parent` only for clones (and their snapshots).
pub fn names(is_snap: bool, has_parent: bool) -> Vec<&'static str> {
    let mut names = vec!["id", "size", "object_size", "features"];
    if is_snap {
        names.extend(["protected", "clone"]);
    } else {
        names.extend(["flatten", "snap"]);
    }
    if has_parent {
        names.push("parent");
    }
    names
}

/// A validated `setxattr` request on the file of `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetRequest {
    /// `flatten=1`: start (or join) a background flatten.
    StartFlatten,
    /// `flatten=cancel`.
    CancelFlatten,
    /// `snap=NAME`: take snapshot NAME.
    SnapCreate(String),
    /// `protected=1|0` on a snapshot file.
    Protect(bool),
    /// `clone=POOL/CHILD` on a snapshot file.
    Clone(ImageSpec),
}

fn invalid(name: &str, reason: impl Into<String>) -> FsError {
    FsError::InvalidValue {
        name: name.into(),
        reason: reason.into(),
    }
}

/// The value as text, without one trailing newline (`echo` adds one).
fn text<'a>(name: &str, value: &'a [u8]) -> FsResult<&'a str> {
    let s = std::str::from_utf8(value).map_err(|_| invalid(name, "not UTF-8"))?;
    Ok(s.strip_suffix('\n').unwrap_or(s))
}

/// Parse `setxattr(name, value)` on the file of `target` (a head, or a
/// snapshot when `target.snap` is set).
pub fn parse_set(target: &ImageSpec, name: &str, value: &[u8]) -> FsResult<SetRequest> {
    let Some(key) = name.strip_prefix(PREFIX) else {
        return Err(FsError::Unsupported(format!(
            "extended attribute {name} (only {PREFIX}* are served)"
        )));
    };
    let is_snap = target.snap.is_some();
    if READ_ONLY.contains(&key) {
        return Err(FsError::ReadOnlyAttribute(name.into()));
    }
    match key {
        "flatten" | "snap" if is_snap => Err(FsError::ReadOnlySnapshot(target.to_string())),
        "flatten" => match text(name, value)? {
            "1" => Ok(SetRequest::StartFlatten),
            "cancel" => Ok(SetRequest::CancelFlatten),
            _ => Err(invalid(
                name,
                "use 1 to start a flatten or cancel to stop it",
            )),
        },
        "snap" => {
            let snap = text(name, value)?;
            let spec = target.at_snap(snap).to_string();
            crate::rbd::spec::validate_name(&spec, "snapshot", snap)
                .map_err(|e| invalid(name, e.to_string()))?;
            Ok(SetRequest::SnapCreate(snap.to_string()))
        }
        "protected" if !is_snap => Err(invalid(name, "only snapshot files can be protected")),
        "protected" => match text(name, value)? {
            "1" => Ok(SetRequest::Protect(true)),
            "0" => Ok(SetRequest::Protect(false)),
            _ => Err(invalid(name, "use 1 or 0")),
        },
        "clone" if !is_snap => Err(invalid(
            name,
            "clone is set on a snapshot file (image@snap)",
        )),
        "clone" => {
            let t = text(name, value)?;
            if !t.contains('/') {
                return Err(invalid(name, "use POOL/CHILD"));
            }
            let child: ImageSpec = t
                .parse()
                .map_err(|e: RbdError| invalid(name, e.to_string()))?;
            if child.snap.is_some() {
                return Err(invalid(name, "the child is an image, not a snapshot"));
            }
            Ok(SetRequest::Clone(child))
        }
        _ => Err(invalid(
            name,
            "unknown attribute; see getfattr -d -m - for the list",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> ImageSpec {
        ImageSpec::new("rbd", "vm")
    }

    fn snap() -> ImageSpec {
        head().at_snap("s1")
    }

    fn errno(r: FsResult<SetRequest>) -> i32 {
        r.expect_err("expected a refusal").errno()
    }

    #[test]
    fn test_parse_set_accepts_each_request_with_or_without_newline() {
        assert_eq!(
            parse_set(&head(), "user.rbd.flatten", b"1\n").unwrap(),
            SetRequest::StartFlatten
        );
        assert_eq!(
            parse_set(&head(), "user.rbd.flatten", b"cancel").unwrap(),
            SetRequest::CancelFlatten
        );
        assert_eq!(
            parse_set(&head(), "user.rbd.snap", b"s2").unwrap(),
            SetRequest::SnapCreate("s2".into())
        );
        assert_eq!(
            parse_set(&snap(), "user.rbd.protected", b"0").unwrap(),
            SetRequest::Protect(false)
        );
        assert_eq!(
            parse_set(&snap(), "user.rbd.clone", b"p/c").unwrap(),
            SetRequest::Clone(ImageSpec::new("p", "c"))
        );
    }

    #[test]
    fn test_parse_set_refuses_bad_values_with_einval() {
        let cases: [(&ImageSpec, &str, &[u8]); 11] = [
            (&head(), "user.rbd.flatten", b"yes"),
            (&head(), "user.rbd.flatten", b""),
            (&head(), "user.rbd.snap", b""),
            (&head(), "user.rbd.snap", b"a/b"),
            (&head(), "user.rbd.snap", b"a@b"),
            (&head(), "user.rbd.snap", b".."),
            (&head(), "user.rbd.snap", b"\xff"),
            (&snap(), "user.rbd.protected", b"2"),
            (&snap(), "user.rbd.clone", b"child"),
            (&snap(), "user.rbd.clone", b"p/c@s"),
            (&head(), "user.rbd.nosuch", b"1"),
        ];
        for (t, n, v) in cases {
            assert_eq!(errno(parse_set(t, n, v)), libc::EINVAL, "{n}={v:?}");
        }
    }

    #[test]
    fn test_parse_set_refuses_by_kind_of_file() {
        assert_eq!(
            errno(parse_set(&snap(), "user.rbd.flatten", b"1")),
            libc::EROFS
        );
        assert_eq!(
            errno(parse_set(&snap(), "user.rbd.snap", b"x")),
            libc::EROFS
        );
        assert_eq!(
            errno(parse_set(&head(), "user.rbd.protected", b"1")),
            libc::EINVAL
        );
        assert_eq!(
            errno(parse_set(&head(), "user.rbd.clone", b"p/c")),
            libc::EINVAL
        );
        assert_eq!(
            errno(parse_set(&head(), "user.rbd.size", b"1")),
            libc::EPERM
        );
        assert_eq!(
            errno(parse_set(&snap(), "user.rbd.parent", b"x")),
            libc::EPERM
        );
        assert_eq!(
            errno(parse_set(&head(), "trusted.rbd.snap", b"x")),
            libc::EOPNOTSUPP
        );
    }

    #[test]
    fn test_names_depend_on_kind_and_parent() {
        assert_eq!(
            names(false, false),
            ["id", "size", "object_size", "features", "flatten", "snap"]
        );
        assert_eq!(
            names(true, true),
            [
                "id",
                "size",
                "object_size",
                "features",
                "protected",
                "clone",
                "parent"
            ]
        );
    }
}
