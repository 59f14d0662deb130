//! What a condition needs of a record before it can be true, read from its CEL syntax tree
//! once, when the rules are compiled.
//!
//! `kind == "exec" && path in shells` can only be true for `kind` `exec`; `decision == "deny"`
//! only for refusals; `(kind == "connect" || kind == "sendmsg") && port == 53` only for those
//! two kinds and port 53. The engine checks these [`Needs`] (a few string or integer
//! comparisons) before running CEL, and indexes steps by the kinds they can match, so most
//! records run no expression at all.
//!
//! The analysis is sound, not complete: it only reads `&&`, `||`, `field == literal`,
//! `literal == field` and `field in [literals]` over documented fields, and treats everything
//! else (negation, functions, comprehensions, list variables) as "may match anything". Where a
//! [`Needs`] does not hold, CEL itself evaluates the condition to `false`, never to an error:
//! `field == literal` is a boolean for every record (every documented field is always bound),
//! `false && x` and `x && false` are `false` in CEL whatever `x` is, and an `||` is only
//! constrained where both sides are. So skipping changes neither findings nor the count of
//! expressions that failed to evaluate.
use cel::common::ast::{CallExpr, Expr, LiteralValue, operators};

use super::{INT_FIELDS, STRING_FIELDS};

/// A literal a field is compared with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lit {
    Str(String),
    Int(i64),
}

/// Necessary conditions of one expression: each listed field must equal one of its literals.
/// Empty: no condition known (it may match any record).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs(pub Vec<(&'static str, Vec<Lit>)>);

impl Needs {
    /// The literals `field` must be one of, if the expression constrains it.
    pub fn of(&self, field: &str) -> Option<&[Lit]> {
        self.0.iter().find(|(f, _)| *f == field).map(|(_, v)| v.as_slice())
    }

    fn single(field: &'static str, mut lits: Vec<Lit>) -> Self {
        lits.sort();
        lits.dedup();
        Needs(vec![(field, lits)])
    }

    /// Both must hold: every field of either, the intersection where both constrain it.
    fn and(self, other: Needs) -> Needs {
        let mut out = self.0;
        for (f, lits) in other.0 {
            match out.iter_mut().find(|(g, _)| *g == f) {
                Some((_, mine)) => mine.retain(|l| lits.contains(l)),
                None => out.push((f, lits)),
            }
        }
        out.sort_by_key(|(f, _)| *f);
        Needs(out)
    }

    /// Either may hold: only fields both constrain, with the union of their literals.
    fn or(self, other: Needs) -> Needs {
        let mut out = Vec::new();
        for (f, mut lits) in self.0 {
            if let Some((_, theirs)) = other.0.iter().find(|(g, _)| *g == f) {
                lits.extend(theirs.iter().cloned());
                lits.sort();
                lits.dedup();
                out.push((f, lits));
            }
        }
        Needs(out)
    }
}

/// A documented field named by `e`, with whether it is a string field.
fn field(e: &Expr) -> Option<(&'static str, bool)> {
    let Expr::Ident(name) = e else { return None };
    if let Some(f) = STRING_FIELDS.iter().find(|f| **f == name.as_str()) {
        return Some((f, true));
    }
    INT_FIELDS.iter().find(|f| **f == name.as_str()).map(|f| (*f, false))
}

/// `e` as a literal of the field's type (a string for string fields, an int for int fields).
fn literal(e: &Expr, string: bool) -> Option<Lit> {
    match (e, string) {
        (Expr::Literal(LiteralValue::String(s)), true) => Some(Lit::Str(s.inner().to_string())),
        (Expr::Literal(LiteralValue::Int(i)), false) => Some(Lit::Int(*i.inner())),
        _ => None,
    }
}

/// `field == literal` or `literal == field`.
fn equality(c: &CallExpr) -> Option<Needs> {
    let [a, b] = c.args.as_slice() else { return None };
    let ((f, string), other) = match (field(&a.expr), field(&b.expr)) {
        (Some(f), None) => (f, &b.expr),
        (None, Some(f)) => (f, &a.expr),
        _ => return None,
    };
    Some(Needs::single(f, vec![literal(other, string)?]))
}

/// `field in [literal, ...]`.
fn membership(c: &CallExpr) -> Option<Needs> {
    let [a, b] = c.args.as_slice() else { return None };
    let (f, string) = field(&a.expr)?;
    let Expr::List(list) = &b.expr else { return None };
    if !list.optional_indices.is_empty() {
        return None;
    }
    let lits = list.elements.iter().map(|e| literal(&e.expr, string)).collect::<Option<Vec<_>>>()?;
    Some(Needs::single(f, lits))
}

/// What `e` needs of a record to be true.
pub fn needs(e: &cel::IdedExpr) -> Needs {
    let Expr::Call(c) = &e.expr else { return Needs::default() };
    if c.target.is_some() {
        return Needs::default();
    }
    match (c.func_name.as_str(), c.args.as_slice()) {
        (operators::LOGICAL_AND, [a, b]) => needs(a).and(needs(b)),
        (operators::LOGICAL_OR, [a, b]) => needs(a).or(needs(b)),
        (operators::EQUALS, _) => equality(c).unwrap_or_default(),
        (operators::IN, _) => membership(c).unwrap_or_default(),
        _ => Needs::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(src: &str) -> Needs {
        needs(cel::Program::compile(src).unwrap().expression())
    }
    fn s(v: &[&str]) -> Vec<Lit> {
        v.iter().map(|x| Lit::Str(x.to_string())).collect()
    }

    #[test]
    fn reads_kinds_and_fields_an_expression_needs() {
        assert_eq!(n(r#"kind == "exec" && path in shells"#), Needs(vec![("kind", s(&["exec"]))]));
        assert_eq!(
            n(r#"(kind == "sendmsg" || kind == "connect") && port == 53 && !(addr in ok)"#),
            Needs(vec![("kind", s(&["connect", "sendmsg"])), ("port", vec![Lit::Int(53)])])
        );
        assert_eq!(n(r#""deny" == decision"#), Needs(vec![("decision", s(&["deny"]))]));
        assert_eq!(n(r#"kind in ["open", "exec"] && kind == "open""#), Needs(vec![("kind", s(&["open"]))]));
        assert_eq!(
            n(r#"(kind == "open" && path.matches("x")) || kind == "ptrace""#),
            Needs(vec![("kind", s(&["open", "ptrace"]))])
        );
    }

    #[test]
    fn anything_it_cannot_read_may_match_anything() {
        for src in [
            r#"kind != "exec""#,
            r#"!(kind == "exec")"#,
            r#"kind == "exec" || path.startsWith("/tmp")"#,
            r#"kind in shells"#,
            r#"kind == 5"#,
            r#"port == "53""#,
            r#"event.kind == "exec""#,
            r#"ancestry.exists(kind, kind == 1)"#,
            r#"kind.startsWith("e")"#,
            "true",
        ] {
            assert_eq!(n(src), Needs::default(), "{src}");
        }
    }
}
