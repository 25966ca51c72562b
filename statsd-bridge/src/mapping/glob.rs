//! Glob rules in a prefix tree over dot-separated components.
//!
//! A rule like `app.*.requests` is a path `app` → `*` → `requests`; the terminal node keeps
//! the lowest rule index per metric type. Matching walks literal edges before `*` edges and
//! prunes subtrees whose lowest rule index can't beat the best match so far, so its cost
//! follows the name's length, not the number of rules. With ordering (the default) the
//! lowest-index matching rule wins, as in statsd_exporter; with `glob_disable_ordering` the
//! first match found wins, literal components before wildcards.

use std::collections::HashMap;
use std::fmt::Write as _;

/// statsd_exporter's three match types: counter, gauge, observer.
pub const TYPES: usize = 3;

#[derive(Debug, Clone)]
struct Node {
    literal: HashMap<Box<str>, usize>,
    star: Option<usize>,
    /// Lowest rule index ending here, per metric type.
    terminal: [Option<u32>; TYPES],
    /// Lowest rule index anywhere below (or at) this node.
    min_rule: u32,
    /// Components still needed to reach any terminal below.
    min_rest: u16,
    max_rest: u16,
}

impl Node {
    fn new(rest: u16) -> Self {
        Self {
            literal: HashMap::new(),
            star: None,
            terminal: [None; TYPES],
            min_rule: u32::MAX,
            min_rest: rest,
            max_rest: rest,
        }
    }
}

/// The compiled glob rules.
#[derive(Debug, Clone)]
pub struct GlobTree {
    nodes: Vec<Node>,
    ordered: bool,
}

/// A match: the rule index and the text each `*` captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobMatch<'n> {
    /// Index of the rule in the mapping file.
    pub rule: u32,
    /// What each `*` matched, in order.
    pub captures: Vec<&'n str>,
}

impl GlobTree {
    /// An empty tree.
    pub fn new(ordered: bool) -> Self {
        Self {
            nodes: vec![Node::new(0)],
            ordered,
        }
    }

    /// Adds rule `rule` for `pattern`; `types` are the metric types it applies to.
    /// Returns the number of `*` captures.
    pub fn insert(&mut self, pattern: &str, rule: u32, types: &[usize]) -> usize {
        let parts: Vec<&str> = pattern.split('.').collect();
        let total = u16::try_from(parts.len()).unwrap_or(u16::MAX);
        let mut at = 0usize;
        self.touch(at, rule, total);
        for (i, part) in parts.iter().enumerate() {
            let rest = total.saturating_sub(u16::try_from(i + 1).unwrap_or(u16::MAX));
            let existing = if *part == "*" {
                self.nodes.get(at).and_then(|n| n.star)
            } else {
                self.nodes
                    .get(at)
                    .and_then(|n| n.literal.get(*part).copied())
            };
            let next = match existing {
                Some(next) => next,
                None => {
                    let next = self.nodes.len();
                    self.nodes.push(Node::new(rest));
                    if let Some(node) = self.nodes.get_mut(at) {
                        if *part == "*" {
                            node.star = Some(next);
                        } else {
                            node.literal.insert(Box::from(*part), next);
                        }
                    }
                    next
                }
            };
            at = next;
            self.touch(at, rule, rest);
        }
        if let Some(node) = self.nodes.get_mut(at) {
            for &t in types {
                if let Some(slot) = node.terminal.get_mut(t) {
                    *slot = Some(slot.map_or(rule, |r| r.min(rule)));
                }
            }
        }
        parts.iter().filter(|p| **p == "*").count()
    }

    fn touch(&mut self, at: usize, rule: u32, rest: u16) {
        if let Some(node) = self.nodes.get_mut(at) {
            node.min_rule = node.min_rule.min(rule);
            node.min_rest = node.min_rest.min(rest);
            node.max_rest = node.max_rest.max(rest);
        }
    }

