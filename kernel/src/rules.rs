//! The rule engine (feature `script`): rules in YAML whose conditions and values are Rhai
//! expressions, run on [`ScriptEngine`]. Evaluated against one envelope, a rule set gives an
//! [`Outcome`]: the rules that matched, the variables they set and the events they emitted.
//!
//! ```yaml
//! mode: first            # first | all | ordered (default first)
//! max_jumps: 16          # goto bound for one evaluation (default 16)
//! rules:
//!   - name: spam
//!     priority: critical # critical > high > normal > low (default normal)
//!     condition: 'msg.content.to_lower().contains("buy now")'
//!     actions:
//!       - set: {reason: '"spam"', score: 10}       # a string is Rhai, anything else a literal
//!       - emit: {output: blocked, content: '"blocked: " + vars.reason', kind: result}
//!   - name: maths
//!     condition: 'msg.content.contains("+")'
//!     actions: [{emit: {output: maths}}]
//! default: [{emit: {output: writer}}]              # when no rule matched
//! ```
//!
//! Instead of top-level `mode`/`rules`/`default`, a file may list `groups:` (each with `name`,
//! `mode`, `rules`, `default`), evaluated one after the other over the same variables.
//!
//! Scripts see `msg` (the envelope as a map: `msg.content`, `msg.session`, `msg.priority` as
//! 0–3, `msg.payload` as JSON text for `json_parse`) and `vars` (the variables set so far).
//! A missing `condition` always holds.
//!
//! Match modes, per group:
//! - `first`: rules by priority (file order among equals); the first whose condition holds
//!   fires and the group ends — the usual "first match wins" of a router or firewall.
//! - `all`: rules by priority; every rule whose condition holds fires, in that order, each
//!   seeing the variables the earlier ones set.
//! - `ordered`: as `all`, in file order; priorities are ignored.
//!
//! Actions run in the order written. `goto: <rule>` (at most one per rule, in the same group)
//! is taken after the rule's other actions: evaluation continues at that rule (its condition
//! is tested) and the rules after it, in the group's order — in `first` mode too, until a rule
//! fires without a goto. More than `max_jumps` jumps in one evaluation is an error that shows
//! the rules going round. A group's `default` actions run when none of its rules matched.
//!
//! Everything is checked at load: unknown fields, duplicate names, unknown goto targets,
//! output names, and every script compiles; errors name the rule.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use rhai::AST;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::envelope::{Envelope, Kind, Priority, Role};
use crate::script::{ScriptEngine, ScriptError};

/// How a group picks the rules that fire (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchMode {
    #[default]
    First,
    All,
    Ordered,
}

/// Why rules could not be loaded or evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    #[error("rules file: {0}")]
    Parse(String),
    #[error("rule `{rule}`: {why}")]
    Invalid { rule: String, why: String },
    #[error("rule `{rule}`: {error}")]
    Script { rule: String, error: ScriptError },
    #[error("goto loop in group `{group}`: more than {max} jumps ({trail})")]
    Loop {
        group: String,
        max: u32,
        trail: String,
    },
}

/// An event a rule emitted: `content` is `None` for "the message itself".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Emit {
    pub output: String,
    pub content: Option<Value>,
    /// The kind for a new message (`emit.kind`); `None`: the message's own.
    pub kind: Option<Kind>,
}

/// What a rule set made of one message.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Outcome {
    /// The rules that fired, in the order they fired (a rule reached twice by goto, twice).
    pub matched: Vec<String>,
    /// The groups whose `default` ran.
    pub fallbacks: Vec<String>,
    pub vars: Map<String, Value>,
    pub emits: Vec<Emit>,
}

// ---- The file as written ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    mode: Option<MatchMode>,
    rules: Option<Vec<RawRule>>,
    default: Option<Vec<RawAction>>,
    groups: Option<Vec<RawGroup>>,
    max_jumps: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: String,
    #[serde(default)]
    mode: MatchMode,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    default: Vec<RawAction>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Level {
    Low,
    #[default]
    Normal,
    High,
    Critical,
}

