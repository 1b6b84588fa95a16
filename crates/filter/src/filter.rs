//! The four filter kinds, rules, and what a subscription does with a message: which copies it
//! keeps and which changes each copy gets.

use crate::{
    Change, CorrelationFilter, EvalError, Limits, Message, Parameters, ParseError, SqlAction,
    SqlFilter,
};

/// A subscription rule's filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Matches every message.
    True,
    /// Matches no message.
    False,
    /// A SQL condition.
    Sql(SqlFilter),
    /// Equality on correlation fields.
    Correlation(CorrelationFilter),
}

impl Filter {
    /// A filter from SQL text as `add-rule` carries it. The SDKs send the true and false
    /// filters as `1=1` and `1=0`; those texts (ignoring whitespace) become [`Filter::True`] and
    /// [`Filter::False`], so `enumerate-rules` can describe them as such.
    pub fn sql(text: &str, parameters: &Parameters) -> Result<Filter, ParseError> {
        Self::sql_with_limits(text, parameters, &Limits::default())
    }

    /// [`Filter::sql`] under the given limits.
    pub fn sql_with_limits(
        text: &str,
        parameters: &Parameters,
        limits: &Limits,
    ) -> Result<Filter, ParseError> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        match compact.as_str() {
            "1=1" => Ok(Filter::True),
            "1=0" => Ok(Filter::False),
            _ => SqlFilter::parse_with_limits(text, parameters, limits).map(Filter::Sql),
        }
    }

    /// Whether the message matches. Only SQL filters can fail.
    pub fn matches(&self, msg: &dyn Message) -> Result<bool, EvalError> {
        match self {
            Filter::True => Ok(true),
            Filter::False => Ok(false),
            Filter::Sql(f) => f.matches(msg),
            Filter::Correlation(f) => Ok(f.matches(msg)),
        }
    }
}

/// A named rule: a filter and, optionally, an action for the copies it selects.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The rule's name (unique within its subscription).
    pub name: String,
    /// Which messages the rule selects.
    pub filter: Filter,
    /// What to change on the copy of a selected message.
    pub action: Option<SqlAction>,
}

/// The name of the rule every new subscription gets.
pub const DEFAULT_RULE_NAME: &str = "$Default";

impl Rule {
    /// The rule a subscription created without rules gets: `$Default`, true filter, no action.
    pub fn default_rule() -> Rule {
        Rule {
            name: DEFAULT_RULE_NAME.to_owned(),
            filter: Filter::True,
            action: None,
        }
    }
}

/// What a subscription does with one message from its topic (see [`select`]).
#[derive(Debug, Default, PartialEq)]
pub struct Selection<'r> {
    /// Keep one unchanged copy: some rule without an action matched.
    pub plain: bool,
    /// Keep one more copy per matching rule with an action, with that action's changes. Service
    /// Bus also marks each such copy with a `RuleName` property naming the rule; that is the
    /// broker's to add.
    pub with_actions: Vec<(&'r Rule, Vec<Change>)>,
    /// Rules whose filter or action failed on this message. Service Bus dead-letters the
    /// message in the subscription for this when `EnableDeadLetteringOnFilterEvaluationExceptions`
    /// is set, and otherwise treats the rule as not matching.
    pub errors: Vec<(&'r Rule, EvalError)>,
}

impl Selection<'_> {
    /// How many copies the subscription stores.
    pub fn copies(&self) -> usize {
        usize::from(self.plain) + self.with_actions.len()
    }
}

/// Runs a subscription's rules on a message. All matching rules without an action together
/// give one plain copy (once one has matched, the others are not evaluated); each matching rule
/// with an action gives its own copy.
pub fn select<'r>(rules: &'r [Rule], msg: &dyn Message) -> Selection<'r> {
    let mut out = Selection::default();
    for rule in rules {
        if rule.action.is_none() && out.plain {
            continue;
        }
        match rule.filter.matches(msg) {
            Ok(false) => {}
            Ok(true) => match &rule.action {
                None => out.plain = true,
                Some(action) => match action.apply(msg) {
                    Ok(changes) => out.with_actions.push((rule, changes)),
                    Err(e) => out.errors.push((rule, e)),
                },
            },
            Err(e) => out.errors.push((rule, e)),
        }
    }
    out
}
