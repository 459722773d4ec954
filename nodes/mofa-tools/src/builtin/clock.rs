//! `clock`: the current time, in UTC and at an optional offset from UTC.

use async_trait::async_trait;
use chrono::{FixedOffset, Utc};
use mofa_kernel::tool::{Tool, ToolError, ToolSpec};
use serde_json::{Value, json};

pub struct Clock;

#[async_trait]
impl Tool for Clock {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "clock".into(),
            description: "Tells the current date and time, in UTC and optionally at an offset from UTC in minutes.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"utc_offset_minutes": {"type": "integer", "minimum": -720, "maximum": 840}},
                "additionalProperties": false,
            }),
        }
    }

    async fn call(&self, args: Value) -> Result<Value, ToolError> {
        let now = Utc::now();
        let mut out = json!({"utc": now.to_rfc3339(), "unix_ms": now.timestamp_millis()});
        if let Some(minutes) = args["utc_offset_minutes"].as_i64() {
            let offset = FixedOffset::east_opt(minutes as i32 * 60).ok_or_else(|| {
                ToolError::InvalidArguments(format!("offset {minutes} min is out of range"))
            })?;
            out["local"] = now.with_timezone(&offset).to_rfc3339().into();
        }
        Ok(out)
    }
}
