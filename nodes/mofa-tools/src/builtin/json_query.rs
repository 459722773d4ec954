//! `json_query`: picks a value out of a JSON document by a path: `a.b[0].c`, or a JSON Pointer
//! (`/a/b/0/c`).

use async_trait::async_trait;
use mofa_kernel::tool::{Tool, ToolError, ToolSpec};
use serde_json::{Value, json};

pub struct JsonQuery;

#[async_trait]
impl Tool for JsonQuery {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "json_query".into(),
            description: "Picks a value out of a JSON document (given as JSON or as JSON text) by a path like `items[0].name` or a JSON Pointer like `/items/0/name`.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"document": {}, "path": {"type": "string"}},
                "required": ["document", "path"],
                "additionalProperties": false,
            }),
        }
    }

    async fn call(&self, args: Value) -> Result<Value, ToolError> {
        let doc = match &args["document"] {
            Value::String(text) => {
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
            }
            v => v.clone(),
        };
        let path = super::str_arg(&args, "path")?;
        let pointer = to_pointer(path).map_err(ToolError::InvalidArguments)?;
        match doc.pointer(&pointer) {
            Some(v) => Ok(json!({"path": path, "value": v})),
            None => Err(ToolError::Failed(format!("nothing at `{path}`"))),
        }
    }
}

/// `a.b[0].c` → `/a/b/0/c`; a JSON Pointer is kept.
pub fn to_pointer(path: &str) -> Result<String, String> {
    if path.is_empty() || path.starts_with('/') {
        return Ok(path.to_owned());
    }
    let mut out = String::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push('/');
            out.push_str(&key.replace('~', "~0").replace('/', "~1"));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let end = r
                .find(']')
                .ok_or_else(|| format!("unclosed `[` in `{path}`"))?;
            let index = &r[..end];
            if index.parse::<usize>().is_err() {
                return Err(format!("`[{index}]` in `{path}` is not an index"));
            }
            out.push('/');
            out.push_str(index);
            rest = &r[end + 1..];
        }
        if !rest.is_empty() {
            return Err(format!("unexpected `{rest}` in `{path}`"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_pointers() {
        assert_eq!(to_pointer("items[0].name").unwrap(), "/items/0/name");
        assert_eq!(to_pointer("a[1][2]").unwrap(), "/a/1/2");
        assert_eq!(to_pointer("/x/y").unwrap(), "/x/y");
        assert!(to_pointer("a[x]").unwrap_err().contains("not an index"));
    }

    #[tokio::test]
    async fn queries_documents_given_as_json_or_text() {
        let doc = json!({"items": [{"name": "otter"}]});
        let v = JsonQuery
            .call(json!({"document": doc, "path": "items[0].name"}))
            .await
            .unwrap();
        assert_eq!(v["value"], "otter");
        let v = JsonQuery
            .call(json!({"document": doc.to_string(), "path": "/items/0"}))
            .await
            .unwrap();
        assert_eq!(v["value"]["name"], "otter");
        let err = JsonQuery
            .call(json!({"document": doc, "path": "items[3]"}))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "nothing at `items[3]`");
    }
}