    /// Finds the rule for `name` of metric type `t`.
    pub fn find<'n>(&self, name: &'n str, t: usize) -> Option<GlobMatch<'n>> {
        let parts: Vec<&'n str> = name.split('.').collect();
        let mut captures = Vec::with_capacity(4);
        let mut best: Option<GlobMatch<'n>> = None;
        self.walk(0, &parts, t, &mut captures, &mut best);
        best
    }

    fn walk<'n>(
        &self,
        at: usize,
        parts: &[&'n str],
        t: usize,
        captures: &mut Vec<&'n str>,
        best: &mut Option<GlobMatch<'n>>,
    ) -> bool {
        let Some(node) = self.nodes.get(at) else {
            return false;
        };
        let rest = u16::try_from(parts.len()).unwrap_or(u16::MAX);
        if rest < node.min_rest || rest > node.max_rest {
            return false;
        }
        if best.as_ref().is_some_and(|b| node.min_rule >= b.rule) {
            return false;
        }
        let Some((first, tail)) = parts.split_first() else {
            if let Some(rule) = node.terminal.get(t).copied().flatten()
                && best.as_ref().is_none_or(|b| rule < b.rule)
            {
                *best = Some(GlobMatch {
                    rule,
                    captures: captures.clone(),
                });
                return !self.ordered;
            }
            return false;
        };
        if let Some(&next) = node.literal.get(*first)
            && self.walk(next, tail, t, captures, best)
        {
            return true;
        }
        if let Some(next) = node.star {
            captures.push(first);
            let done = self.walk(next, tail, t, captures, best);
            captures.pop();
            if done {
                return true;
            }
        }
        false
    }

    /// The tree as Graphviz dot (`--debug.dump-fsm`).
    pub fn to_dot(&self, type_names: [&str; TYPES]) -> String {
        let mut out = String::from("digraph glob_rules {\n  rankdir=LR;\n  node [shape=circle];\n");
        for (i, node) in self.nodes.iter().enumerate() {
            let rules: Vec<String> = node
                .terminal
                .iter()
                .zip(type_names)
                // Numbered from 1, as `explain` numbers them.
                .filter_map(|(r, t)| r.map(|r| format!("{t}: rule #{}", r + 1)))
                .collect();
            if rules.is_empty() {
                let _ = writeln!(out, "  n{i} [label=\"\"];");
            } else {
                let _ = writeln!(
                    out,
                    "  n{i} [shape=doublecircle, label=\"{}\"];",
                    rules.join("\\n")
                );
            }
            let mut edges: Vec<(&str, usize)> =
                node.literal.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
            edges.sort();
            if let Some(star) = node.star {
                edges.push(("*", star));
            }
            for (label, to) in edges {
                let label = label.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = writeln!(out, "  n{i} -> n{to} [label=\"{label}\"];");
            }
        }
        out.push_str("}\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(ordered: bool, rules: &[&str]) -> GlobTree {
        let mut t = GlobTree::new(ordered);
        for (i, r) in rules.iter().enumerate() {
            t.insert(r, u32::try_from(i).unwrap(), &[0, 1, 2]);
        }
        t
    }

    fn find(t: &GlobTree, name: &str) -> Option<(u32, Vec<String>)> {
        t.find(name, 0)
            .map(|m| (m.rule, m.captures.iter().map(|s| s.to_string()).collect()))
    }

    #[test]
    fn first_matching_rule_wins_with_ordering() {
        let t = tree(true, &["a.*.c", "a.b.*", "a.b.c", "*.*.*"]);
        assert_eq!(find(&t, "a.b.c"), Some((0, vec!["b".into()])));
        assert_eq!(find(&t, "a.b.d"), Some((1, vec!["d".into()])));
        assert_eq!(
            find(&t, "x.y.z"),
            Some((3, vec!["x".into(), "y".into(), "z".into()]))
        );
        assert_eq!(find(&t, "a.b"), None);
        assert_eq!(find(&t, "a.b.c.d"), None);
    }

    #[test]
    fn disabled_ordering_prefers_literals() {
        let t = tree(false, &["a.*.c", "a.b.*", "a.b.c"]);
        assert_eq!(find(&t, "a.b.c").map(|m| m.0), Some(2));
        assert_eq!(find(&t, "a.x.c").map(|m| m.0), Some(0));
    }

    #[test]
    fn backtracks_when_the_literal_path_dead_ends() {
        let t = tree(true, &["a.b.c.d", "a.*.c.e"]);
        assert_eq!(find(&t, "a.b.c.e"), Some((1, vec!["b".into()])));
        let t = tree(false, &["a.b.c.d", "a.*.c.e"]);
        assert_eq!(find(&t, "a.b.c.e").map(|m| m.0), Some(1));
    }

    #[test]
    fn star_matches_one_component_even_empty() {
        let t = tree(true, &["a.*.c"]);
        assert_eq!(find(&t, "a..c"), Some((0, vec!["".into()])));
        assert_eq!(find(&t, "a.b.x.c"), None);
    }

    #[test]
    fn metric_types_are_separate() {
        let mut t = GlobTree::new(true);
        t.insert("a.*", 0, &[1]);
        t.insert("a.*", 1, &[0, 1, 2]);
        assert_eq!(t.find("a.x", 1).map(|m| m.rule), Some(0));
        assert_eq!(t.find("a.x", 0).map(|m| m.rule), Some(1));
    }

    #[test]
    fn dot_output_names_rules_and_edges() {
        let t = tree(true, &["a.*"]);
        let dot = t.to_dot(["counter", "gauge", "observer"]);
        assert!(
            dot.contains("label=\"a\"")
                && dot.contains("label=\"*\"")
                && dot.contains("counter: rule #1"),
            "{dot}"
        );
    }
}
