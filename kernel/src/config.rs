//! A node's configuration comes from its environment (the `env:` of its YAML entry).
//! Every error names the variable, so bad configuration stops a node with a message that
//! says what to fix.

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

/// A configuration variable that is missing or cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{var} is not set: {hint}")]
    Missing { var: String, hint: String },
    #[error("{var}={value:?} is invalid: {reason}")]
    Invalid {
        var: String,
        value: String,
        reason: String,
    },
}

impl ConfigError {
    pub fn invalid(var: &str, value: impl Into<String>, reason: impl Display) -> Self {
        ConfigError::Invalid {
            var: var.to_owned(),
            value: value.into(),
            reason: reason.to_string(),
        }
    }
}

/// The variable's value; unset and empty both read as `None`.
pub fn optional(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

/// The variable's value, or an error naming it and saying what it is for.
pub fn required(var: &str, hint: &str) -> Result<String, ConfigError> {
    optional(var).ok_or_else(|| ConfigError::Missing {
        var: var.to_owned(),
        hint: hint.to_owned(),
    })
}

/// Which of two alternative variables is set: `Ok(Some((true, value)))` for `first`,
/// `Ok(Some((false, value)))` for `second`, `Ok(None)` for neither, and an error naming both
/// when both are set.
pub fn either(first: &str, second: &str) -> Result<Option<(bool, String)>, ConfigError> {
    match (optional(first), optional(second)) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            second,
            "(set)",
            format!("set {first} or {second}, not both"),
        )),
        (Some(v), None) => Ok(Some((true, v))),
        (None, Some(v)) => Ok(Some((false, v))),
        (None, None) => Ok(None),
    }
}

/// The variable parsed as `T`, or `default` when unset.
pub fn parse_or<T>(var: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match optional(var) {
        Some(v) => v
            .trim()
            .parse()
            .map_err(|e| ConfigError::invalid(var, v, e)),
        None => Ok(default),
    }
}

/// A duration given in milliseconds, or `default` when unset.
pub fn millis_or(var: &str, default: Duration) -> Result<Duration, ConfigError> {
    parse_or(var, default.as_millis() as u64).map(Duration::from_millis)
}

/// A boolean: 1/true/yes/on or 0/false/no/off.
pub fn flag_or(var: &str, default: bool) -> Result<bool, ConfigError> {
    match optional(var).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) => match v.as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::invalid(var, v, "expected true or false")),
        },
    }
}

/// A comma-separated list (items trimmed, empty ones dropped); empty when unset.
pub fn list(var: &str) -> Vec<String> {
    optional(var)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A list of names used as dora input and output ids (agents a node talks to): at least
/// `min`, none twice, each of letters, digits, `_` and `-`, none of the node's own ids
/// (`reserved`), none ending in `_error` (the convention for a peer's error input).
pub fn names(
    var: &str,
    min: usize,
    hint: &str,
    reserved: &[&str],
) -> Result<Vec<String>, ConfigError> {
    let raw = required(var, hint)?;
    parse_names(var, &raw, min, reserved)
}

/// [`names`] for a value already read.
pub fn parse_names(
    var: &str,
    raw: &str,
    min: usize,
    reserved: &[&str],
) -> Result<Vec<String>, ConfigError> {
    let names: Vec<String> = raw.split(',').map(|s| s.trim().to_owned()).collect();
    let bad = |why: String| ConfigError::invalid(var, raw, why);
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() {
            return Err(bad("an empty name".into()));
        }
        if !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(format!(
                "`{n}`: names are dora ids (letters, digits, `_` and `-`)"
            )));
        }
        if reserved.contains(&n.as_str()) || n.ends_with("_error") {
            return Err(bad(format!("`{n}`: the node uses that id itself")));
        }
        if names[..i].contains(n) {
            return Err(bad(format!("`{n}` is named twice")));
        }
    }
    if names.len() < min {
        return Err(bad(format!("needs at least {min} names")));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test uses its own variable names: tests run in parallel in one process.
    #[test]
    fn errors_name_the_variable() {
        unsafe { std::env::set_var("MOFA_TEST_CFG_N", "twelve") };
        let err = parse_or::<u32>("MOFA_TEST_CFG_N", 1).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("MOFA_TEST_CFG_N=\"twelve\" is invalid"),
            "{err}"
        );
        let err = required("MOFA_TEST_CFG_UNSET", "the model name").unwrap_err();
        assert_eq!(
            err.to_string(),
            "MOFA_TEST_CFG_UNSET is not set: the model name"
        );
    }

    #[test]
    fn defaults_and_values() {
        unsafe { std::env::set_var("MOFA_TEST_CFG_MS", "250") };
        unsafe { std::env::set_var("MOFA_TEST_CFG_EMPTY", "") };
        unsafe { std::env::set_var("MOFA_TEST_CFG_FLAG", "Yes") };
        assert_eq!(
            millis_or("MOFA_TEST_CFG_MS", Duration::ZERO).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_or("MOFA_TEST_CFG_EMPTY", 7u8).unwrap(), 7);
        assert!(flag_or("MOFA_TEST_CFG_FLAG", false).unwrap());
        assert!(flag_or("MOFA_TEST_CFG_ABSENT", false).is_ok_and(|v| !v));
        assert_eq!(
            either("MOFA_TEST_CFG_MS", "MOFA_TEST_CFG_ABSENT").unwrap(),
            Some((true, "250".into()))
        );
        assert_eq!(
            either("MOFA_TEST_CFG_ABSENT", "MOFA_TEST_CFG_MS").unwrap(),
            Some((false, "250".into()))
        );
        let both = either("MOFA_TEST_CFG_MS", "MOFA_TEST_CFG_FLAG").unwrap_err();
        assert!(
            both.to_string()
                .contains("set MOFA_TEST_CFG_MS or MOFA_TEST_CFG_FLAG, not both")
        );
    }

    #[test]
    fn lists_and_names() {
        unsafe { std::env::set_var("MOFA_TEST_CFG_LIST", " a, b ,,c ") };
        assert_eq!(list("MOFA_TEST_CFG_LIST"), ["a", "b", "c"]);
        assert!(list("MOFA_TEST_CFG_ABSENT").is_empty());
        let ok = parse_names("V", "a, b ,c", 2, &["task"]).unwrap();
        assert_eq!(ok, ["a", "b", "c"]);
        for (raw, why) in [
            ("solo", "at least 2"),
            ("a,a", "named twice"),
            ("a,,b", "empty name"),
            ("a,b/c", "dora ids"),
            ("a,task", "uses that id itself"),
            ("a,b_error", "uses that id itself"),
        ] {
            let err = parse_names("V", raw, 2, &["task"]).unwrap_err().to_string();
            assert!(err.starts_with("V=") && err.contains(why), "{raw}: {err}");
        }
        let unset = names("MOFA_TEST_CFG_ABSENT", 1, "the members", &[]).unwrap_err();
        assert_eq!(
            unset.to_string(),
            "MOFA_TEST_CFG_ABSENT is not set: the members"
        );
    }
}
