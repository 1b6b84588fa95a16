//! Recursive-descent parser for filter conditions and action statements.
//!
//! Precedence, loosest first: `OR`, `AND`, `NOT`, the predicates (`= <> != < <= > >=`,
//! `IS [NOT] NULL`, `[NOT] IN`, `[NOT] LIKE`), `+ -`, `* / %`, unary `+ -`. Recursion goes one
//! level deeper only through `(`, `NOT`, a unary sign or a function argument, and each of those
//! is counted against [`Limits::max_depth`] before recursing, so no input can exhaust the
//! stack; the depth of the tree built is checked against the same limit.

use crate::ast::{Expr, PropRef};
use crate::error::{ParseError, ParseErrorKind as K};
use crate::lexer::{tokenize, Keyword as Kw, Sym, Tok, Token};
use crate::like::LikePattern;
use crate::value::{ArithOp, CmpOp};
use crate::{Limits, Parameters, SystemProperty, Value};

/// One statement of a rule action.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Statement {
    Set(PropRef, Expr),
    Remove(PropRef),
}

/// A parsed sub-expression with its tree depth and the position it starts at.
struct Node {
    expr: Expr,
    depth: usize,
    at: usize,
}

pub(crate) struct Parser<'a> {
    toks: Vec<Token>,
    pos: usize,
    params: &'a Parameters,
    limits: &'a Limits,
    nesting: usize,
}

type Result<T> = std::result::Result<T, ParseError>;

impl<'a> Parser<'a> {
    /// Checks the length limit and tokenizes.
    pub(crate) fn new(text: &str, params: &'a Parameters, limits: &'a Limits) -> Result<Self> {
        let limit = limits.max_expression_chars;
        if let Some((at, _)) = text.char_indices().nth(limit) {
            let position = text[..at].chars().count();
            return Err(ParseError::new(position, K::TooLong { limit }));
        }
        Ok(Parser {
            toks: tokenize(text)?,
            pos: 0,
            params,
            limits,
            nesting: 0,
        })
    }

    /// Parses a whole filter condition.
    pub(crate) fn condition(mut self) -> Result<Expr> {
        let node = self.or()?;
        self.expect_end("an operator or the end of the expression")?;
        need_condition(&node)?;
        Ok(node.expr)
    }

    /// Parses a whole action: statements separated by `;` and/or `,`.
    pub(crate) fn statements(mut self) -> Result<Vec<Statement>> {
        let mut out = Vec::new();
        loop {
            let at = self.at();
            let word = match self.peek() {
                Tok::Ident(w) if w.eq_ignore_ascii_case("SET") => "SET",
                Tok::Ident(w) if w.eq_ignore_ascii_case("REMOVE") => "REMOVE",
                _ => return Err(self.expected("SET or REMOVE")),
            };
            let limit = self.limits.max_action_statements;
            if out.len() == limit {
                return Err(ParseError::new(at, K::TooManyStatements { limit }));
            }
            self.bump();
            let target_at = self.at();
            let target = self.property()?;
            if word == "SET" {
                if let PropRef::System(p) = target {
                    if !p.settable() {
                        return Err(ParseError::new(target_at, K::ReadOnly(p.name())));
                    }
                }
                self.expect_sym(Sym::Eq, "'='")?;
                let value = self.or()?;
                need_value(&value)?;
                out.push(Statement::Set(target, value.expr));
            } else {
                if let PropRef::System(p) = target {
                    if !p.removable() {
                        return Err(ParseError::new(target_at, K::ReadOnly(p.name())));
                    }
                }
                out.push(Statement::Remove(target));
            }
            self.eat_sym(Sym::Semicolon);
            self.eat_sym(Sym::Comma);
            if self.peek() == &Tok::End {
                return Ok(out);
            }
        }
    }

    // ---- token helpers ----

    fn peek(&self) -> &Tok {
        &self.toks[self.pos].tok
    }

    fn peek2(&self) -> &Tok {
        &self.toks[(self.pos + 1).min(self.toks.len() - 1)].tok
    }

    fn at(&self) -> usize {
        self.toks[self.pos].at
    }

    fn bump(&mut self) {
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
    }

    fn eat_kw(&mut self, kw: Kw) -> bool {
        let hit = self.peek() == &Tok::Keyword(kw);
        if hit {
            self.bump();
        }
        hit
    }

    fn eat_sym(&mut self, sym: Sym) -> bool {
        let hit = self.peek() == &Tok::Sym(sym);
        if hit {
            self.bump();
        }
        hit
    }

    fn expected(&self, expected: &'static str) -> ParseError {
        ParseError::new(
            self.at(),
            K::Expected {
                expected,
                found: self.peek().describe(),
            },
        )
    }

