//! Validation of the relative paths that name files and directories.
//!
//! Every path a `DiskOp` carries is relative to the data directory, with `/`
//! between components. A path that could reach outside the data directory
//! (absolute, or with a `..` component) is refused, and so is any path with a
//! `.` or empty component: those would give one file two names, and the
//! handle cache, which is keyed by name, relies on each file having one.

use std::path::{Path, PathBuf};

use runnel_io::DiskError;

/// Checks a path naming a file: non-empty, relative, and made of normal
/// components only.
pub(crate) fn check_file(path: &str) -> Result<(), DiskError> {
    if path.is_empty() {
        return Err(invalid(path, "a file path must not be empty"));
    }
    check_components(path)
}

/// Checks a path naming a directory: like a file path, except that "" names
/// the data directory itself.
pub(crate) fn check_dir(path: &str) -> Result<(), DiskError> {
    if path.is_empty() {
        return Ok(());
    }
    check_components(path)
}

fn check_components(path: &str) -> Result<(), DiskError> {
    if path.starts_with('/') {
        return Err(invalid(path, "absolute paths are refused"));
    }
    if path.contains('\0') {
        return Err(invalid(path, "a path must not contain NUL"));
    }
    for component in path.split('/') {
        match component {
            "" => return Err(invalid(path, "empty path component")),
            "." => return Err(invalid(path, "'.' path component")),
            ".." => return Err(invalid(path, "'..' would escape the data directory")),
            _ => {}
        }
    }
    Ok(())
}

fn invalid(path: &str, why: &str) -> DiskError {
    DiskError::Other(format!("invalid path {path:?}: {why}"))
}

/// The path of `relative` (already checked) under `root`.
pub(crate) fn resolve(root: &Path, relative: &str) -> PathBuf {
    if relative.is_empty() {
        root.to_path_buf()
    } else {
        root.join(relative)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_relative_paths() {
        for path in [
            "a",
            "groups/00000000000000000007/log/1.seg",
            "a.b",
            "..a",
            "a..",
        ] {
            assert_eq!(check_file(path), Ok(()), "{path}");
            assert_eq!(check_dir(path), Ok(()), "{path}");
        }
        assert_eq!(check_dir(""), Ok(()));
    }

    #[test]
    fn refuses_paths_that_escape_or_alias() {
        for path in [
            "",
            "/etc/passwd",
            "/",
            "..",
            "../x",
            "a/../b",
            "a/..",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            "a\0b",
        ] {
            assert!(
                matches!(check_file(path), Err(DiskError::Other(_))),
                "{path:?}"
            );
        }
        for path in ["/", "..", "a/../..", "a/"] {
            assert!(
                matches!(check_dir(path), Err(DiskError::Other(_))),
                "{path:?}"
            );
        }
    }

    #[test]
    fn resolves_under_the_root() {
        let root = Path::new("/data");
        assert_eq!(resolve(root, ""), PathBuf::from("/data"));
        assert_eq!(resolve(root, "a/b"), PathBuf::from("/data/a/b"));
    }
}
