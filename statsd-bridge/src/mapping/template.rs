//! Glob rules' `$1`/`${1}` templates, read exactly as statsd_exporter reads them.
//!
//! statsd_exporter matches `\$\{?([a-zA-Z0-9_$]+)\}?`: the reference is as long as possible,
//! so `$1_total` names the (missing) capture `1_total` and renders empty; users write
//! `${1}_total`. A reference that is not a number from 1 to the rule's capture count also
//! renders empty. Keeping those quirks is what makes an existing mapping file give the same
//! series here.

/// A compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// 0-based index into the captures.
    Capture(usize),
}

fn is_ref_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

impl GlobTemplate {
    /// Compiles `text` for a rule with `captures` wildcards.
    pub fn parse(text: &str, captures: usize) -> Self {
        let bytes = text.as_bytes();
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut i = 0;
        let mut lit_start = 0;
        while i < bytes.len() {
            if bytes.get(i) != Some(&b'$') {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            if bytes.get(j) == Some(&b'{') {
                j += 1;
            }
            let start = j;
            while bytes.get(j).copied().is_some_and(is_ref_char) {
                j += 1;
            }
            if j == start {
                i += 1;
                continue;
            }
            let reference = text.get(start..j).unwrap_or("");
            if bytes.get(j) == Some(&b'}') {
                j += 1;
            }
            literal.push_str(text.get(lit_start..i).unwrap_or(""));
            if let Ok(n) = reference.parse::<usize>()
                && (1..=captures).contains(&n)
            {
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Capture(n - 1));
            }
            i = j;
            lit_start = j;
        }
        literal.push_str(text.get(lit_start..).unwrap_or(""));
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Self { parts }
    }

    /// Appends the rendering to `out`.
    pub fn render_into(&self, captures: &[&str], out: &mut String) {
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Capture(i) => out.push_str(captures.get(*i).copied().unwrap_or("")),
            }
        }
    }

    /// The rendering as a new string.
    pub fn render(&self, captures: &[&str]) -> String {
        let mut out = String::new();
        self.render_into(captures, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_follow_statsd_exporter() {
        let caps = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let cases = [
            ("plain_name", 2, "plain_name"),
            ("$1", 2, "a"),
            ("${1}", 2, "a"),
            ("${2}_total", 2, "b_total"),
            ("$1_total", 2, ""),  // `1_total` is one (missing) reference
            ("x_$1_$2", 2, "x_"), // `1_$2` is one reference: `$` is a reference char
            ("x_${1}_${2}", 2, "x_a_b"),
            ("pre.$1.post", 2, "pre.a.post"),
            ("$3", 2, ""), // past the capture count
            ("$0", 2, ""), // glob rules have no $0
            ("$10", 10, "j"),
            ("$10", 2, ""),
            ("cost: $", 2, "cost: $"), // a lone $ stays
            ("$$1", 2, ""),            // `$1` after `$` is part of one reference
            ("${1", 2, "a"),
            ("$1}", 2, "a"),
            ("${name}", 2, ""),
        ];
        for (text, n, want) in cases {
            assert_eq!(
                GlobTemplate::parse(text, n).render(&caps),
                want,
                "{text:?} with {n} captures"
            );
        }
    }
}
