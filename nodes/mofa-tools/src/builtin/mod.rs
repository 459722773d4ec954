//! The built-in tools, each behind the kernel's `Tool` trait.

pub mod calculator;
pub mod clock;
pub mod files;
pub mod http_get;
pub mod json_query;

use mofa_kernel::tool::ToolError;
use serde_json::Value;

/// A required string argument (the schema has been checked; this only unpacks).
pub(crate) fn str_arg<'a>(args: &'a Value, name: &str) -> Result<&'a str, ToolError> {
    args[name]
        .as_str()
        .ok_or_else(|| ToolError::InvalidArguments(format!("`{name}` must be a string")))
}