impl Outcome {
    /// The messages the emits make of `msg`: an emit without content forwards `msg` itself; one
    /// with content is a new message replying to it (its `kind`, or `msg`'s), carrying the
    /// matched rules and the variables in its payload. Output, message; in emit order.
    pub fn messages(&self, msg: &Envelope, sender: &str) -> Vec<(String, Envelope)> {
        let payload = serde_json::json!({"rules": self.matched, "vars": self.vars});
        self.emits
            .iter()
            .map(|emit| {
                let out = match &emit.content {
                    None => msg.clone(),
                    Some(content) => {
                        let text = match content {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        let kind = emit.kind.unwrap_or(msg.kind);
                        let role = match kind {
                            Kind::Task | Kind::Message => msg.role,
                            _ => Role::Assistant,
                        };
                        msg.reply(kind, sender, role, text).with_payload(&payload)
                    }
                };
                (emit.output.clone(), out)
            })
            .collect()
    }
}

impl From<Level> for Priority {
    fn from(l: Level) -> Priority {
        match l {
            Level::Low => Priority::Low,
            Level::Normal => Priority::Normal,
            Level::High => Priority::High,
            Level::Critical => Priority::Critical,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    priority: Level,
    condition: Option<String>,
    #[serde(default)]
    actions: Vec<RawAction>,
}

/// One of `set`, `emit`, `goto` (a one-key map: serde_yaml reads enums only from `!tags`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    // A YAML mapping keeps the order written: a later variable may use an earlier one.
    set: Option<serde_yaml::Mapping>,
    emit: Option<RawEmit>,
    goto: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmit {
    output: String,
    content: Option<String>,
    kind: Option<String>,
}

// ---- Compiled ----

enum SetValue {
    Expr(Arc<AST>),
    Literal(Value),
}

enum Action {
    Set(Vec<(String, SetValue)>),
    Emit {
        output: String,
        content: Option<Arc<AST>>,
        kind: Option<Kind>,
    },
    /// Index of the target in the group's evaluation order.
    Goto(usize),
}

struct Rule {
    name: String,
    condition: Option<Arc<AST>>,
    actions: Vec<Action>,
}

struct Group {
    name: String,
    mode: MatchMode,
    /// In evaluation order: by priority for `first` and `all`, as written for `ordered`.
    rules: Vec<Rule>,
    default: Vec<Action>,
}

/// A loaded, fully compiled rule set. Cheap to share (`Arc`) across evaluations.
pub struct RuleSet {
    groups: Vec<Group>,
    max_jumps: u32,
}

const MAX_JUMPS: u32 = 16;
/// The name of the group a file without `groups:` has.
pub const MAIN_GROUP: &str = "main";

fn invalid(rule: &str, why: impl Into<String>) -> RuleError {
    RuleError::Invalid {
        rule: rule.to_owned(),
        why: why.into(),
    }
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl RuleSet {
    /// Parses `text` (YAML) and compiles every script in it.
    pub fn load(engine: &ScriptEngine, text: &str) -> Result<RuleSet, RuleError> {
        let raw: RawFile =
            serde_yaml::from_str(text).map_err(|e| RuleError::Parse(e.to_string()))?;
        let groups = match (raw.groups, raw.rules, raw.default, raw.mode) {
            (Some(_), r, d, m) if r.is_some() || d.is_some() || m.is_some() => {
                return Err(RuleError::Parse(
                    "give `groups:`, or top-level `mode`/`rules`/`default`, not both".into(),
                ));
            }
            (Some(groups), ..) => groups,
            (None, rules, default, mode) => vec![RawGroup {
                name: MAIN_GROUP.into(),
                mode: mode.unwrap_or_default(),
                rules: rules.unwrap_or_default(),
                default: default.unwrap_or_default(),
            }],
        };
        let mut names = HashSet::new();
        let mut group_names = HashSet::new();
        let mut compiled = Vec::new();
        for g in groups {
            if !group_names.insert(g.name.clone()) {
                return Err(RuleError::Parse(format!(
                    "group `{}` is named twice",
                    g.name
                )));
            }
            for r in &g.rules {
                if r.name.trim().is_empty() {
                    return Err(RuleError::Parse(format!(
                        "a rule of group `{}` has an empty name",
                        g.name
                    )));
                }
                if !names.insert(r.name.clone()) {
                    return Err(invalid(&r.name, "named twice"));
                }
            }
            compiled.push(Group::compile(engine, g)?);
        }
        if compiled
            .iter()
            .all(|g| g.rules.is_empty() && g.default.is_empty())
        {
            return Err(RuleError::Parse("no rules".into()));
        }
        Ok(RuleSet {
            groups: compiled,
            max_jumps: raw.max_jumps.unwrap_or(MAX_JUMPS),
        })
    }

    /// [`load`](Self::load) from a file; the error names the path.
    pub fn load_file(engine: &ScriptEngine, path: &std::path::Path) -> Result<RuleSet, RuleError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RuleError::Parse(format!("{}: {e}", path.display())))?;
        Self::load(engine, &text).map_err(|e| match e {
            RuleError::Parse(why) => RuleError::Parse(format!("{}: {why}", path.display())),
            other => other,
        })
    }

    /// Every output a rule or default may emit on.
    pub fn outputs(&self) -> BTreeSet<&str> {
        let actions = self.groups.iter().flat_map(|g| {
            g.rules
                .iter()
                .flat_map(|r| r.actions.iter())
                .chain(g.default.iter())
        });
        actions
            .filter_map(|a| match a {
                Action::Emit { output, .. } => Some(output.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Runs the rules on `msg`. Blocks while scripts run: call it from a blocking thread.
    pub fn evaluate(&self, engine: &ScriptEngine, msg: &Envelope) -> Result<Outcome, RuleError> {
        let msg = serde_json::to_value(msg).expect("an envelope is JSON");
        let mut out = Outcome::default();
        let mut jumps = 0u32;
        for g in &self.groups {
            let mut trail: Vec<&str> = Vec::new();
            let mut fired = false;
            let mut i = 0;
            while let Some(rule) = g.rules.get(i) {
                if !rule.holds(engine, &msg, &out.vars)? {
                    i += 1;
                    continue;
                }
                fired = true;
                out.matched.push(rule.name.clone());
                match run(engine, &rule.name, &rule.actions, &msg, &mut out)? {
                    Some(target) => {
                        jumps += 1;
                        trail.push(&rule.name);
                        if jumps > self.max_jumps {
                            // The last jumps show the rules going round.
                            let from = trail.len().saturating_sub(6);
                            let mut shown: Vec<&str> = trail[from..].to_vec();
                            shown.push(&g.rules[target].name);
                            return Err(RuleError::Loop {
                                group: g.name.clone(),
                                max: self.max_jumps,
                                trail: shown.join(" → "),
                            });
                        }
                        i = target;
                    }
                    None if g.mode == MatchMode::First => break,
                    None => i += 1,
                }
            }
            if !fired && !g.default.is_empty() {
                out.fallbacks.push(g.name.clone());
                let who = format!("{} default", g.name);
                run(engine, &who, &g.default, &msg, &mut out)?;
            }
        }
        Ok(out)
    }
}

impl Group {
    fn compile(engine: &ScriptEngine, g: RawGroup) -> Result<Group, RuleError> {
        let mut rules: Vec<(Priority, RawRule)> = g
            .rules
            .into_iter()
            .map(|r| (r.priority.into(), r))
            .collect();
        if g.mode != MatchMode::Ordered {
            // Stable: file order among equal priorities.
            rules.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
        }
        let index: HashMap<String, usize> = rules
            .iter()
            .enumerate()
            .map(|(i, (_, r))| (r.name.clone(), i))
            .collect();
        let mut compiled = Vec::new();
        for (_, r) in rules {
            let condition = r
                .condition
                .as_deref()
                .map(|c| {
                    engine
                        .compile(c)
                        .map_err(|e| invalid(&r.name, format!("condition: {e}")))
                })
                .transpose()?;
            let actions = compile_actions(engine, &r.name, r.actions, Some((&g.name, &index)))?;
            compiled.push(Rule {
                name: r.name,
                condition,
                actions,
            });
        }
        let who = format!("{} default", g.name);
        let default = compile_actions(engine, &who, g.default, None)?;
        Ok(Group {
            name: g.name,
            mode: g.mode,
            rules: compiled,
            default,
        })
    }
}

enum Do {
    Set(serde_yaml::Mapping),
    Emit(RawEmit),
    Goto(String),
}

/// `goto_targets`: the group's rule indices, `None` where goto is not allowed (a default).
fn compile_actions(
    engine: &ScriptEngine,
    rule: &str,
    raw: Vec<RawAction>,
    goto_targets: Option<(&str, &HashMap<String, usize>)>,
) -> Result<Vec<Action>, RuleError> {
    let compile = |what: &str, src: &str| {
        engine
            .compile(src)
            .map_err(|e| invalid(rule, format!("{what}: {e}")))
    };
    let mut actions = Vec::new();
    let mut gotos = 0;
    for a in raw {
        let action = match (a.set, a.emit, a.goto) {
            (Some(set), None, None) => Do::Set(set),
            (None, Some(emit), None) => Do::Emit(emit),
            (None, None, Some(goto)) => Do::Goto(goto),
            _ => {
                return Err(invalid(
                    rule,
                    "an action is one of `set`, `emit` or `goto`, each its own list item",
                ));
            }
        };
        actions.push(match action {
            Do::Set(map) => {
                let mut vars = Vec::new();
                for (k, v) in map {
                    let Some(name) = k.as_str() else {
                        return Err(invalid(rule, format!("set: variable {k:?} is not a name")));
                    };
                    let value = match v {
                        serde_yaml::Value::String(src) => {
                            SetValue::Expr(compile(&format!("set {name}"), &src)?)
                        }
                        other => SetValue::Literal(serde_json::to_value(&other).map_err(|e| {
                            invalid(rule, format!("set {name}: not a JSON value: {e}"))
                        })?),
                    };
                    vars.push((name.to_owned(), value));
                }
                Action::Set(vars)
            }
            Do::Emit(e) => {
                if !is_id(&e.output) {
                    return Err(invalid(
                        rule,
                        format!(
                            "emit: output `{}` is no dora id (letters, digits, `_` and `-`)",
                            e.output
                        ),
                    ));
                }
                let kind = e
                    .kind
                    .map(|k| {
                        k.parse::<Kind>()
                            .map_err(|why| invalid(rule, format!("emit: {why}")))
                    })
                    .transpose()?;
                Action::Emit {
                    content: e
                        .content
                        .map(|c| compile(&format!("emit {} content", e.output), &c))
                        .transpose()?,
                    output: e.output,
                    kind,
                }
            }
            Do::Goto(target) => {
                let Some((group, index)) = goto_targets else {
                    return Err(invalid(rule, "a default cannot goto"));
                };
                gotos += 1;
                if gotos > 1 {
                    return Err(invalid(rule, "more than one goto"));
                }
                let Some(&i) = index.get(&target) else {
                    return Err(invalid(
                        rule,
                        format!("goto `{target}`: no such rule in group `{group}`"),
                    ));
                };
                Action::Goto(i)
            }
        });
    }
    Ok(actions)
}

impl Rule {
    fn holds(
        &self,
        engine: &ScriptEngine,
        msg: &Value,
        vars: &Map<String, Value>,
    ) -> Result<bool, RuleError> {
        let Some(ast) = &self.condition else {
            return Ok(true);
        };
        match eval(engine, &self.name, ast, msg, vars)? {
            Value::Bool(b) => Ok(b),
            other => Err(RuleError::Script {
                rule: self.name.clone(),
                error: ScriptError::Runtime(format!(
                    "the condition gave {other}, not true or false"
                )),
            }),
        }
    }
}

fn eval(
    engine: &ScriptEngine,
    rule: &str,
    ast: &AST,
    msg: &Value,
    vars: &Map<String, Value>,
) -> Result<Value, RuleError> {
    // The variables go in as a map: `vars.x`, and `vars.x == ()` for one not set yet.
    let vars = Value::Object(vars.clone());
    engine
        .eval(ast, &[("msg", msg), ("vars", &vars)])
        .map_err(|error| RuleError::Script {
            rule: rule.to_owned(),
            error,
        })
}

/// Runs `actions`; returns the goto target, if any.
fn run(
    engine: &ScriptEngine,
    rule: &str,
    actions: &[Action],
    msg: &Value,
    out: &mut Outcome,
) -> Result<Option<usize>, RuleError> {
    let mut goto = None;
    for a in actions {
        match a {
            Action::Set(vars) => {
                for (name, v) in vars {
                    let value = match v {
                        SetValue::Expr(ast) => eval(engine, rule, ast, msg, &out.vars)?,
                        SetValue::Literal(v) => v.clone(),
                    };
                    out.vars.insert(name.clone(), value);
                }
            }
            Action::Emit {
                output,
                content,
                kind,
            } => {
                let content = match content {
                    Some(ast) => Some(eval(engine, rule, ast, msg, &out.vars)?),
                    None => None,
                };
                out.emits.push(Emit {
                    output: output.clone(),
                    content,
                    kind: *kind,
                });
            }
            Action::Goto(target) => goto = Some(*target),
        }
    }
    Ok(goto)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::Limits;
    use serde_json::json;
    use std::time::Duration;

    fn engine() -> ScriptEngine {
        ScriptEngine::new(Limits {
            max_operations: 20_000,
            timeout: Duration::from_millis(300),
            ..Limits::default()
        })
    }

    fn run_rules(yaml: &str, content: &str) -> Result<Outcome, RuleError> {
        let e = engine();
        let rules = RuleSet::load(&e, yaml).unwrap_or_else(|err| panic!("load: {err}"));
        rules.evaluate(&e, &Envelope::task("src", content))
    }

    fn load_err(yaml: &str) -> String {
        match RuleSet::load(&engine(), yaml) {
            Ok(_) => panic!("loaded:\n{yaml}"),
            Err(e) => e.to_string(),
        }
    }

    /// Three rules that all match "urgent spam", priorities against file order.
    fn three(mode: &str) -> String {
        format!(
            r#"
mode: {mode}
rules:
  - name: low
    priority: low
    condition: 'msg.content.contains("spam")'
    actions: [{{emit: {{output: a}}}}]
  - name: normal
    condition: 'msg.content.contains("urgent")'
    actions: [{{emit: {{output: b}}}}]
  - name: critical
    priority: critical
    condition: 'msg.content.contains("spam")'
    actions: [{{emit: {{output: c}}}}]
  - name: never
    priority: critical
    condition: 'false'
"#
        )
    }

    #[test]
    fn first_fires_the_highest_priority_match_only() {
        let out = run_rules(&three("first"), "urgent spam").unwrap();
        assert_eq!(out.matched, ["critical"]);
        assert_eq!(out.emits.len(), 1);
        assert_eq!(out.emits[0].output, "c");
        // Equal priorities: file order.
        let out = run_rules(&three("first"), "urgent").unwrap();
        assert_eq!(out.matched, ["normal"]);
    }

    #[test]
    fn all_fires_every_match_by_priority() {
        let out = run_rules(&three("all"), "urgent spam").unwrap();
        assert_eq!(out.matched, ["critical", "normal", "low"]);
        let outputs: Vec<&str> = out.emits.iter().map(|e| e.output.as_str()).collect();
        assert_eq!(outputs, ["c", "b", "a"]);
    }

    #[test]
    fn ordered_fires_every_match_in_file_order() {
        let out = run_rules(&three("ordered"), "urgent spam").unwrap();
        assert_eq!(out.matched, ["low", "normal", "critical"]);
        let out = run_rules(&three("ordered"), "nothing").unwrap();
        assert!(out.matched.is_empty() && out.emits.is_empty());
    }

    #[test]
    fn set_makes_variables_that_later_rules_and_the_outcome_see() {
        let yaml = r#"
mode: ordered
rules:
  - name: score
    actions:
      - set: {words: 'msg.content.split(" ").len()', flag: true, tags: [x, y], label: '"s-" + msg.sender'}
      - set: {double: 'vars.words * 2'}
  - name: long
    condition: 'vars.words > 2'
    actions: [{set: {long: true}}]
  - name: unset
    condition: 'vars.missing == ()'
"#;
        let out = run_rules(yaml, "one two three").unwrap();
        assert_eq!(out.matched, ["score", "long", "unset"]);
        assert_eq!(
            Value::Object(out.vars),
            json!({"words": 3, "flag": true, "tags": ["x", "y"], "label": "s-src",
                   "double": 6, "long": true})
        );
    }

    #[test]
    fn emit_gives_an_output_with_or_without_content() {
        let yaml = r#"
mode: all
rules:
  - name: both
    actions:
      - set: {n: 2}
      - emit: {output: as-is}
      - emit: {output: told, content: '`${msg.content}! x${vars.n}`', kind: result}
      - emit: {output: data, content: '#{n: vars.n}'}
"#;
        let out = run_rules(yaml, "hey").unwrap();
        assert_eq!(
            out.emits,
            vec![
                Emit {
                    output: "as-is".into(),
                    content: None,
                    kind: None
                },
                Emit {
                    output: "told".into(),
                    content: Some(json!("hey! x2")),
                    kind: Some(Kind::Result)
                },
                Emit {
                    output: "data".into(),
                    content: Some(json!({"n": 2})),
                    kind: None
                },
            ]
        );
    }

    #[test]
    fn goto_continues_at_the_target_in_any_mode() {
        // `start` jumps over `skipped` (which would match) to `target`, which is tested.
        for mode in ["first", "ordered"] {
            let yaml = format!(
                r#"
mode: {mode}
rules:
  - name: start
    actions: [{{set: {{n: 1}}}}, {{goto: target}}]
  - name: skipped
  - name: target
    condition: 'vars.n == 1'
    actions: [{{emit: {{output: out}}}}]
  - name: after
"#
            );
            let out = run_rules(&yaml, "x").unwrap();
            let want: &[&str] = if mode == "first" {
                &["start", "target"]
            } else {
                &["start", "target", "after"]
            };
            assert_eq!(out.matched, want, "{mode}");
        }
    }

    #[test]
    fn a_goto_loop_stops_at_the_bound_and_names_the_rules() {
        let yaml = r#"
max_jumps: 5
rules:
  - name: ping
    actions: [{goto: pong}]
  - name: pong
    actions: [{goto: ping}]
"#;
        let err = run_rules(yaml, "x").unwrap_err();
        assert!(matches!(err, RuleError::Loop { max: 5, .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("goto loop in group `main`: more than 5 jumps"),
            "{msg}"
        );
        assert!(msg.contains("ping → pong → ping"), "{msg}");
        // A bounded jump back is fine: it counts down a variable.
        let yaml = r#"
mode: ordered
rules:
  - name: init
    condition: 'vars.n == ()'
    actions: [{set: {n: 3}}]
  - name: down
    condition: 'vars.n > 0'
    actions: [{set: {n: 'vars.n - 1'}}, {goto: down}]
"#;
        let out = run_rules(yaml, "x").unwrap();
        assert_eq!(out.matched, ["init", "down", "down", "down"]);
        assert_eq!(out.vars["n"], 0);
    }

    #[test]
    fn groups_run_in_turn_and_a_default_runs_when_none_of_its_rules_matched() {
        let yaml = r#"
groups:
  - name: screen
    mode: first
    rules:
      - name: spam
        condition: 'msg.content.contains("buy")'
        actions: [{set: {spam: true}}, {emit: {output: blocked, content: '"no"'}}]
    default: [{set: {spam: false}}]
  - name: route
    rules:
      - name: maths
        condition: '!vars.spam && msg.content.contains("+")'
        actions: [{emit: {output: maths}}]
    default:
      - emit: {output: writer}
"#;
        let out = run_rules(yaml, "1+1").unwrap();
        assert_eq!(out.matched, ["maths"]);
        assert_eq!(out.fallbacks, ["screen"]);
        assert_eq!(out.vars["spam"], false);
        assert_eq!(out.emits[0].output, "maths");
        let out = run_rules(yaml, "a poem").unwrap();
        assert_eq!(out.fallbacks, ["screen", "route"]);
        assert_eq!(out.emits[0].output, "writer");
        let out = run_rules(yaml, "buy 1+1 now").unwrap();
        assert_eq!(out.matched, ["spam"]);
        assert_eq!(out.fallbacks, ["route"]);
        let outputs: Vec<&str> = out.emits.iter().map(|e| e.output.as_str()).collect();
        assert_eq!(outputs, ["blocked", "writer"]);
        let e = engine();
        let set = RuleSet::load(&e, yaml).unwrap();
        assert_eq!(
            set.outputs().into_iter().collect::<Vec<_>>(),
            ["blocked", "maths", "writer"]
        );
    }

    #[test]
    fn bad_files_are_load_errors_that_name_the_rule() {
        let cases = [
            (
                "rules: [{name: a, condition: 'let = ;'}]",
                "rule `a`: condition: script does not compile",
            ),
            (
                "rules: [{name: a, actions: [{set: {x: '1 +'}}]}]",
                "rule `a`: set x:",
            ),
            (
                "rules: [{name: a, actions: [{emit: {output: o, content: '('}}]}]",
                "rule `a`: emit o content:",
            ),
            (
                "rules: [{name: a, actions: [{emit: {output: 'o/x'}}]}]",
                "no dora id",
            ),
            (
                "rules: [{name: a, actions: [{emit: {output: o, kind: nope}}]}]",
                "unknown kind `nope`",
            ),
            (
                "rules: [{name: a, actions: [{goto: zzz}]}]",
                "rule `a`: goto `zzz`: no such rule in group `main`",
            ),
            (
                "rules: [{name: a, actions: [{goto: a}, {goto: a}]}]",
                "more than one goto",
            ),
            ("rules: [{name: a}, {name: a}]", "rule `a`: named twice"),
            (
                "rules: [{name: a}]\ndefault: [{goto: a}]",
                "rule `main default`: a default cannot goto",
            ),
            ("rules: [{name: a, when: 'true'}]", "unknown field `when`"),
            (
                "rules: [{name: a, actions: [{jump: a}]}]",
                "unknown field `jump`",
            ),
            (
                "rules: [{name: a, actions: [{goto: a, set: {x: 1}}]}]",
                "one of `set`, `emit` or `goto`",
            ),
            (
                "rules: [{name: a, priority: urgent}]",
                "unknown variant `urgent`",
            ),
            ("mode: any\nrules: [{name: a}]", "unknown variant `any`"),
            ("rulez: []", "unknown field `rulez`"),
            ("rules: []", "no rules"),
            (
                "groups: [{name: g, rules: [{name: a}]}]\nrules: [{name: b}]",
                "not both",
            ),
            (
                "groups: [{name: g, rules: [{name: a}]}, {name: g, rules: [{name: b}]}]",
                "group `g` is named twice",
            ),
            (
                "groups: [{name: g, rules: [{name: a}]}, {name: h, rules: [{name: a}]}]",
                "rule `a`: named twice",
            ),
            (
                "groups: [{name: g, rules: [{name: a, actions: [{goto: b}]}]}, {name: h, rules: [{name: b}]}]",
                "no such rule in group `g`",
            ),
        ];
        for (yaml, want) in cases {
            let err = load_err(yaml);
            assert!(err.contains(want), "{yaml}\n→ {err}\n(wanted {want})");
        }
    }

    #[test]
    fn a_hostile_or_failing_script_is_an_error_naming_its_rule() {
        let yaml = r#"
mode: ordered
rules:
  - name: fine
  - name: endless
    condition: 'loop {}'
"#;
        let err = run_rules(yaml, "x").unwrap_err();
        match &err {
            RuleError::Script {
                rule,
                error: ScriptError::Limit(why),
            } => {
                assert_eq!(rule, "endless");
                assert!(why.contains("operations"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("rule `endless`: script stopped at a limit")
        );
        let err = run_rules(
            "rules: [{name: sleepy, condition: 'sleep(5000); true'}]",
            "x",
        )
        .unwrap_err();
        assert_eq!(
            err,
            RuleError::Script {
                rule: "sleepy".into(),
                error: ScriptError::Timeout(300)
            }
        );
        let err = run_rules("rules: [{name: num, condition: '1 + 1'}]", "x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "rule `num`: script failed: the condition gave 2, not true or false"
        );
        let err = run_rules(
            "rules: [{name: a, condition: 'false'}]\ndefault: [{set: {x: 'throw \"bad\"'}}]",
            "x",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("rule `main default`: script failed"),
            "{err}"
        );
    }

    #[test]
    fn the_message_is_a_map_of_the_envelope_fields() {
        let yaml = r#"
rules:
  - name: look
    condition: 'msg.kind == "task" && msg.priority == 3 && json_parse(msg.payload).tag == "vip"'
    actions: [{set: {session: 'msg.session'}}]
"#;
        let e = engine();
        let set = RuleSet::load(&e, yaml).unwrap();
        let msg = Envelope::task("src", "hi")
            .with_priority(Priority::Critical)
            .with_payload(&json!({"tag": "vip"}))
            .with_session("s1");
        let out = set.evaluate(&e, &msg).unwrap();
        assert_eq!(out.matched, ["look"]);
        assert_eq!(out.vars["session"], "s1");
    }
}
