//! Secrets the configuration names but never holds: each is read from a file (`*_file`,
//! e.g. a mounted Kubernetes or Docker secret; one trailing newline dropped) or, when no
//! file is named, from an environment variable (`*_env`).

use std::path::Path;

use anyhow::Context;

/// The secret `what` names: the contents of `file` if it is set (an unreadable or empty
/// file is an error), else the value of the variable `env`; `None` when that is unset or
/// empty.
pub fn read(what: &str, env: Option<&str>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{what}: cannot read {}", path.display()))?;
        let secret = text.strip_suffix('\n').unwrap_or(&text);
        let secret = secret.strip_suffix('\r').unwrap_or(secret);
        anyhow::ensure!(!secret.is_empty(), "{what}: {} is empty", path.display());
        return Ok(Some(secret.to_owned()));
    }
    Ok(env
        .and_then(|var| std::env::var(var).ok())
        .filter(|s| !s.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::read;

    #[test]
    fn a_file_is_read_without_its_trailing_newline_and_must_hold_something() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        let read_it = || {
            read(
                "the secret",
                Some("TOLLGATE_UNIT_UNSET_SECRET"),
                Some(&path),
            )
        };
        assert_eq!(read_it().unwrap().as_deref(), Some("s3cret"));
        std::fs::write(&path, "two\nlines\r\n").unwrap();
        assert_eq!(read_it().unwrap().as_deref(), Some("two\nlines"));
        std::fs::write(&path, "\n").unwrap();
        assert!(read_it().unwrap_err().to_string().contains("is empty"));
        let missing = dir.path().join("missing");
        let error = read("the secret", None, Some(&missing)).unwrap_err();
        assert!(error.to_string().contains("cannot read"), "{error}");
        assert_eq!(
            read("the secret", Some("TOLLGATE_UNIT_UNSET_SECRET"), None).unwrap(),
            None
        );
    }
}
