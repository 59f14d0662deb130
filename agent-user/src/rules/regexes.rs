//! `matches()` with its regular expression compiled once, when the rules are loaded.
//!
//! The `cel` crate's builtin `matches` compiles its pattern on every call (one compile of the
//! starter pack's `local_tool` pattern costs more instructions than parsing a thousand
//! records), and a builtin cannot be replaced through `Context::add_function`. So the compiled
//! expression is rewritten instead: every `x.matches("literal")` (and `matches(x, "literal")`)
//! becomes `__warden_matches(x, N)`, a function of ours that runs pattern `N` of the rule
//! set's table, compiled here with the same `regex` crate and options `cel` uses
//! (`regex::Regex::new`), so the answers are the same. An invalid literal pattern is a loading
//! error naming the rule (it used to fail at every evaluation, silently counted). A pattern
//! that is not a literal (`path.matches(list_var[0])`) keeps the builtin.
use std::sync::Arc;

use cel::{
    ExecutionError, FunctionContext, IdedExpr,
    common::{
        ast::{CallExpr, EntryExpr, Expr, LiteralValue},
        types::{CelBool, CelInt, CelString},
        value::CowVal,
    },
};

/// The name the rewritten calls use. Rules may not use it themselves.
pub const FUNCTION: &str = "__warden_matches";

/// Patterns of a rule set, compiled once; calls name them by index.
#[derive(Debug, Clone, Default)]
pub struct Regexes(Vec<regex::Regex>);

impl Regexes {
    /// Rewrites `e` in place: every `matches` call with a literal pattern gets its pattern
    /// compiled into the table and calls [`FUNCTION`] instead. `Err` names an invalid pattern.
    pub fn rewrite(&mut self, e: &mut IdedExpr) -> Result<(), String> {
        match &mut e.expr {
            Expr::Call(c) => {
                if let Some(target) = &mut c.target {
                    self.rewrite(target)?;
                }
                for a in &mut c.args {
                    self.rewrite(a)?;
                }
                if let Some(call) = self.compiled_call(c)? {
                    e.expr = Expr::Call(call);
                }
            }
            Expr::Comprehension(c) => {
                for x in
                    [&mut c.iter_range, &mut c.accu_init, &mut c.loop_cond, &mut c.loop_step, &mut c.result]
                {
                    self.rewrite(x)?;
                }
            }
            Expr::List(l) => {
                for x in &mut l.elements {
                    self.rewrite(x)?;
                }
            }
            Expr::Map(m) => {
                for entry in &mut m.entries {
                    if let EntryExpr::MapEntry(me) = &mut entry.expr {
                        self.rewrite(&mut me.key)?;
                        self.rewrite(&mut me.value)?;
                    }
                }
            }
            Expr::Struct(s) => {
                for entry in &mut s.entries {
                    match &mut entry.expr {
                        EntryExpr::StructField(f) => self.rewrite(&mut f.value)?,
                        EntryExpr::MapEntry(me) => {
                            self.rewrite(&mut me.key)?;
                            self.rewrite(&mut me.value)?;
                        }
                    }
                }
            }
            Expr::Select(s) => self.rewrite(&mut s.operand)?,
            Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => {}
        }
        Ok(())
    }

    /// `x.matches("p")` or `matches(x, "p")` as `__warden_matches(x, N)`; `None` for any other
    /// call (a non-literal pattern included).
    fn compiled_call(&mut self, c: &CallExpr) -> Result<Option<CallExpr>, String> {
        if c.func_name != "matches" {
            return Ok(None);
        }
        let (subject, pattern) = match (&c.target, c.args.as_slice()) {
            (Some(t), [p]) => (t.as_ref(), p),
            (None, [s, p]) => (s, p),
            _ => return Ok(None),
        };
        let Expr::Literal(LiteralValue::String(p)) = &pattern.expr else {
            return Ok(None);
        };
        let re = regex::Regex::new(p.inner()).map_err(|err| {
            format!(
                "matches(\"{}\"): not a valid regular expression: {}; fix the pattern (syntax: \
                 https://docs.rs/regex/latest/regex/#syntax)",
                p.inner(),
                one_line(&err.to_string())
            )
        })?;
        // One table entry per distinct pattern.
        let index = match self.0.iter().position(|r| r.as_str() == re.as_str()) {
            Some(i) => i,
            None => {
                self.0.push(re);
                self.0.len() - 1
            }
        };
        let index =
            IdedExpr { id: pattern.id, expr: Expr::Literal(LiteralValue::Int(CelInt::from(index as i64))) };
        Ok(Some(CallExpr {
            func_name: FUNCTION.to_string(),
            target: None,
            args: vec![subject.clone(), index],
        }))
    }

