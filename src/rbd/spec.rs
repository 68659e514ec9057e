//! Image specs `[pool/]image[@snap]`, as the `rbd` tool spells them.

use std::fmt;
use std::str::FromStr;

use super::error::RbdError;

/// The pool an image spec names when it names none.
pub const DEFAULT_POOL: &str = "rbd";

/// Longest pool, image or snapshot name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// A pool, an image in it and optionally one of its snapshots.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ImageSpec {
    pub pool: String,
    pub image: String,
    pub snap: Option<String>,
}

impl ImageSpec {
    /// A spec for the head of `pool/image`.
    pub fn new(pool: &str, image: &str) -> Self {
        Self {
            pool: pool.to_string(),
            image: image.to_string(),
            snap: None,
        }
    }

    /// The same image at snapshot `snap`.
    pub fn at_snap(&self, snap: &str) -> Self {
        Self {
            snap: Some(snap.to_string()),
            ..self.clone()
        }
    }

    /// The same image without a snapshot.
    pub fn head(&self) -> Self {
        Self {
            snap: None,
            ..self.clone()
        }
    }

    /// Check every part of the spec, as parsing does.
    pub fn validate(&self) -> Result<(), RbdError> {
        let spec = self.to_string();
        validate_name(&spec, "pool", &self.pool)?;
        validate_name(&spec, "image", &self.image)?;
        if let Some(s) = &self.snap {
            validate_name(&spec, "snapshot", s)?;
        }
        Ok(())
    }
}

/// Check one pool, image or snapshot name.
pub fn validate_name(spec: &str, what: &str, name: &str) -> Result<(), RbdError> {
    let bad = |reason: String| RbdError::InvalidSpec {
        spec: spec.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(bad(format!("{what} name is empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad(format!(
            "{what} name is longer than {MAX_NAME_LEN} bytes"
        )));
    }
    if name.contains('/') || name.contains('@') {
        return Err(bad(format!("{what} name may not contain '/' or '@'")));
    }
    if name == "." || name == ".." || name.contains("..") {
        return Err(bad(format!("{what} name may not contain '..'")));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(bad(format!(
            "{what} name may not contain control characters"
        )));
    }
    Ok(())
}

impl FromStr for ImageSpec {
    type Err = RbdError;

    fn from_str(s: &str) -> Result<Self, RbdError> {
        let (pool, rest) = match s.split_once('/') {
            Some((p, r)) => (p, r),
            None => (DEFAULT_POOL, s),
        };
        let (image, snap) = match rest.split_once('@') {
            Some((i, sn)) => (i, Some(sn.to_string())),
            None => (rest, None),
        };
        let spec = ImageSpec {
            pool: pool.to_string(),
            image: image.to_string(),
            snap,
        };
        // Validate against the text the user typed, so "a/b/c" names itself.
        validate_name(s, "pool", &spec.pool)?;
        validate_name(s, "image", &spec.image)?;
        if let Some(sn) = &spec.snap {
            validate_name(s, "snapshot", sn)?;
        }
        Ok(spec)
    }
}

impl fmt::Display for ImageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.pool, self.image)?;
        if let Some(s) = &self.snap {
            write!(f, "@{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_spec_without_pool_uses_default_pool() {
        let spec: ImageSpec = "img".parse().unwrap();

        assert_eq!(spec, ImageSpec::new("rbd", "img"));
    }

    #[test]
    fn test_spec_with_pool_and_snap_parses_all_parts() {
        let spec: ImageSpec = "p/img@s1".parse().unwrap();

        assert_eq!(spec, ImageSpec::new("p", "img").at_snap("s1"));
        assert_eq!(spec.to_string(), "p/img@s1");
    }

    #[test]
    fn test_spec_bad_inputs_are_rejected_with_einval() {
        for bad in [
            "", "p/", "/img", "p/img@", "a/b/c", "img@s@t", "p/..", "p/a..b", "p/img@..",
        ] {
            let err = bad.parse::<ImageSpec>().expect_err(bad);
            assert_eq!(err.errno(), libc::EINVAL, "{bad}: {err}");
        }
    }

    #[test]
    fn test_spec_name_longer_than_255_bytes_is_rejected() {
        let long = "x".repeat(MAX_NAME_LEN + 1);

        assert!(long.parse::<ImageSpec>().is_err());
        assert!("x".repeat(MAX_NAME_LEN).parse::<ImageSpec>().is_ok());
    }
}
