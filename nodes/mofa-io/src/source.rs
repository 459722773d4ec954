//! The task source: MOFA_TASK (one task, MOFA_SESSION and MOFA_PRIORITY optional) or
//! MOFA_TASKS_FILE (JSONL, one task per line: `{"task": "...", "session": "...",
//! "priority": 0-3 or "low"|"normal"|"high"|"critical"}`). It sends each task on `task`, a
//! row each (the kernel may put queued rows in one array), in file order, then ends; its end closes the downstream inputs, so a chain
//! drains behind it. MOFA_TASK_INTERVAL_MS paces the tasks (default 0: all at once), in
//! bursts of MOFA_TASK_BURST (default 1).

use std::time::Duration;

use async_trait::async_trait;
use mofa_kernel::config::{self, ConfigError};
use mofa_kernel::node::{Ctx, Failure, Handler};
use mofa_kernel::{Envelope, Priority};
use serde::Deserialize;

pub struct Source {
    tasks: Vec<Envelope>,
    interval: Duration,
    burst: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskLine {
    #[serde(alias = "content")]
    task: String,
    session: Option<String>,
    priority: Option<serde_json::Value>,
}

fn parse_priority(v: &serde_json::Value) -> Result<Priority, String> {
    match v {
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| format!("priority {n} is out of range 0..=3"))
            .and_then(Priority::try_from),
        serde_json::Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "low" => Ok(Priority::Low),
            "normal" => Ok(Priority::Normal),
            "high" => Ok(Priority::High),
            "critical" => Ok(Priority::Critical),
            _ => Err(format!("unknown priority `{s}`")),
        },
        other => Err(format!("priority must be a number or a name, got {other}")),
    }
}

fn task(content: String, session: Option<String>, priority: Priority) -> Envelope {
    let t = Envelope::task("source", content).with_priority(priority);
    match session {
        Some(s) => t.with_session(s),
        None => t,
    }
}

/// Parses a JSONL task file; errors name the line.
pub fn parse_tasks(text: &str) -> Result<Vec<Envelope>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let l: TaskLine =
                serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            let p = match &l.priority {
                Some(v) => parse_priority(v).map_err(|e| format!("line {}: {e}", i + 1))?,
                None => Priority::Normal,
            };
            Ok(task(l.task, l.session, p))
        })
        .collect()
}

impl Source {
    pub fn new(tasks: Vec<Envelope>) -> Self {
        Source {
            tasks,
            interval: Duration::ZERO,
            burst: 1,
        }
    }

    /// Sends `burst` tasks at a time, `interval` apart.
    pub fn with_pacing(mut self, interval: Duration, burst: usize) -> Self {
        self.interval = interval;
        self.burst = burst.max(1);
        self
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        let tasks = match config::either("MOFA_TASK", "MOFA_TASKS_FILE")? {
            Some((true, t)) => {
                let p = match config::optional("MOFA_PRIORITY") {
                    Some(v) => {
                        parse_priority(&v.parse().unwrap_or(serde_json::Value::String(v.clone())))
                            .map_err(|e| ConfigError::invalid("MOFA_PRIORITY", v, e))?
                    }
                    None => Priority::Normal,
                };
                vec![task(t, config::optional("MOFA_SESSION"), p)]
            }
            Some((false, path)) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError::invalid("MOFA_TASKS_FILE", &path, e))?;
                let tasks = parse_tasks(&text)
                    .map_err(|e| ConfigError::invalid("MOFA_TASKS_FILE", &path, e))?;
                if tasks.is_empty() {
                    return Err(ConfigError::invalid(
                        "MOFA_TASKS_FILE",
                        path,
                        "no tasks in the file",
                    ));
                }
                tasks
            }
            None => {
                return Err(
                    config::required("MOFA_TASK", "give a task, or MOFA_TASKS_FILE").unwrap_err(),
                );
            }
        };
        Ok(Source::new(tasks).with_pacing(
            config::millis_or("MOFA_TASK_INTERVAL_MS", Duration::ZERO)?,
            config::parse_or("MOFA_TASK_BURST", 1usize)?,
        ))
    }
}

#[async_trait]
impl Handler for Source {
    async fn on_start(&self, ctx: &Ctx) -> Result<(), Failure> {
        for (i, t) in self.tasks.iter().enumerate() {
            if i > 0 && i % self.burst == 0 && !self.interval.is_zero() {
                tokio::time::sleep(self.interval).await;
            }
            let mut t = t.clone();
            // Ids and times are those of the send, not of reading the file: ids are time-ordered.
            let fresh = mofa_kernel::envelope::new_id();
            if t.session == t.id {
                t.session = fresh.clone();
            }
            t.id = fresh;
            t.sender = ctx.node_id().to_owned();
            t.ts_ms = mofa_kernel::envelope::now_ms();
            tracing::info!(session = %t.session, "task: {}", t.content);
            ctx.send_one("task", t);
        }
        ctx.exit();
        Ok(())
    }

    async fn on_message(&self, _ctx: &Ctx, input: &str, _msg: Envelope) -> Result<(), Failure> {
        Err(Failure::new(format!(
            "the source takes no input (got one on `{input}`)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_lines_with_sessions_and_priorities() {
        let tasks = parse_tasks(
            "{\"task\": \"a\"}\n\n{\"task\": \"b\", \"session\": \"s1\", \"priority\": \"critical\"}\n{\"content\": \"c\", \"priority\": 0}\n",
        )
        .unwrap();
        assert_eq!(tasks.len(), 3);
        assert_eq!(tasks[0].priority, Priority::Normal);
        assert_eq!(
            (tasks[1].session.as_str(), tasks[1].priority),
            ("s1", Priority::Critical)
        );
        assert_eq!(tasks[2].priority, Priority::Low);
    }

    #[test]
    fn bad_lines_are_named() {
        assert!(
            parse_tasks("{\"task\": \"a\"}\nnot json")
                .unwrap_err()
                .starts_with("line 2:")
        );
        assert!(
            parse_tasks("{\"task\": \"a\", \"priority\": 7}")
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            parse_tasks("{\"tusk\": \"a\"}")
                .unwrap_err()
                .starts_with("line 1:")
        );
    }
}
