//! `file_read`, `file_write`, `file_list`: files confined to one sandbox folder. Paths are
//! relative to it; `..`, absolute paths and symbolic links that lead outside are refused
//! before anything is touched.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use mofa_kernel::tool::{Tool, ToolError, ToolSpec};
use serde_json::{Value, json};

const MAX_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Sandbox {
    root: PathBuf,
}

impl Sandbox {
    /// The folder must exist; it is resolved once, so a later symlink swap cannot move it.
    pub fn new(root: &Path) -> std::io::Result<Self> {
        Ok(Sandbox {
            root: root.canonicalize()?,
        })
    }

    fn escape(path: &str) -> ToolError {
        ToolError::Failed(format!("`{path}` is outside the sandbox"))
    }

    /// The real path of `path` (relative to the sandbox), checked to stay inside. For a file
    /// to write, the missing folders on the way are created, inside only.
    pub fn resolve(&self, path: &str, for_write: bool) -> Result<PathBuf, ToolError> {
        let rel = Path::new(path);
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(Self::escape(path));
        }
        let joined = self.root.join(rel);
        let inside = |p: &Path| -> Result<PathBuf, ToolError> {
            let real = p
                .canonicalize()
                .map_err(|e| ToolError::Failed(format!("`{path}`: {e}")))?;
            if real.starts_with(&self.root) {
                Ok(real)
            } else {
                Err(Self::escape(path))
            }
        };
        if !for_write {
            return inside(&joined);
        }
        let name = joined
            .file_name()
            .ok_or_else(|| ToolError::InvalidArguments(format!("`{path}` names no file")))?;
        let parent = joined.parent().unwrap_or(&self.root);
        // The deepest folder that exists must already be inside, before any is created.
        let mut existing = parent;
        while !existing.exists() {
            existing = existing.parent().unwrap_or(&self.root);
        }
        inside(existing)?;
        std::fs::create_dir_all(parent).map_err(|e| ToolError::Failed(format!("`{path}`: {e}")))?;
        let target = inside(parent)?.join(name);
        if target.exists() {
            inside(&target)?; // an existing symlink must point inside too
        }
        Ok(target)
    }
}

fn path_param(description: &str) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": 4096, "description": description})
}

pub struct FileRead(pub Arc<Sandbox>);
pub struct FileWrite(pub Arc<Sandbox>);
pub struct FileList(pub Arc<Sandbox>);

fn io(path: &str) -> impl Fn(std::io::Error) -> ToolError + '_ {
    move |e| ToolError::Failed(format!("`{path}`: {e}"))
}

#[async_trait]
impl Tool for FileRead {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "file_read".into(),
            description: "Reads a text file from the sandbox folder (at most 1 MiB).".into(),
            parameters: json!({
                "type": "object",
                "properties": {"path": path_param("relative to the sandbox")},
                "required": ["path"],
                "additionalProperties": false,
            }),
        }
    }

    async fn call(&self, args: Value) -> Result<Value, ToolError> {
        let path = super::str_arg(&args, "path")?;
        let real = self.0.resolve(path, false)?;
        let bytes = tokio::fs::read(&real).await.map_err(io(path))?;
        let truncated = bytes.len() > MAX_BYTES;
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_BYTES)]).into_owned();
        Ok(json!({"path": path, "content": text, "truncated": truncated}))
    }
}

#[async_trait]
impl Tool for FileWrite {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "file_write".into(),
            description: "Writes (or appends to) a text file in the sandbox folder, creating folders as needed.".into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "path": path_param("relative to the sandbox"),
                    "content": {"type": "string", "maxLength": MAX_BYTES},
                    "append": {"type": "boolean"},
                },
                "required": ["path", "content"],
                "additionalProperties": false,
            }),
        }
    }

    async fn call(&self, args: Value) -> Result<Value, ToolError> {
        let path = super::str_arg(&args, "path")?;
        let content = super::str_arg(&args, "content")?;
        let real = self.0.resolve(path, true)?;
        if args["append"].as_bool() == Some(true) {
            use tokio::io::AsyncWriteExt;
            let mut f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&real)
                .await
                .map_err(io(path))?;
            f.write_all(content.as_bytes()).await.map_err(io(path))?;
        } else {
            tokio::fs::write(&real, content).await.map_err(io(path))?;
        }
        Ok(json!({"path": path, "bytes": content.len()}))
    }
}

#[async_trait]
impl Tool for FileList {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "file_list".into(),
            description: "Lists a folder of the sandbox (default: its top).".into(),
            parameters: json!({
                "type": "object",
                "properties": {"path": path_param("relative to the sandbox; `.` for the top")},
                "additionalProperties": false,
            }),
        }
    }

    async fn call(&self, args: Value) -> Result<Value, ToolError> {
        let path = args["path"].as_str().unwrap_or(".");
        let real = self.0.resolve(path, false)?;
        let mut entries = Vec::new();
        let mut dir = tokio::fs::read_dir(&real).await.map_err(io(path))?;
        while let Some(e) = dir.next_entry().await.map_err(io(path))? {
            let kind = match e.file_type().await {
                Ok(t) if t.is_dir() => "dir",
                Ok(t) if t.is_symlink() => "link",
                _ => "file",
            };
            entries.push(json!({"name": e.file_name().to_string_lossy(), "kind": kind}));
        }
        entries.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        Ok(json!({"path": path, "entries": entries}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn files_stay_inside_the_sandbox() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("box");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(outer.path().join("secret.txt"), "outside").unwrap();
        std::os::unix::fs::symlink(outer.path(), root.join("door")).unwrap();
        let sb = Arc::new(Sandbox::new(&root).unwrap());

        let w = FileWrite(sb.clone())
            .call(json!({"path": "notes/a.txt", "content": "hi"}))
            .await
            .unwrap();
        assert_eq!(w["bytes"], 2);
        FileWrite(sb.clone())
            .call(json!({"path": "notes/a.txt", "content": "!", "append": true}))
            .await
            .unwrap();
        let r = FileRead(sb.clone())
            .call(json!({"path": "notes/a.txt"}))
            .await
            .unwrap();
        assert_eq!(r["content"], "hi!");
        let l = FileList(sb.clone()).call(json!({})).await.unwrap();
        assert_eq!(
            l["entries"],
            json!([{"name": "door", "kind": "link"}, {"name": "notes", "kind": "dir"}])
        );

        for bad in [
            "../secret.txt",
            "/etc/passwd",
            "door/secret.txt",
            "notes/../../secret.txt",
        ] {
            let err = FileRead(sb.clone())
                .call(json!({"path": bad}))
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("outside the sandbox"),
                "{bad}: {err}"
            );
        }
        for bad in ["../evil.txt", "door/evil.txt", "door/new/evil.txt"] {
            let err = FileWrite(sb.clone())
                .call(json!({"path": bad, "content": "x"}))
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("outside the sandbox"),
                "{bad}: {err}"
            );
        }
        assert!(!outer.path().join("evil.txt").exists());
        assert!(
            !outer.path().join("new").exists(),
            "no folder created outside"
        );
        assert_eq!(
            std::fs::read_to_string(outer.path().join("secret.txt")).unwrap(),
            "outside"
        );
    }
}
