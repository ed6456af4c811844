//! The check of an upload's multipart body before it goes to a backend with the operator's
//! credential: `multipart/form-data` with a boundary, well-formed parts, exactly one file,
//! and file names that are plain names (no path separators, no control characters, not
//! `.` or `..`). Nothing is rewritten: a body that passes goes as it came.

use crate::server::ApiError;

const PARAM: &str = "source_file";

fn refused(why: &str) -> ApiError {
    ApiError::invalid(
        format!("the upload is not a valid multipart body: {why}"),
        PARAM,
    )
}

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Result<&str, ApiError> {
    let mut params = content_type.split(';');
    let kind = params.next().unwrap_or_default().trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return Err(refused("the content type must be multipart/form-data"));
    }
    let boundary = params
        .filter_map(|p| p.trim().split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, value)| value.trim().trim_matches('"'))
        .ok_or_else(|| refused("the content type names no boundary"))?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || "'()+_,-./:=? ".contains(c);
    if boundary.is_empty() || boundary.len() > 70 || !boundary.chars().all(allowed) {
        return Err(refused("the boundary is not valid"));
    }
    Ok(boundary)
}

/// Checks `body` against `boundary`; returns the file name of its one file.
pub fn check(body: &[u8], boundary: &str) -> Result<String, ApiError> {
    let delimiter = format!("--{boundary}");
    let text_end = find(body, format!("\r\n{delimiter}--").as_bytes())
        .ok_or_else(|| refused("it does not end with its closing boundary"))?;
    if !body.starts_with(delimiter.as_bytes()) {
        return Err(refused("it does not start with its boundary"));
    }
    let inner = &body[delimiter.len()..text_end];
    let separator = format!("\r\n{delimiter}");
    let mut files = Vec::new();
    for part in split(inner, separator.as_bytes()) {
        let part = part
            .strip_prefix(b"\r\n")
            .ok_or_else(|| refused("a boundary is not followed by a line break"))?;
        let head_end = find(part, b"\r\n\r\n").ok_or_else(|| refused("a part has no headers"))?;
        let head = std::str::from_utf8(&part[..head_end])
            .map_err(|_| refused("a part's headers are not text"))?;
        let disposition = head
            .split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-disposition"))
            .map(|(_, value)| value)
            .ok_or_else(|| refused("a part has no Content-Disposition"))?;
        if let Some(name) = parameter(disposition, "filename") {
            files.push(file_name(name)?);
        }
    }
    match files.len() {
        1 => Ok(files.remove(0)),
        0 => Err(refused("it holds no file")),
        _ => Err(refused("it holds more than one file")),
    }
}

/// A file name a backend may store: not empty, not `.` or `..`, at most 255 bytes, no
/// path separator or control character.
fn file_name(name: &str) -> Result<String, ApiError> {
    let plain = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    match plain {
        true => Ok(name.to_owned()),
        false => Err(refused(
            "the file name must be a plain name, without path separators or control characters",
        )),
    }
}

/// The value of parameter `name` of a header value (`form-data; name="a"; filename="b"`).
fn parameter<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    value.split(';').skip(1).find_map(|p| {
        let (key, v) = p.trim().split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

fn split<'a>(mut bytes: &'a [u8], separator: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    while let Some(at) = find(bytes, separator) {
        parts.push(&bytes[..at]);
        bytes = &bytes[at + separator.len()..];
    }
    parts.push(bytes);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(disposition: &str) -> Vec<u8> {
        format!(
            "--b1\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n\
             --b1\r\nContent-Disposition: {disposition}\r\nContent-Type: image/png\r\n\r\n\
             \u{89}PNG\r\n--b1--\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn one_plainly_named_file_passes() {
        let ok = body("form-data; name=\"image\"; filename=\"cat 1.png\"");
        assert_eq!(check(&ok, "b1").unwrap(), "cat 1.png");
        assert_eq!(boundary("multipart/form-data; boundary=b1").unwrap(), "b1");
        assert_eq!(
            boundary("Multipart/Form-Data; charset=x; boundary=\"b 1\"").unwrap(),
            "b 1"
        );
    }

    #[test]
    fn paths_control_characters_and_malformed_bodies_are_refused() {
        for name in [
            "../../etc/passwd",
            "a\\b.png",
            "a\u{1}.png",
            "..",
            "",
            "dir/cat.png",
        ] {
            let bad = body(&format!("form-data; name=\"image\"; filename=\"{name}\""));
            assert!(check(&bad, "b1").is_err(), "{name:?}");
        }
        assert!(
            check(&body("form-data; name=\"image\""), "b1").is_err(),
            "no file"
        );
        assert!(check(b"--b1\r\nno head", "b1").is_err());
        assert!(check(&body("form-data; filename=\"a.png\""), "b2").is_err());
        for content_type in [
            "image/png",
            "multipart/form-data",
            "multipart/form-data; boundary=",
        ] {
            assert!(boundary(content_type).is_err(), "{content_type}");
        }
    }
}