    /// Binds [`FUNCTION`] to this table in `ctx` (a root context).
    pub fn bind(&self, ctx: &mut cel::Context<'static, 'static>) {
        let table: Arc<[regex::Regex]> = self.0.clone().into();
        let f: Function = Box::new(move |ftx: &mut FunctionContext<'_, '_>| {
            let [subject, index] = ftx.args.as_slice() else {
                return Err(ExecutionError::invalid_argument_count(2, ftx.args.len()));
            };
            let Some(re) = index
                .downcast_ref::<CelInt>()
                .and_then(|i| usize::try_from(*i.inner()).ok())
                .and_then(|i| table.get(i))
            else {
                return Err(ftx.error("no such pattern"));
            };
            // As the builtin: only a string has `matches`.
            let Some(s) = subject.downcast_ref::<CelString>() else {
                return Err(ExecutionError::no_such_overload(
                    "matches",
                    vec![subject.get_type().name().to_string(), "string".into()],
                ));
            };
            Ok(CowVal::owned(CelBool::from(re.is_match(s.inner()))))
        });
        ctx.add_function(FUNCTION, f).expect("a name the standard library does not declare");
    }
}

/// What `cel` calls a function of a context.
type Function = Box<
    dyn for<'c, 'v> Fn(&mut FunctionContext<'c, 'v>) -> Result<CowVal<'c, 'v>, ExecutionError> + Send + Sync,
>;