    fn expect_sym(&mut self, sym: Sym, what: &'static str) -> Result<()> {
        if self.eat_sym(sym) {
            Ok(())
        } else {
            Err(self.expected(what))
        }
    }

    fn expect_end(&self, what: &'static str) -> Result<()> {
        match self.peek() {
            Tok::End => Ok(()),
            _ => Err(self.expected(what)),
        }
    }

    /// Goes one recursion level deeper, refusing past the depth limit.
    fn enter(&mut self, at: usize) -> Result<()> {
        self.nesting += 1;
        let limit = self.limits.max_depth;
        if self.nesting > limit {
            return Err(ParseError::new(at, K::TooDeep { limit }));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.nesting -= 1;
    }

    /// Builds a node, refusing a tree deeper than the limit.
    fn node(&self, expr: Expr, depth: usize, at: usize) -> Result<Node> {
        let limit = self.limits.max_depth;
        if depth > limit {
            return Err(ParseError::new(at, K::TooDeep { limit }));
        }
        Ok(Node { expr, depth, at })
    }

    // ---- grammar ----

    fn or(&mut self) -> Result<Node> {
        self.chain(Kw::Or, Self::and, Expr::Or)
    }

    fn and(&mut self) -> Result<Node> {
        self.chain(Kw::And, Self::not, Expr::And)
    }

    /// `operand (kw operand)*` as one n-ary node.
    fn chain(
        &mut self,
        kw: Kw,
        operand: fn(&mut Self) -> Result<Node>,
        build: fn(Vec<Expr>) -> Expr,
    ) -> Result<Node> {
        let first = operand(self)?;
        if self.peek() != &Tok::Keyword(kw) {
            return Ok(first);
        }
        need_condition(&first)?;
        let (at, mut depth) = (first.at, first.depth);
        let mut items = vec![first.expr];
        while self.eat_kw(kw) {
            let next = operand(self)?;
            need_condition(&next)?;
            depth = depth.max(next.depth);
            items.push(next.expr);
        }
        self.node(build(items), depth + 1, at)
    }

    fn not(&mut self) -> Result<Node> {
        let at = self.at();
        if !self.eat_kw(Kw::Not) {
            return self.predicate();
        }
        self.enter(at)?;
        let inner = self.not()?;
        self.leave();
        need_condition(&inner)?;
        self.node(Expr::Not(Box::new(inner.expr)), inner.depth + 1, at)
    }

    fn predicate(&mut self) -> Result<Node> {
        let left = self.additive()?;
        let op = match self.peek() {
            Tok::Sym(Sym::Eq) => CmpOp::Eq,
            Tok::Sym(Sym::Ne) => CmpOp::Ne,
            Tok::Sym(Sym::Lt) => CmpOp::Lt,
            Tok::Sym(Sym::Le) => CmpOp::Le,
            Tok::Sym(Sym::Gt) => CmpOp::Gt,
            Tok::Sym(Sym::Ge) => CmpOp::Ge,
            Tok::Keyword(Kw::Is) => {
                self.bump();
                let negated = self.eat_kw(Kw::Not);
                if !self.eat_kw(Kw::Null) {
                    return Err(self.expected("NULL"));
                }
                need_value(&left)?;
                let expr = Expr::IsNull {
                    expr: Box::new(left.expr),
                    negated,
                };
                return self.node(expr, left.depth + 1, left.at);
            }
            Tok::Keyword(Kw::Not) if matches!(self.peek2(), Tok::Keyword(Kw::In | Kw::Like)) => {
                self.bump();
                return self.in_or_like(left, true);
            }
            Tok::Keyword(Kw::In | Kw::Like) => return self.in_or_like(left, false),
            _ => return Ok(left),
        };
        self.bump();
        let right = self.additive()?;
        need_value(&left)?;
        need_value(&right)?;
        let depth = left.depth.max(right.depth) + 1;
        let expr = Expr::Compare(op, Box::new(left.expr), Box::new(right.expr));
        self.node(expr, depth, left.at)
    }

    fn in_or_like(&mut self, left: Node, negated: bool) -> Result<Node> {
        need_value(&left)?;
        if self.eat_kw(Kw::In) {
            self.expect_sym(Sym::LParen, "'('")?;
            let mut depth = left.depth;
            let mut list = Vec::new();
            loop {
                let item = self.additive()?;
                need_value(&item)?;
                depth = depth.max(item.depth);
                list.push(item.expr);
                if !self.eat_sym(Sym::Comma) {
                    break;
                }
            }
            self.expect_sym(Sym::RParen, "',' or ')'")?;
            let expr = Expr::In {
                expr: Box::new(left.expr),
                list,
                negated,
            };
            return self.node(expr, depth + 1, left.at);
        }
        self.eat_kw(Kw::Like);
        let pattern = self.additive()?;
        need_value(&pattern)?;
        let escape = if self.eat_kw(Kw::Escape) {
            let e = self.additive()?;
            need_value(&e)?;
            Some(e)
        } else {
            None
        };
        let compiled = compile_constant(&pattern, escape.as_ref())?;
        let depth = [Some(&left), Some(&pattern), escape.as_ref()]
            .into_iter()
            .flatten()
            .map(|n| n.depth)
            .max()
            .unwrap_or(0);
        let expr = Expr::Like {
            expr: Box::new(left.expr),
            pattern: Box::new(pattern.expr),
            escape: escape.map(|e| Box::new(e.expr)),
            compiled,
            negated,
        };
        self.node(expr, depth + 1, left.at)
    }

    fn additive(&mut self) -> Result<Node> {
        self.binary(Self::multiplicative, |t| match t {
            Tok::Sym(Sym::Plus) => Some(ArithOp::Add),
            Tok::Sym(Sym::Minus) => Some(ArithOp::Sub),
            _ => None,
        })
    }

    fn multiplicative(&mut self) -> Result<Node> {
        self.binary(Self::unary, |t| match t {
            Tok::Sym(Sym::Star) => Some(ArithOp::Mul),
            Tok::Sym(Sym::Slash) => Some(ArithOp::Div),
            Tok::Sym(Sym::Percent) => Some(ArithOp::Rem),
            _ => None,
        })
    }

    /// A left-associative chain of arithmetic operators.
    fn binary(
        &mut self,
        operand: fn(&mut Self) -> Result<Node>,
        op_of: fn(&Tok) -> Option<ArithOp>,
    ) -> Result<Node> {
        let mut left = operand(self)?;
        while let Some(op) = op_of(self.peek()) {
            self.bump();
            let right = operand(self)?;
            need_value(&left)?;
            need_value(&right)?;
            let depth = left.depth.max(right.depth) + 1;
            let expr = Expr::Arith(op, Box::new(left.expr), Box::new(right.expr));
            left = self.node(expr, depth, left.at)?;
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Node> {
        let at = self.at();
        let negate = match self.peek() {
            Tok::Sym(Sym::Minus) => true,
            Tok::Sym(Sym::Plus) => false,
            _ => return self.primary(),
        };
        self.bump();
        if negate {
            // A sign directly before a number is part of the constant (this is how
            // -9223372036854775808 is written).
            match *self.peek() {
                Tok::Int(n) => {
                    self.bump();
                    let v = i64::try_from(-i128::from(n)).expect("lexer bounds integers");
                    return self.node(Expr::Const(Value::Long(v)), 1, at);
                }
                Tok::Double(x) => {
                    self.bump();
                    return self.node(Expr::Const(Value::Double(-x)), 1, at);
                }
                _ => {}
            }
        }
        self.enter(at)?;
        let inner = self.unary()?;
        self.leave();
        need_value(&inner)?;
        let expr = if negate {
            Expr::Neg(Box::new(inner.expr))
        } else {
            Expr::Plus(Box::new(inner.expr))
        };
        self.node(expr, inner.depth + 1, at)
    }

    fn primary(&mut self) -> Result<Node> {
        let at = self.at();
        let leaf = |expr| Ok(Node { expr, depth: 1, at });
        match self.peek().clone() {
            Tok::Sym(Sym::LParen) => {
                self.bump();
                self.enter(at)?;
                let inner = self.or()?;
                self.expect_sym(Sym::RParen, "')'")?;
                self.leave();
                Ok(Node { at, ..inner })
            }
            Tok::Int(n) => {
                let n = i64::try_from(n).map_err(|_| ParseError::new(at, K::NumberOutOfRange))?;
                self.bump();
                leaf(Expr::Const(Value::Long(n)))
            }
            Tok::Double(x) => {
                self.bump();
                leaf(Expr::Const(Value::Double(x)))
            }
            Tok::Str(s) => {
                self.bump();
                leaf(Expr::Const(Value::String(s)))
            }
            Tok::Keyword(kw @ (Kw::True | Kw::False | Kw::Null)) => {
                self.bump();
                leaf(Expr::Const(match kw {
                    Kw::True => Value::Bool(true),
                    Kw::False => Value::Bool(false),
                    _ => Value::Null,
                }))
            }
            Tok::Keyword(Kw::Exists) => {
                self.bump();
                self.expect_sym(Sym::LParen, "'('")?;
                let prop = self.property()?;
                self.expect_sym(Sym::RParen, "')'")?;
                leaf(Expr::Exists(prop))
            }
            Tok::Param(name) => {
                let value = self
                    .params
                    .get(&name)
                    .ok_or_else(|| ParseError::new(at, K::UnknownParameter(name.clone())))?
                    .clone();
                self.bump();
                leaf(Expr::Param { name, value })
            }
            Tok::Ident(name) if self.peek2() == &Tok::Sym(Sym::LParen) => self.function(&name),
            Tok::Ident(_) | Tok::Delimited(_) => leaf(Expr::Prop(self.property()?)),
            _ => Err(self.expected("a value")),
        }
    }

    fn function(&mut self, name: &str) -> Result<Node> {
        let at = self.at();
        self.bump();
        self.bump(); // '('
        if name.eq_ignore_ascii_case("newid") {
            self.expect_sym(Sym::RParen, "')'")?;
            return self.node(Expr::NewId, 1, at);
        }
        if !(name.eq_ignore_ascii_case("property") || name.eq_ignore_ascii_case("p")) {
            return Err(ParseError::new(at, K::UnknownFunction(name.to_owned())));
        }
        self.enter(at)?;
        let arg = self.or()?;
        self.expect_sym(Sym::RParen, "')'")?;
        self.leave();
        need_value(&arg)?;
        if let Expr::Const(Value::String(s))
        | Expr::Param {
            value: Value::String(s),
            ..
        } = &arg.expr
        {
            PropRef::from_text(s)
                .map_err(|name| ParseError::new(arg.at, K::UnknownSystemProperty(name)))?;
        }
        self.node(Expr::PropertyFn(Box::new(arg.expr)), arg.depth + 1, at)
    }

    /// `[scope .] name`, scope `sys` or `user` (case-insensitive), either part delimited or not.
    fn property(&mut self) -> Result<PropRef> {
        let at = self.at();
        let first = match self.peek() {
            Tok::Ident(s) | Tok::Delimited(s) => s.clone(),
            _ => return Err(self.expected("a property name")),
        };
        self.bump();
        if !self.eat_sym(Sym::Dot) {
            return Ok(PropRef::User(first));
        }
        let name_at = self.at();
        let name = match self.peek() {
            Tok::Ident(s) | Tok::Delimited(s) => s.clone(),
            _ => return Err(self.expected("a property name")),
        };
        self.bump();
        if first.eq_ignore_ascii_case("sys") {
            SystemProperty::from_name(&name)
                .map(PropRef::System)
                .ok_or_else(|| ParseError::new(name_at, K::UnknownSystemProperty(name)))
        } else if first.eq_ignore_ascii_case("user") {
            Ok(PropRef::User(name))
        } else {
            Err(ParseError::new(at, K::UnknownScope(first)))
        }
    }
}

fn need_condition(node: &Node) -> Result<()> {
    match node.expr.shape() {
        crate::ast::Shape::Value => Err(ParseError::new(node.at, K::ExpectedCondition)),
        _ => Ok(()),
    }
}

fn need_value(node: &Node) -> Result<()> {
    match node.expr.shape() {
        crate::ast::Shape::Condition => Err(ParseError::new(node.at, K::ExpectedValue)),
        _ => Ok(()),
    }
}

/// The constant string of a constant or parameter node; `Err` for a constant of another kind.
fn constant_text(node: &Node) -> Result<Option<Option<&str>>> {
    match &node.expr {
        Expr::Const(v) | Expr::Param { value: v, .. } => match v {
            Value::String(s) => Ok(Some(Some(s))),
            Value::Null => Ok(Some(None)),
            _ => Err(ParseError::new(
                node.at,
                K::BadPattern("pattern and escape must be strings"),
            )),
        },
        _ => Ok(None),
    }
}

/// Compiles a `LIKE` pattern whose pattern and escape are both constant strings.
fn compile_constant(
    pattern: &Node,
    escape: Option<&Node>,
) -> Result<Option<std::sync::Arc<LikePattern>>> {
    let Some(Some(text)) = constant_text(pattern)? else {
        return Ok(None);
    };
    let escape = match escape {
        None => None,
        Some(node) => match constant_text(node)? {
            Some(Some(e)) => Some(
                LikePattern::escape_char(e)
                    .map_err(|why| ParseError::new(node.at, K::BadPattern(why)))?,
            ),
            _ => return Ok(None),
        },
    };
    LikePattern::compile(text, escape)
        .map(|p| Some(std::sync::Arc::new(p)))
        .map_err(|why| ParseError::new(pattern.at, K::BadPattern(why)))
}
