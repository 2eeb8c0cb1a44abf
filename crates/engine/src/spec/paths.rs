//! Expansion of `${VAR}` and a leading `~` in paths written in a spec.

use std::path::{Path, PathBuf};

/// Expands `${VAR}` from the environment and a leading `~` or `~/` to
/// `$HOME`. `lookup` returns a variable's value; tests pass their own.
/// Returns a message naming the variable when one is unset or malformed.
pub(crate) fn expand(raw: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut text = String::with_capacity(raw.len());
    let mut rest = raw;

    if rest == "~" || rest.starts_with("~/") {
        let home = lookup("HOME")
            .filter(|home| !home.is_empty())
            .ok_or_else(|| "starts with `~` but HOME is not set; write the full path".to_owned())?;
        text.push_str(&home);
        rest = &rest[1..];
    }

    while let Some(start) = rest.find("${") {
        text.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`${{` without a closing `}}` in `{raw}`"))?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`${{{name}}}` is not a valid environment variable name; use letters, digits and `_`"
            ));
        }
        let value = lookup(name).ok_or_else(|| {
            format!("environment variable `{name}` is not set; set it or write the path in full")
        })?;
        text.push_str(&value);
        rest = &after[end + 1..];
    }
    text.push_str(rest);
    Ok(text)
}

/// Expands `raw` and makes it absolute against `base` when relative.
pub(crate) fn resolve(
    raw: &Path,
    base: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, String> {
    let Some(text) = raw.to_str() else {
        return Err(format!("path {} is not valid UTF-8", raw.display()));
    };
    let expanded = PathBuf::from(expand(text, lookup)?);
    if expanded.is_absolute() {
        Ok(expanded)
    } else {
        Ok(base.join(expanded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/me".to_owned()),
            "DATA" => Some("/data".to_owned()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_and_home() {
        assert_eq!(expand("${DATA}/a.csv", &env).unwrap(), "/data/a.csv");
        assert_eq!(expand("~/x/${DATA}", &env).unwrap(), "/home/me/x//data");
        assert_eq!(expand("~", &env).unwrap(), "/home/me");
        assert_eq!(expand("a~b", &env).unwrap(), "a~b");
    }

    #[test]
    fn unset_variable_named() {
        let message = expand("${MISSING}/a", &env).unwrap_err();
        assert!(message.contains("`MISSING` is not set"), "{message}");
    }

    #[test]
    fn unclosed_variable_rejected() {
        let message = expand("${DATA/a", &env).unwrap_err();
        assert!(message.contains("without a closing"), "{message}");
    }

    #[test]
    fn relative_paths_join_base() {
        let path = resolve(Path::new("d/a.csv"), Path::new("/spec"), &env).unwrap();
        assert_eq!(path, PathBuf::from("/spec/d/a.csv"));
        let path = resolve(Path::new("${DATA}/a.csv"), Path::new("/spec"), &env).unwrap();
        assert_eq!(path, PathBuf::from("/data/a.csv"));
    }
}