/// The `regex` crate's message on one line: its `error: ...` line (the rest repeats the
/// pattern and draws a caret under the fault), else every line joined.
fn one_line(s: &str) -> String {
    if let Some(e) = s.lines().find_map(|l| l.trim().strip_prefix("error: ")) {
        return e.to_string();
    }
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::rules::{
        RuleSet,
        engine::{Evaluator, Outcome},
    };

    /// Patterns as rules write them, and subjects around their edges.
    const PATTERNS: &[&str] = &[
        "^/proc/[0-9]+/environ$",
        "^(read|list|ls|cat|grep|search|find|parse|format|lint|diff)([-_.].*)?$",
        "environ",
        "(?i)^/TMP/",
        r"\d{3,}",
        "^$",
        "é.$",
        "",
    ];
    const SUBJECTS: &[&str] = &[
        "",
        "/proc/1/environ",
        "/proc/self/environ",
        "/proc/12/environ/x",
        "read-file",
        "read",
        "reader",
        "grep.py",
        "fetch",
        "/tmp/x",
        "/Tmp/y",
        "a123",
        "12",
        "café!",
        "caf\u{e9}",
        "line\nbreak",
    ];

    /// The rewritten calls answer as `cel`'s builtin does, member and global form alike, for
    /// every pattern and subject; a non-literal pattern is left to the builtin.
    #[test]
    fn compiled_patterns_answer_as_the_builtin() {
        for (i, p) in PATTERNS.iter().enumerate() {
            let quoted = serde_json::to_string(p).unwrap();
            for form in [format!("path.matches({quoted})"), format!("matches(path, {quoted})")] {
                let mut set = RuleSet::empty();
                let yaml = format!(
                    "- id: r{i}\n  description: d\n  severity: low\n  match: {}\n",
                    serde_json::to_string(&form).unwrap()
                );
                set.add(&yaml, Path::new("r.yaml")).unwrap();
                let rewritten = set.rules[0].exprs[0].references();
                assert!(rewritten.has_function(FUNCTION), "{form} is rewritten");
                assert!(!rewritten.has_function("matches"), "{form}");
                let mut ev = Evaluator::new(&set);
                for s in SUBJECTS {
                    let rec = serde_json::json!({"kind": "open", "path": s});
                    let mut ctx = cel::Context::default();
                    ctx.add_variable_from_value("path", *s);
                    let builtin = match set.rules[0].steps[0].execute(&ctx) {
                        Ok(cel::Value::Bool(true)) => Outcome::Yes,
                        Ok(cel::Value::Bool(false)) => Outcome::No,
                        _ => Outcome::Error,
                    };
                    assert_ne!(builtin, Outcome::Error, "{form} on {s:?}");
                    assert_eq!(ev.outcome(&rec, 0), builtin, "{form} on {s:?}");
                }
            }
        }
        // Not a string: an error, as the builtin's.
        let mut set = RuleSet::empty();
        set.add(
            "- id: n\n  description: d\n  severity: low\n  match: pid.matches('1')\n",
            Path::new("r.yaml"),
        )
        .unwrap();
        let mut ev = Evaluator::new(&set);
        assert_eq!(ev.outcome(&serde_json::json!({"kind": "open", "pid": 1}), 0), Outcome::Error);
        // A pattern made at run time keeps the builtin (and its error for a bad one).
        let mut set = RuleSet::empty();
        set.add(
            "- id: d\n  description: d\n  severity: low\n  match: path.matches(comm)\n",
            Path::new("r.yaml"),
        )
        .unwrap();
        assert!(set.rules[0].exprs[0].references().has_function("matches"));
        let mut ev = Evaluator::new(&set);
        assert_eq!(ev.outcome(&serde_json::json!({"path": "/a", "comm": "^/"}), 0), Outcome::Yes);
        assert_eq!(ev.outcome(&serde_json::json!({"path": "/a", "comm": "x"}), 0), Outcome::No);
        assert_eq!(ev.outcome(&serde_json::json!({"path": "/a", "comm": "["}), 0), Outcome::Error);
    }

    /// One table entry per distinct pattern, whatever the number of rules using it.
    #[test]
    fn a_pattern_is_compiled_once() {
        let mut set = RuleSet::empty();
        set.add(
            "- id: a\n  description: d\n  severity: low\n  match: path.matches('^/x') || comm.matches('^/x')\n\
             - id: b\n  description: d\n  severity: low\n  match: exe.matches('^/x') && path.matches('y$')\n",
            Path::new("r.yaml"),
        )
        .unwrap();
        assert_eq!(set.regexes.0.len(), 2);
    }

    /// An invalid literal pattern fails loading, naming the file, the rule, the pattern and the
    /// fix; Warden's own function name is not for rules.
    #[test]
    fn an_invalid_pattern_is_a_loading_error() {
        let mut set = RuleSet::empty();
        let e = set
            .add(
                "- id: environ\n  description: d\n  severity: low\n  match: kind == 'open' && path.matches('^/proc/[0-9+/environ$')\n",
                Path::new("rules/x.yaml"),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "rules/x.yaml: rule environ: match: matches(\"^/proc/[0-9+/environ$\"): not a valid regular expression: "
            ),
            "{e}"
        );
        assert!(e.contains("expression: unclosed character class; fix"), "{e}");
        assert!(e.contains("fix the pattern"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        let e = set
            .add(
                "- id: s\n  description: d\n  severity: low\n  sequence:\n    - match: kind == 'exec'\n    - match: matches(path, '(')\n  within: 5s\n",
                Path::new("y.yaml"),
            )
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("y.yaml: rule s: sequence[1].match: matches(\"(\"): not a valid"), "{e}");
        let e = set
            .add(
                "- id: own\n  description: d\n  severity: low\n  match: __warden_matches(path, 0)\n",
                Path::new("z.yaml"),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("`__warden_matches` is Warden's own"), "{e}");
        assert!(set.rules.is_empty());
    }
}
