//! Go `text/template` with prometheus-adapter's `<<` `>>` delimiters: the subset rules use.
//!
//! prometheus-adapter compiles every `metricsQuery` and `resources.template` with
//! `template.New(name).Delims("<<", ">>").Parse(..)` and no extra functions. A user moving a
//! config here expects the same bytes out, so this module follows Go's three stages (lexer,
//! parser, executor) closely, messages included, for the part of the language configs use.
//! Whatever lies outside that part is an error (at parse time wherever the source shows it),
//! never a silent difference.
//!
//! Supported: text and actions; `<<- ` / ` ->>` trimming; `<</* */>>` comments; fields and
//! chains (`.Series`, `.LabelValuesByName.pod`, `$.Series`, `(pipeline).Field`); `.`; `$`,
//! `$x`; `$x :=` and `$x =`; `|` pipelines and parentheses; `"…"`, `` `…` ``, integer,
//! `true`, `false` and `nil` literals; `if`/`else if`/`else`, `with`/`else with`/`else`,
//! `range` (`$v :=`, `$i, $v :=`, `else`, `break`, `continue`); the builtins `and or not len
//! index eq ne lt le gt ge print println printf` (printf verbs `%s %v %d %q %%`).
//!
//! Rejected although Go accepts them: `define`, `template`, `block`; the builtins `call`,
//! `html`, `js`, `slice`, `urlquery`; floating-point, complex and character constants;
//! printf flags, widths and other verbs; string literals whose escapes are not UTF-8; and,
//! at render, printing the data value itself and `range` over an integer (output would stop
//! being bounded by the input). Identifier letters and `%q`'s printable test use Rust's Unicode tables,
//! which match Go's exactly for ASCII.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::panic
)]

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// A value the caller supplies for one top-level field.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A Go `string` (`Series`, `LabelMatchers`, `GroupBy`, `Resource`).
    Str(String),
    /// A Go `[]string` (`GroupBySlice`).
    List(Vec<String>),
    /// A Go `map[string]string` (`LabelValuesByName`); Go prints and ranges it in key order.
    Map(BTreeMap<String, String>),
    /// A Go `int`.
    Int(i64),
}

/// The data a template renders against: top-level fields by name.
pub type Data = BTreeMap<&'static str, Value>;

/// Deepest nesting of blocks and parentheses a template may have, so a hostile config
/// cannot overflow the stack of the parser or the executor.
pub const MAX_DEPTH: usize = 100;
/// Largest output (and largest string built by `print*`) a render may produce.
pub const MAX_OUTPUT: usize = 8 << 20;
/// Evaluation steps (nodes walked plus commands run) one render may take; nested `range`s
/// over large lists are the only way to get near it.
pub const MAX_STEPS: usize = 1 << 22;

const LEFT_DELIM: &str = "<<";
const RIGHT_DELIM: &str = ">>";

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    root: Vec<Node>,
    fields: BTreeSet<String>,
}

impl Template {
    /// Parses `src` as Go would with `Delims("<<", ">>")` and no extra functions.
    pub fn parse(src: &str) -> Result<Template, TemplateError> {
        let root = Parser::new(src).parse()?;
        let mut fields = BTreeSet::new();
        collect_fields(&root, true, &mut fields);
        Ok(Template {
            source: src.to_owned(),
            root,
            fields,
        })
    }

    /// Executes the template against `data`, as Go's `Execute` would with a struct whose
    /// fields are `data`'s keys.
    pub fn render(&self, data: &Data) -> Result<String, TemplateError> {
        let mut exec = Exec {
            src: &self.source,
            data,
            out: String::new(),
            vars: vec![("$", Val::Root)],
            steps: 0,
        };
        exec.walk(&Val::Root, &self.root)?;
        Ok(exec.out)
    }

    /// Top-level fields referenced anywhere (e.g. {"Series","LabelMatchers"}), to validate a
    /// rule at load. Counts `.X` where dot is the data and `$.X`; fields reached through a
    /// variable bound to the data are still caught by `render`.
    pub fn fields(&self) -> BTreeSet<String> {
        self.fields.clone()
    }

    /// The text the template was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why a template did not parse or render. Line and column locate `offset` (1-based line;
/// column counted in bytes from 0, as Go's executor reports it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The source is not a template Go accepts, or uses something outside the subset.
    #[error("template: {line}:{column}: {kind}")]
    Parse {
        /// Byte offset of the problem in the source.
        offset: usize,
        /// 1-based line of `offset`.
        line: usize,
        /// Bytes between the start of the line and `offset`.
        column: usize,
        /// What is wrong, in Go's words where Go has them.
        kind: ParseErrorKind,
    },
    /// Executing the template against the data failed.
    #[error("template: {line}:{column}: executing at <{context}>: {kind}")]
    Render {
        /// Byte offset of the node being executed.
        offset: usize,
        /// 1-based line of `offset`.
        line: usize,
        /// Bytes between the start of the line and `offset`.
        column: usize,
        /// The source text of that node.
        context: String,
        /// What went wrong, in Go's words where Go has them.
        kind: RenderErrorKind,
    },
}

impl TemplateError {
    /// Byte offset in the source that the error points at.
    pub fn offset(&self) -> Option<usize> {
        match self {
            TemplateError::Parse { offset, .. } | TemplateError::Render { offset, .. } => {
                Some(*offset)
            }
        }
    }

    fn parse(src: &str, offset: usize, kind: ParseErrorKind) -> Self {
        let (line, column) = line_col(src, offset);
        TemplateError::Parse {
            offset,
            line,
            column,
            kind,
        }
    }
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// `<<` without a matching `>>`.
    #[error("unclosed action")]
    UnclosedAction,
    /// `<</*` without `*/`.
    #[error("unclosed comment")]
    UnclosedComment,
    /// Something between `*/` and `>>`.
    #[error("comment ends before closing delimiter")]
    CommentEndsBeforeDelimiter,
    /// `(` without `)` before `>>`.
    #[error("unclosed left paren")]
    UnclosedLeftParen,
    /// `)` without `(`.
    #[error("unexpected right paren")]
    UnexpectedRightParen,
    /// `:` not followed by `=`.
    #[error("expected :=")]
    ExpectedDeclare,
    /// `"` without its closing quote on the same line.
    #[error("unterminated quoted string")]
    UnterminatedString,
    /// `` ` `` without its closing quote.
    #[error("unterminated raw quoted string")]
    UnterminatedRawString,
    /// `'` without its closing quote.
    #[error("unterminated character constant")]
    UnterminatedCharConstant,
    /// A character that cannot follow a word (e.g. `-` in `.Series-x`).
    #[error("bad character {}", go_unicode(.ch))]
    BadCharacter {
        /// The character.
        ch: char,
    },
    /// A character that starts no token.
    #[error("unrecognized character in action: {}", go_unicode(.ch))]
    UnrecognizedCharacter {
        /// The character.
        ch: char,
    },
    /// A number the lexer cannot scan (`3x`).
    #[error("bad number syntax: {}", go_quote(.text))]
    BadNumber {
        /// The number as written.
        text: String,
    },
    /// A number that is no number at all (`+`).
    #[error("illegal number syntax: {}", go_quote(.text))]
    IllegalNumber {
        /// The number as written.
        text: String,
    },
    /// An integer outside Go's `int`.
    #[error("integer overflow: {}", go_quote(.text))]
    IntegerOverflow {
        /// The number as written.
        text: String,
    },
    /// A string literal with a bad escape.
    #[error("invalid syntax")]
    InvalidString,
    /// A token where it cannot go.
    #[error("unexpected {found} in {context}")]
    Unexpected {
        /// The token, as Go describes it (`"#"`, `<end>`, `EOF`).
        found: String,
        /// Where it was found (`operand`, `command`, `if`, …).
        context: &'static str,
    },
    /// `<<end>>` or `<<else>>` outside any block.
    #[error("unexpected {{{{{keyword}}}}}")]
    UnexpectedKeyword {
        /// `end` or `else`.
        keyword: &'static str,
    },
    /// A block still open at the end of the source.
    #[error("unexpected EOF")]
    UnexpectedEof,
    /// A second `<<else>>` in one block.
    #[error("expected end; found {{{{else}}}}")]
    ExpectedEnd,
    /// A function Go does not have (prometheus-adapter adds none).
    #[error("function {} not defined", go_quote(.name))]
    FunctionNotDefined {
        /// The name used.
        name: String,
    },
    /// A variable used before it is declared.
    #[error("undefined variable {}", go_quote(.name))]
    UndefinedVariable {
        /// The variable, with its `$`.
        name: String,
    },
    /// A field access on a literal (`"a".Foo`).
    #[error("unexpected . after term {}", go_quote(.term))]
    DotAfterTerm {
        /// The literal as written.
        term: String,
    },
    /// A pipeline with no command (`<<if>>`).
    #[error("missing value for {context}")]
    MissingValue {
        /// `command`, `if`, `range`, …
        context: &'static str,
    },
    /// A command with no operand (`<<.A | | .B>>`).
    #[error("empty command")]
    EmptyCommand,
    /// A literal after `|`, which cannot take the piped value.
    #[error("non executable command in pipeline stage {stage}")]
    NonExecutableCommand {
        /// 1-based position of the command in the pipeline.
        stage: usize,
    },
    /// `range $a, <not a variable>`.
    #[error("range can only initialize variables")]
    RangeOnlyVariables,
    /// `$a, $b :=` outside `range`, or three variables.
    #[error("too many declarations in {context}")]
    TooManyDeclarations {
        /// Where.
        context: &'static str,
    },
    /// `<<break>>` or `<<continue>>` outside `range`.
    #[error("{{{{{keyword}}}}} outside {{{{range}}}}")]
    OutsideRange {
        /// `break` or `continue`.
        keyword: &'static str,
    },
    /// Blocks or parentheses nested deeper than [`MAX_DEPTH`].
    #[error("nesting deeper than {limit} levels")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// Go accepts this, this subset does not (no prometheus-adapter config needs it).
    #[error("{what} is not supported")]
    Unsupported {
        /// The construct.
        what: &'static str,
    },
    /// A Go builtin outside the subset.
    #[error("function {} is not supported", go_quote(.name))]
    UnsupportedFunction {
        /// The builtin.
        name: String,
    },
    /// A printf format outside `%s %v %d %q %%`.
    #[error("printf format {} is not supported (only %s, %v, %d, %q and %% without flags)", go_quote(.format))]
    UnsupportedFormat {
        /// The format.
        format: String,
    },
}

/// Why executing a template failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderErrorKind {
    /// The data has no such field; Go reports the struct's type name after this.
    #[error("can't evaluate field {field}")]
    MissingField {
        /// The field.
        field: String,
    },
    /// A field access on a value that has no fields.
    #[error("can't evaluate field {field} in type {ty}")]
    FieldOfNonStruct {
        /// The field.
        field: String,
        /// The value's type.
        ty: GoType,
    },
    /// `.Series "x"`.
    #[error("{field} has arguments but cannot be invoked as function")]
    FieldHasArguments {
        /// The field.
        field: String,
    },
    /// `.Map.key "x"`.
    #[error("{field} is not a method but has arguments")]
    MapKeyHasArguments {
        /// The key.
        field: String,
    },
    /// Arguments given to a value that is not a function.
    #[error("can't give argument to non-function {node}")]
    NotAFunction {
        /// The value as written.
        node: String,
    },
    /// `<<nil>>`.
    #[error("nil is not a command")]
    NilCommand,
    /// A variable not in scope where it runs.
    #[error("undefined variable: {name}")]
    UndefinedVariable {
        /// The variable, with its `$`.
        name: String,
    },
    /// Wrong number of arguments to a fixed-arity builtin.
    #[error("wrong number of args for {func}: want {want} got {got}")]
    WrongArgCount {
        /// The builtin.
        func: &'static str,
        /// Its arity.
        want: usize,
        /// Arguments given, counting a piped value.
        got: usize,
    },
    /// Too few arguments to a variadic builtin.
    #[error("wrong number of args for {func}: want at least {want} got {got}")]
    TooFewArgs {
        /// The builtin.
        func: &'static str,
        /// Its fixed parameters.
        want: usize,
        /// Arguments given, not counting a piped value (as Go counts).
        got: usize,
    },
    /// A builtin returned an error.
    #[error("error calling {func}: {error}")]
    Call {
        /// The builtin.
        func: &'static str,
        /// Its error.
        error: CallError,
    },
    /// printf's format is not a string.
    #[error("wrong type for value; expected {expected}; got {got}")]
    WrongType {
        /// The parameter's type.
        expected: &'static str,
        /// The argument's type.
        got: GoType,
    },
    /// printf's format is a missing map key.
    #[error("invalid value; expected {expected}")]
    InvalidValue {
        /// The parameter's type.
        expected: &'static str,
    },
    /// printf's format is `nil`.
    #[error("cannot assign nil to {to}")]
    NilArgument {
        /// The parameter's type.
        to: &'static str,
    },
    /// printf's format is a literal of another type.
    #[error("expected string; found {found}")]
    ExpectedString {
        /// The literal as written.
        found: String,
    },
    /// `range` over something that is not a list or map.
    #[error("range can't iterate over {value}")]
    CannotRange {
        /// The value, printed.
        value: String,
    },
    /// Printing the data value itself (Go prints the struct; this subset has no field order).
    #[error("can't print the template data itself")]
    PrintData,
    /// A printf format computed at run time, outside `%s %v %d %q %%`.
    #[error("printf format {} is not supported (only %s, %v, %d, %q and %% without flags)", go_quote(.format))]
    UnsupportedFormat {
        /// The format.
        format: String,
    },
    /// The output would exceed [`MAX_OUTPUT`].
    #[error("output exceeds {limit} bytes")]
    OutputTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The render would take more than [`MAX_STEPS`].
    #[error("evaluation exceeds {limit} steps")]
    TooManySteps {
        /// The limit.
        limit: usize,
    },
}

/// An error a builtin returned (Go's message after `error calling <func>:`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// `eq` with one argument.
    #[error("missing argument for comparison")]
    MissingComparisonArgument,
    /// Ordering something that has no order.
    #[error("invalid type for comparison")]
    BadComparisonType,
    /// Comparing values of different types.
    #[error("incompatible types for comparison: {left} and {right}")]
    IncompatibleTypes {
        /// Left type.
        left: GoType,
        /// Right type.
        right: GoType,
    },
    /// `eq` on a list and a map.
    #[error("non-comparable types {left}: {left_type}, {right_type}: {right}")]
    NonComparableTypes {
        /// Left value, printed.
        left: Box<str>,
        /// Left type.
        left_type: GoType,
        /// Right type.
        right_type: GoType,
        /// Right value, printed.
        right: Box<str>,
    },
    /// `eq` on two lists or two maps.
    #[error("non-comparable type {value}: {ty}")]
    NonComparableType {
        /// The value, printed.
        value: Box<str>,
        /// Its type.
        ty: GoType,
    },
    /// `index nil`.
    #[error("index of untyped nil")]
    IndexOfNil,
    /// `index .List nil`.
    #[error("cannot index slice/array with nil")]
    IndexWithNil,
    /// `index .List "a"`.
    #[error("cannot index slice/array with type {ty}")]
    IndexWithType {
        /// The index's type.
        ty: GoType,
    },
    /// An index below 0 or above the length.
    #[error("index out of range: {index}")]
    IndexOutOfRange {
        /// The index.
        index: i64,
    },
    /// An index equal to the length (Go's reflect panics, and the panic is the message).
    #[error("reflect: {kind} index out of range")]
    ReflectIndexOutOfRange {
        /// `slice` or `string`.
        kind: &'static str,
    },
    /// `index` on a value that has no elements.
    #[error("can't index item of type {ty}")]
    CannotIndex {
        /// The value's type.
        ty: GoType,
    },
    /// `index .Map nil`.
    #[error("value is nil; should be of type string")]
    NilKey,
    /// `index .Map 1`.
    #[error("value has type {ty}; should be string")]
    KeyType {
        /// The key's type.
        ty: GoType,
    },
    /// `len` of a value without a length.
    #[error("len of type {ty}")]
    LenOfType {
        /// The value's type.
        ty: GoType,
    },
    /// `len` of a missing value (Go's reflect panics, and the panic is the message).
    #[error("reflect: call of reflect.Value.Type on zero Value")]
    LenOfNil,
}

/// Go's name for a value's type, as its messages print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoType {
    /// `string`.
    String,
    /// `[]string`.
    StringSlice,
    /// `map[string]string`.
    StringMap,
    /// `int`.
    Int,
    /// `uint8`, a byte of an indexed string.
    Uint8,
    /// `bool`.
    Bool,
    /// The data itself (Go names the caller's struct type).
    Data,
    /// A missing value or `nil`.
    Nil,
}

impl std::fmt::Display for GoType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GoType::String => "string",
            GoType::StringSlice => "[]string",
            GoType::StringMap => "map[string]string",
            GoType::Int => "int",
            GoType::Uint8 => "uint8",
            GoType::Bool => "bool",
            GoType::Data => "data",
            GoType::Nil => "<nil>",
        })
    }
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = src.get(..offset).unwrap_or(src);
    let line = 1 + before.matches('\n').count();
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1);
    (line, column)
}

// ---------------------------------------------------------------------------------------
// Lexer (Go's text/template/parse/lex.go, pulled by the parser one item at a time)
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kw {
    Block,
    Break,
    Continue,
    Define,
    Else,
    End,
    If,
    Nil,
    Range,
    Template,
    With,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LexError {
    UnclosedAction,
    UnclosedComment,
    CommentEndsBeforeDelimiter,
    UnclosedLeftParen,
    UnexpectedRightParen,
    ExpectedDeclare,
    UnterminatedString,
    UnterminatedRawString,
    UnterminatedCharConstant,
    BadCharacter(char),
    UnrecognizedCharacter(char),
    BadNumber,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Error(LexError),
    Bool,
    Char,
    CharConstant,
    Complex,
    Assign,
    Declare,
    Eof,
    Field,
    Identifier,
    LeftDelim,
    LeftParen,
    Number,
    Pipe,
    RawString,
    RightDelim,
    RightParen,
    Space,
    String,
    Text,
    Variable,
    Dot,
    Keyword(Kw),
}

#[derive(Debug, Clone, Copy)]
struct Item {
    tok: Tok,
    pos: usize,
    end: usize,
}

struct Lexer<'s> {
    src: &'s str,
    pos: usize,
    start: usize,
    /// Where the current action's `<<` is, so "unclosed" errors point at the opening.
    action_start: usize,
    inside_action: bool,
    paren_depth: usize,
    done: bool,
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_alnum(c: char) -> bool {
    if c.is_ascii() {
        c == '_' || c.is_ascii_alphanumeric()
    } else {
        c.is_alphabetic() || c.is_numeric()
    }
}

fn has_left_trim_marker(s: &str) -> bool {
    let b = s.as_bytes();
    b.first() == Some(&b'-') && b.get(1).is_some_and(|&c| is_space(char::from(c)))
}

fn has_right_trim_marker(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(|&c| is_space(char::from(c))) && b.get(1) == Some(&b'-')
}

fn right_trim_len(s: &str) -> usize {
    s.len() - s.trim_end_matches(is_space).len()
}

fn left_trim_len(s: &str) -> usize {
    s.len() - s.trim_start_matches(is_space).len()
}

impl<'s> Lexer<'s> {
    fn new(src: &'s str) -> Self {
        Lexer {
            src,
            pos: 0,
            start: 0,
            action_start: 0,
            inside_action: false,
            paren_depth: 0,
            done: false,
        }
    }

    fn rest(&self) -> &'s str {
        self.src.get(self.pos..).unwrap_or_default()
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn accept(&mut self, valid: &str) -> bool {
        match self.peek() {
            Some(c) if valid.contains(c) => {
                self.pos += c.len_utf8();
                true
            }
            _ => false,
        }
    }

    fn accept_run(&mut self, valid: &str) {
        while self.accept(valid) {}
    }

    fn emit(&mut self, tok: Tok) -> Item {
        let item = Item {
            tok,
            pos: self.start,
            end: self.pos,
        };
        self.start = self.pos;
        item
    }

    fn fail(&mut self, e: LexError) -> Item {
        self.done = true;
        Item {
            tok: Tok::Error(e),
            pos: self.start,
            end: self.pos,
        }
    }

    fn fail_action(&mut self, e: LexError) -> Item {
        self.done = true;
        Item {
            tok: Tok::Error(e),
            pos: self.action_start,
            end: self.pos,
        }
    }

    fn next_item(&mut self) -> Item {
        if self.done {
            let end = self.src.len();
            return Item {
                tok: Tok::Eof,
                pos: end,
                end,
            };
        }
        if self.inside_action {
            self.lex_inside_action()
        } else {
            self.lex_text()
        }
    }

    fn at_right_delim(&self) -> (bool, bool) {
        let rest = self.rest();
        if has_right_trim_marker(rest) && rest.get(2..).is_some_and(|r| r.starts_with(RIGHT_DELIM))
        {
            return (true, true);
        }
        (rest.starts_with(RIGHT_DELIM), false)
    }

    fn at_terminator(&self) -> bool {
        match self.peek() {
            None => true,
            Some(c) if is_space(c) => true,
            Some('.' | ',' | '|' | ':' | ')' | '(') => true,
            Some(_) => self.rest().starts_with(RIGHT_DELIM),
        }
    }

    fn lex_text(&mut self) -> Item {
        loop {
            let Some(x) = self.rest().find(LEFT_DELIM) else {
                self.pos = self.src.len();
                if self.pos > self.start {
                    return self.emit(Tok::Text);
                }
                return self.emit(Tok::Eof);
            };
            let delim = self.pos + x;
            let after = self.src.get(delim + LEFT_DELIM.len()..).unwrap_or_default();
            let trim = if has_left_trim_marker(after) {
                right_trim_len(self.src.get(self.start..delim).unwrap_or_default())
            } else {
                0
            };
            self.pos = delim;
            let text_end = delim - trim;
            if text_end > self.start {
                let item = Item {
                    tok: Tok::Text,
                    pos: self.start,
                    end: text_end,
                };
                self.start = delim;
                return item;
            }
            self.start = delim;
            if let Some(item) = self.lex_left_delim() {
                return item;
            }
        }
    }

    /// Returns `None` when the delimiter opened a comment, which is skipped.
    fn lex_left_delim(&mut self) -> Option<Item> {
        self.action_start = self.pos;
        self.pos += LEFT_DELIM.len();
        let after_marker = if has_left_trim_marker(self.rest()) {
            2
        } else {
            0
        };
        let body = self.src.get(self.pos + after_marker..).unwrap_or_default();
        if body.starts_with("/*") {
            self.pos += after_marker;
            self.start = self.pos;
            return self.lex_comment();
        }
        let item = self.emit(Tok::LeftDelim);
        self.inside_action = true;
        self.pos += after_marker;
        self.start = self.pos;
        self.paren_depth = 0;
        Some(item)
    }

    fn lex_comment(&mut self) -> Option<Item> {
        self.pos += 2;
        let Some(x) = self.rest().find("*/") else {
            return Some(self.fail_action(LexError::UnclosedComment));
        };
        self.pos += x + 2;
        let (delim, trim) = self.at_right_delim();
        if !delim {
            return Some(self.fail_action(LexError::CommentEndsBeforeDelimiter));
        }
        if trim {
            self.pos += 2;
        }
        self.pos += RIGHT_DELIM.len();
        if trim {
            self.pos += left_trim_len(self.rest());
        }
        self.start = self.pos;
        None
    }

    fn lex_right_delim(&mut self) -> Item {
        let (_, trim) = self.at_right_delim();
        if trim {
            self.pos += 2;
            self.start = self.pos;
        }
        self.pos += RIGHT_DELIM.len();
        let item = self.emit(Tok::RightDelim);
        if trim {
            self.pos += left_trim_len(self.rest());
            self.start = self.pos;
        }
        self.inside_action = false;
        item
    }

    fn lex_inside_action(&mut self) -> Item {
        if self.at_right_delim().0 {
            if self.paren_depth == 0 {
                return self.lex_right_delim();
            }
            return self.fail_action(LexError::UnclosedLeftParen);
        }
        let Some(c) = self.next() else {
            return self.fail_action(LexError::UnclosedAction);
        };
        match c {
            c if is_space(c) => {
                self.pos -= 1;
                self.lex_space()
            }
            '=' => self.emit(Tok::Assign),
            ':' => {
                if self.next() != Some('=') {
                    return self.fail(LexError::ExpectedDeclare);
                }
                self.emit(Tok::Declare)
            }
            '|' => self.emit(Tok::Pipe),
            '"' => self.lex_quote(),
            '`' => self.lex_raw_quote(),
            '$' => {
                if self.at_terminator() {
                    return self.emit(Tok::Variable);
                }
                self.lex_field_or_variable(Tok::Variable)
            }
            '\'' => self.lex_char(),
            '.' if self
                .rest()
                .bytes()
                .next()
                .is_some_and(|b| !b.is_ascii_digit()) =>
            {
                self.lex_field_or_variable(Tok::Field)
            }
            '.' | '+' | '-' | '0'..='9' => {
                self.pos -= 1;
                self.lex_number()
            }
            c if is_alnum(c) => {
                self.pos -= c.len_utf8();
                self.lex_identifier()
            }
            '(' => {
                self.paren_depth += 1;
                self.emit(Tok::LeftParen)
            }
            ')' => {
                if self.paren_depth == 0 {
                    return self.fail(LexError::UnexpectedRightParen);
                }
                self.paren_depth -= 1;
                self.emit(Tok::RightParen)
            }
            c if c.is_ascii_graphic() => self.emit(Tok::Char),
            c => self.fail(LexError::UnrecognizedCharacter(c)),
        }
    }

    fn lex_space(&mut self) -> Item {
        let mut spaces = 0;
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
            spaces += 1;
        }
        // A trim-marked closing delimiter starts with a space: leave that space to it.
        let last = self
            .src
            .get(self.pos.saturating_sub(1)..)
            .unwrap_or_default();
        if has_right_trim_marker(last) && last.get(2..).is_some_and(|r| r.starts_with(RIGHT_DELIM))
        {
            self.pos -= 1;
            if spaces == 1 {
                return self.lex_right_delim();
            }
        }
        self.emit(Tok::Space)
    }

    fn lex_identifier(&mut self) -> Item {
        while self.peek().is_some_and(is_alnum) {
            self.next();
        }
        if !self.at_terminator() {
            return self.bad_character();
        }
        let tok = match self.src.get(self.start..self.pos).unwrap_or_default() {
            "block" => Tok::Keyword(Kw::Block),
            "break" => Tok::Keyword(Kw::Break),
            "continue" => Tok::Keyword(Kw::Continue),
            "define" => Tok::Keyword(Kw::Define),
            "else" => Tok::Keyword(Kw::Else),
            "end" => Tok::Keyword(Kw::End),
            "if" => Tok::Keyword(Kw::If),
            "nil" => Tok::Keyword(Kw::Nil),
            "range" => Tok::Keyword(Kw::Range),
            "template" => Tok::Keyword(Kw::Template),
            "with" => Tok::Keyword(Kw::With),
            "true" | "false" => Tok::Bool,
            _ => Tok::Identifier,
        };
        self.emit(tok)
    }

    fn bad_character(&mut self) -> Item {
        let c = self.peek().unwrap_or(char::REPLACEMENT_CHARACTER);
        self.fail(LexError::BadCharacter(c))
    }

    /// The `.` or `$` has been scanned.
    fn lex_field_or_variable(&mut self, tok: Tok) -> Item {
        if self.at_terminator() {
            return self.emit(if tok == Tok::Variable {
                Tok::Variable
            } else {
                Tok::Dot
            });
        }
        while self.peek().is_some_and(is_alnum) {
            self.next();
        }
        if !self.at_terminator() {
            return self.bad_character();
        }
        self.emit(tok)
    }

    fn lex_char(&mut self) -> Item {
        loop {
            match self.next() {
                Some('\\') => {
                    if matches!(self.next(), None | Some('\n')) {
                        return self.fail(LexError::UnterminatedCharConstant);
                    }
                }
                None | Some('\n') => return self.fail(LexError::UnterminatedCharConstant),
                Some('\'') => return self.emit(Tok::CharConstant),
                Some(_) => {}
            }
        }
    }

    fn lex_number(&mut self) -> Item {
        if !self.scan_number() {
            return self.fail(LexError::BadNumber);
        }
        if matches!(self.peek(), Some('+' | '-')) {
            // Complex: 1+2i. No spaces, must end in 'i'.
            let scanned = self.scan_number();
            let text = self.src.get(self.start..self.pos).unwrap_or_default();
            if !scanned || !text.ends_with('i') {
                return self.fail(LexError::BadNumber);
            }
            return self.emit(Tok::Complex);
        }
        self.emit(Tok::Number)
    }

    fn scan_number(&mut self) -> bool {
        self.accept("+-");
        let mut digits = "0123456789_";
        if self.accept("0") {
            if self.accept("xX") {
                digits = "0123456789abcdefABCDEF_";
            } else if self.accept("oO") {
                digits = "01234567_";
            } else if self.accept("bB") {
                digits = "01_";
            }
        }
        self.accept_run(digits);
        if self.accept(".") {
            self.accept_run(digits);
        }
        if digits.len() == 11 && self.accept("eE") {
            self.accept("+-");
            self.accept_run("0123456789_");
        }
        if digits.len() == 23 && self.accept("pP") {
            self.accept("+-");
            self.accept_run("0123456789_");
        }
        self.accept("i");
        if let Some(c) = self.peek().filter(|&c| is_alnum(c)) {
            self.pos += c.len_utf8();
            return false;
        }
        true
    }

    fn lex_quote(&mut self) -> Item {
        loop {
            match self.next() {
                Some('\\') => {
                    if matches!(self.next(), None | Some('\n')) {
                        return self.fail(LexError::UnterminatedString);
                    }
                }
                None | Some('\n') => return self.fail(LexError::UnterminatedString),
                Some('"') => return self.emit(Tok::String),
                Some(_) => {}
            }
        }
    }

    fn lex_raw_quote(&mut self) -> Item {
        loop {
            match self.next() {
                None => return self.fail(LexError::UnterminatedRawString),
                Some('`') => return self.emit(Tok::RawString),
                Some(_) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Syntax tree
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
}

#[derive(Debug, Clone)]
enum Node {
    Text { pos: usize, text: String },
    Action(Pipe),
    If(Box<Control>),
    Range(Box<Control>),
    With(Box<Control>),
    Break,
    Continue,
}

#[derive(Debug, Clone)]
struct Control {
    pipe: Pipe,
    list: Vec<Node>,
    else_list: Option<Vec<Node>>,
}

#[derive(Debug, Clone)]
struct Pipe {
    span: Span,
    is_assign: bool,
    decl: Vec<String>,
    cmds: Vec<Cmd>,
}

#[derive(Debug, Clone)]
struct Cmd {
    span: Span,
    head: Arg,
    rest: Vec<Arg>,
}

#[derive(Debug, Clone)]
struct Arg {
    span: Span,
    kind: ArgKind,
}

#[derive(Debug, Clone)]
enum ArgKind {
    /// `.A.B`.
    Field(Vec<String>),
    /// `$x.A.B` (`$x` has its `$`).
    Variable {
        name: String,
        fields: Vec<String>,
    },
    /// `(pipeline).A.B`.
    Chain {
        term: Box<Arg>,
        fields: Vec<String>,
    },
    Func(Func),
    Pipe(Box<Pipe>),
    Dot,
    Nil,
    Bool(bool),
    Int(i64),
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    And,
    Or,
    Not,
    Len,
    Index,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Print,
    Printf,
    Println,
}

/// Go builtins outside the subset: named so the error says "not supported", not "not defined".
const UNSUPPORTED_FUNCS: [&str; 5] = ["call", "html", "js", "slice", "urlquery"];

impl Func {
    fn lookup(name: &str) -> Option<Func> {
        Some(match name {
            "and" => Func::And,
            "or" => Func::Or,
            "not" => Func::Not,
            "len" => Func::Len,
            "index" => Func::Index,
            "eq" => Func::Eq,
            "ne" => Func::Ne,
            "lt" => Func::Lt,
            "le" => Func::Le,
            "gt" => Func::Gt,
            "ge" => Func::Ge,
            "print" => Func::Print,
            "printf" => Func::Printf,
            "println" => Func::Println,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Func::And => "and",
            Func::Or => "or",
            Func::Not => "not",
            Func::Len => "len",
            Func::Index => "index",
            Func::Eq => "eq",
            Func::Ne => "ne",
            Func::Lt => "lt",
            Func::Le => "le",
            Func::Gt => "gt",
            Func::Ge => "ge",
            Func::Print => "print",
            Func::Printf => "printf",
            Func::Println => "println",
        }
    }

    /// Fixed parameters, and whether more may follow (Go's signatures).
    fn arity(self) -> (usize, bool) {
        match self {
            Func::And | Func::Or | Func::Index | Func::Eq | Func::Printf => (1, true),
            Func::Not | Func::Len => (1, false),
            Func::Ne | Func::Lt | Func::Le | Func::Gt | Func::Ge => (2, false),
            Func::Print | Func::Println => (0, true),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parser (Go's text/template/parse/parse.go)
// ---------------------------------------------------------------------------------------

type PResult<T> = Result<T, TemplateError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    If,
    Range,
    With,
}

impl Ctx {
    fn name(self) -> &'static str {
        match self {
            Ctx::If => "if",
            Ctx::Range => "range",
            Ctx::With => "with",
        }
    }
}

/// What an action turned out to be; `end` and `else` close the enclosing list.
enum Parsed {
    Node(Node),
    End,
    Else(usize),
}

enum Term {
    End,
    Else(usize),
}

struct Parser<'s> {
    src: &'s str,
    lex: Lexer<'s>,
    /// Pushed-back items, next one last (Go's three-item lookahead).
    pending: Vec<Item>,
    vars: Vec<&'s str>,
    range_depth: usize,
    depth: usize,
}

impl<'s> Parser<'s> {
    fn new(src: &'s str) -> Self {
        Parser {
            src,
            lex: Lexer::new(src),
            pending: Vec::new(),
            vars: vec!["$"],
            range_depth: 0,
            depth: 0,
        }
    }

    fn next(&mut self) -> Item {
        self.pending.pop().unwrap_or_else(|| self.lex.next_item())
    }

    fn backup(&mut self, item: Item) {
        self.pending.push(item);
    }

    fn peek(&mut self) -> Item {
        let item = self.next();
        self.backup(item);
        item
    }

    fn next_non_space(&mut self) -> Item {
        loop {
            let item = self.next();
            if item.tok != Tok::Space {
                return item;
            }
        }
    }

    fn peek_non_space(&mut self) -> Item {
        let item = self.next_non_space();
        self.backup(item);
        item
    }

    fn text(&self, item: Item) -> &'s str {
        self.src.get(item.pos..item.end).unwrap_or_default()
    }

    fn error(&self, pos: usize, kind: ParseErrorKind) -> TemplateError {
        TemplateError::parse(self.src, pos, kind)
    }

    fn unexpected(&self, item: Item, context: &'static str) -> TemplateError {
        let kind = match item.tok {
            Tok::Error(e) => match e {
                LexError::UnclosedAction => ParseErrorKind::UnclosedAction,
                LexError::UnclosedComment => ParseErrorKind::UnclosedComment,
                LexError::CommentEndsBeforeDelimiter => ParseErrorKind::CommentEndsBeforeDelimiter,
                LexError::UnclosedLeftParen => ParseErrorKind::UnclosedLeftParen,
                LexError::UnexpectedRightParen => ParseErrorKind::UnexpectedRightParen,
                LexError::ExpectedDeclare => ParseErrorKind::ExpectedDeclare,
                LexError::UnterminatedString => ParseErrorKind::UnterminatedString,
                LexError::UnterminatedRawString => ParseErrorKind::UnterminatedRawString,
                LexError::UnterminatedCharConstant => ParseErrorKind::UnterminatedCharConstant,
                LexError::BadCharacter(ch) => ParseErrorKind::BadCharacter { ch },
                LexError::UnrecognizedCharacter(ch) => ParseErrorKind::UnrecognizedCharacter { ch },
                LexError::BadNumber => ParseErrorKind::BadNumber {
                    text: self.text(item).to_owned(),
                },
            },
            _ => ParseErrorKind::Unexpected {
                found: self.describe(item),
                context,
            },
        };
        self.error(item.pos, kind)
    }

    /// Go's `item.String()`.
    fn describe(&self, item: Item) -> String {
        match item.tok {
            Tok::Eof => "EOF".to_owned(),
            Tok::Dot | Tok::Keyword(_) => format!("<{}>", self.text(item)),
            _ => {
                let val = self.text(item);
                if val.len() > 10 {
                    let short: String = val.chars().take(10).collect();
                    format!("{}...", go_quote(&short))
                } else {
                    go_quote(val)
                }
            }
        }
    }

    fn expect(&mut self, tok: Tok, context: &'static str) -> PResult<Item> {
        let item = self.next_non_space();
        if item.tok != tok {
            return Err(self.unexpected(item, context));
        }
        Ok(item)
    }

    fn enter(&mut self, pos: usize) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(pos, ParseErrorKind::TooDeep { limit: MAX_DEPTH }));
        }
        Ok(())
    }

    fn parse(mut self) -> PResult<Vec<Node>> {
        let mut root = Vec::new();
        loop {
            let peek = self.peek();
            if peek.tok == Tok::Eof {
                return Ok(root);
            }
            if peek.tok == Tok::LeftDelim {
                let delim = self.next();
                let word = self.next_non_space();
                if word.tok == Tok::Keyword(Kw::Define) {
                    let what = "{{define}}";
                    return Err(self.error(word.pos, ParseErrorKind::Unsupported { what }));
                }
                self.backup(word);
                self.backup(delim);
            }
            match self.text_or_action()? {
                Parsed::Node(node) => root.push(node),
                Parsed::End => {
                    let keyword = "end";
                    return Err(self.error(peek.pos, ParseErrorKind::UnexpectedKeyword { keyword }));
                }
                Parsed::Else(pos) => {
                    let keyword = "else";
                    return Err(self.error(pos, ParseErrorKind::UnexpectedKeyword { keyword }));
                }
            }
        }
    }

    fn item_list(&mut self, open: usize) -> PResult<(Vec<Node>, Term)> {
        let mut list = Vec::new();
        loop {
            if self.peek_non_space().tok == Tok::Eof {
                return Err(self.error(open, ParseErrorKind::UnexpectedEof));
            }
            match self.text_or_action()? {
                Parsed::Node(node) => list.push(node),
                Parsed::End => return Ok((list, Term::End)),
                Parsed::Else(pos) => return Ok((list, Term::Else(pos))),
            }
        }
    }

    fn text_or_action(&mut self) -> PResult<Parsed> {
        let item = self.next_non_space();
        match item.tok {
            Tok::Text => Ok(Parsed::Node(Node::Text {
                pos: item.pos,
                text: self.text(item).to_owned(),
            })),
            Tok::LeftDelim => self.action(item.pos),
            _ => Err(self.unexpected(item, "input")),
        }
    }

    fn action(&mut self, delim: usize) -> PResult<Parsed> {
        let item = self.next_non_space();
        let unsupported = |what| ParseErrorKind::Unsupported { what };
        match item.tok {
            Tok::Keyword(Kw::Block) => Err(self.error(item.pos, unsupported("{{block}}"))),
            Tok::Keyword(Kw::Template) => Err(self.error(item.pos, unsupported("{{template}}"))),
            Tok::Keyword(Kw::Break) => self.loop_control(item, "break"),
            Tok::Keyword(Kw::Continue) => self.loop_control(item, "continue"),
            Tok::Keyword(Kw::Else) => {
                // `else if` / `else with` leave the keyword for the enclosing block.
                let peek = self.peek_non_space();
                if !matches!(peek.tok, Tok::Keyword(Kw::If | Kw::With)) {
                    self.expect(Tok::RightDelim, "else")?;
                }
                Ok(Parsed::Else(delim))
            }
            Tok::Keyword(Kw::End) => {
                self.expect(Tok::RightDelim, "end")?;
                Ok(Parsed::End)
            }
            Tok::Keyword(Kw::If) => Ok(Parsed::Node(self.control(Ctx::If, delim)?)),
            Tok::Keyword(Kw::Range) => Ok(Parsed::Node(self.control(Ctx::Range, delim)?)),
            Tok::Keyword(Kw::With) => Ok(Parsed::Node(self.control(Ctx::With, delim)?)),
            _ => {
                self.backup(item);
                let (pipe, _) = self.pipeline("command", Tok::RightDelim)?;
                Ok(Parsed::Node(Node::Action(pipe)))
            }
        }
    }

    fn loop_control(&mut self, item: Item, keyword: &'static str) -> PResult<Parsed> {
        let next = self.next_non_space();
        if next.tok != Tok::RightDelim {
            let context = if keyword == "break" {
                "{{break}}"
            } else {
                "{{continue}}"
            };
            return Err(self.unexpected(next, context));
        }
        if self.range_depth == 0 {
            return Err(self.error(item.pos, ParseErrorKind::OutsideRange { keyword }));
        }
        Ok(Parsed::Node(if keyword == "break" {
            Node::Break
        } else {
            Node::Continue
        }))
    }

    fn control(&mut self, ctx: Ctx, delim: usize) -> PResult<Node> {
        self.enter(delim)?;
        // Variables declared in the block go out of scope at its end.
        let mark = self.vars.len();
        let body = self.control_body(ctx, delim);
        self.vars.truncate(mark);
        self.depth -= 1;
        let (pipe, list, else_list) = body?;
        let control = Box::new(Control {
            pipe,
            list,
            else_list,
        });
        Ok(match ctx {
            Ctx::If => Node::If(control),
            Ctx::Range => Node::Range(control),
            Ctx::With => Node::With(control),
        })
    }

    #[allow(clippy::type_complexity)]
    fn control_body(
        &mut self,
        ctx: Ctx,
        delim: usize,
    ) -> PResult<(Pipe, Vec<Node>, Option<Vec<Node>>)> {
        let (pipe, _) = self.pipeline(ctx.name(), Tok::RightDelim)?;
        if ctx == Ctx::Range {
            self.range_depth += 1;
        }
        let body = self.item_list(delim);
        if ctx == Ctx::Range {
            self.range_depth -= 1;
        }
        let (list, next) = body?;
        let else_list = match next {
            Term::End => None,
            Term::Else(else_pos) => {
                let peek = self.peek();
                if ctx == Ctx::If && peek.tok == Tok::Keyword(Kw::If) {
                    self.next();
                    Some(vec![self.control(Ctx::If, else_pos)?])
                } else if ctx == Ctx::With && peek.tok == Tok::Keyword(Kw::With) {
                    self.next();
                    Some(vec![self.control(Ctx::With, else_pos)?])
                } else {
                    let (list, next) = self.item_list(delim)?;
                    if let Term::Else(pos) = next {
                        return Err(self.error(pos, ParseErrorKind::ExpectedEnd));
                    }
                    Some(list)
                }
            }
        };
        Ok((pipe, list, else_list))
    }

    /// Parses up to and including `end`, which is returned too.
    fn pipeline(&mut self, context: &'static str, end: Tok) -> PResult<(Pipe, Item)> {
        let first = self.peek_non_space();
        let mut decl = Vec::new();
        let mut is_assign = false;
        loop {
            let var = self.peek_non_space();
            if var.tok != Tok::Variable {
                break;
            }
            self.next();
            // Spaces are tokens, so telling `$x :=` from `$x foo` takes three of lookahead.
            let after = self.peek();
            let next = self.peek_non_space();
            let name = self.text(var);
            match next.tok {
                Tok::Assign | Tok::Declare => {
                    is_assign = next.tok == Tok::Assign;
                    self.next_non_space();
                    decl.push(name.to_owned());
                    self.vars.push(name);
                    break;
                }
                Tok::Char if self.text(next) == "," => {
                    self.next_non_space();
                    decl.push(name.to_owned());
                    self.vars.push(name);
                    if context == "range" && decl.len() < 2 {
                        let peek = self.peek_non_space();
                        if matches!(peek.tok, Tok::Variable | Tok::RightDelim | Tok::RightParen) {
                            continue;
                        }
                        return Err(self.error(peek.pos, ParseErrorKind::RangeOnlyVariables));
                    }
                    let kind = ParseErrorKind::TooManyDeclarations { context };
                    return Err(self.error(next.pos, kind));
                }
                _ => {
                    if after.tok == Tok::Space {
                        self.backup(after);
                    }
                    self.backup(var);
                    break;
                }
            }
        }
        let mut cmds: Vec<Cmd> = Vec::new();
        loop {
            let item = self.next_non_space();
            if item.tok == end {
                if cmds.is_empty() {
                    return Err(self.error(item.pos, ParseErrorKind::MissingValue { context }));
                }
                for (i, cmd) in cmds.iter().enumerate().skip(1) {
                    if matches!(
                        cmd.head.kind,
                        ArgKind::Bool(_)
                            | ArgKind::Dot
                            | ArgKind::Nil
                            | ArgKind::Int(_)
                            | ArgKind::Str(_)
                    ) {
                        let kind = ParseErrorKind::NonExecutableCommand { stage: i + 1 };
                        return Err(self.error(cmd.span.start, kind));
                    }
                }
                let end = cmds.last().map_or(item.pos, |c| c.span.end);
                let span = Span {
                    start: first.pos,
                    end,
                };
                let pipe = Pipe {
                    span,
                    is_assign,
                    decl,
                    cmds,
                };
                return Ok((pipe, item));
            }
            match item.tok {
                Tok::Bool
                | Tok::CharConstant
                | Tok::Complex
                | Tok::Dot
                | Tok::Field
                | Tok::Identifier
                | Tok::Number
                | Tok::Keyword(Kw::Nil)
                | Tok::RawString
                | Tok::String
                | Tok::Variable
                | Tok::LeftParen => {
                    self.backup(item);
                    cmds.push(self.command()?);
                }
                _ => return Err(self.unexpected(item, context)),
            }
        }
    }

    fn command(&mut self) -> PResult<Cmd> {
        let start = self.peek_non_space().pos;
        let mut args: Vec<Arg> = Vec::new();
        loop {
            self.peek_non_space();
            if let Some(operand) = self.operand()? {
                args.push(operand);
            }
            let item = self.next();
            match item.tok {
                Tok::Space => continue,
                Tok::RightDelim | Tok::RightParen => self.backup(item),
                Tok::Pipe => {}
                _ => return Err(self.unexpected(item, "operand")),
            }
            break;
        }
        let mut args = args.into_iter();
        let Some(head) = args.next() else {
            return Err(self.error(start, ParseErrorKind::EmptyCommand));
        };
        let rest: Vec<Arg> = args.collect();
        if let (ArgKind::Func(Func::Printf), Some(format)) = (&head.kind, rest.first())
            && let ArgKind::Str(f) = &format.kind
            && !format_supported(f)
        {
            let kind = ParseErrorKind::UnsupportedFormat { format: f.clone() };
            return Err(self.error(format.span.start, kind));
        }
        let end = rest.last().map_or(head.span.end, |a| a.span.end);
        Ok(Cmd {
            span: Span { start, end },
            head,
            rest,
        })
    }

    fn operand(&mut self) -> PResult<Option<Arg>> {
        let Some(node) = self.term()? else {
            return Ok(None);
        };
        if self.peek().tok != Tok::Field {
            return Ok(Some(node));
        }
        let mut fields = Vec::new();
        let mut end = node.span.end;
        while self.peek().tok == Tok::Field {
            let field = self.next();
            fields.push(field_name(self.text(field)));
            end = field.end;
        }
        let span = Span {
            start: node.span.start,
            end,
        };
        let kind = match node.kind {
            ArgKind::Field(mut idents) => {
                idents.extend(fields);
                ArgKind::Field(idents)
            }
            ArgKind::Variable {
                name,
                fields: mut own,
            } => {
                own.extend(fields);
                ArgKind::Variable { name, fields: own }
            }
            ArgKind::Bool(_) | ArgKind::Str(_) | ArgKind::Int(_) | ArgKind::Nil | ArgKind::Dot => {
                let term = self
                    .src
                    .get(node.span.start..node.span.end)
                    .unwrap_or_default()
                    .to_owned();
                return Err(self.error(node.span.start, ParseErrorKind::DotAfterTerm { term }));
            }
            kind => ArgKind::Chain {
                term: Box::new(Arg {
                    span: node.span,
                    kind,
                }),
                fields,
            },
        };
        Ok(Some(Arg { span, kind }))
    }

    fn term(&mut self) -> PResult<Option<Arg>> {
        let item = self.next_non_space();
        let text = self.text(item);
        let unsupported = |what| ParseErrorKind::Unsupported { what };
        let kind = match item.tok {
            Tok::Identifier => match Func::lookup(text) {
                Some(func) => ArgKind::Func(func),
                None => {
                    let name = text.to_owned();
                    let kind = if UNSUPPORTED_FUNCS.contains(&text) {
                        ParseErrorKind::UnsupportedFunction { name }
                    } else {
                        ParseErrorKind::FunctionNotDefined { name }
                    };
                    return Err(self.error(item.pos, kind));
                }
            },
            Tok::Dot => ArgKind::Dot,
            Tok::Keyword(Kw::Nil) => ArgKind::Nil,
            Tok::Variable => {
                if !self.vars.contains(&text) {
                    let kind = ParseErrorKind::UndefinedVariable {
                        name: text.to_owned(),
                    };
                    return Err(self.error(item.pos, kind));
                }
                ArgKind::Variable {
                    name: text.to_owned(),
                    fields: Vec::new(),
                }
            }
            Tok::Field => ArgKind::Field(vec![field_name(text)]),
            Tok::Bool => ArgKind::Bool(text == "true"),
            Tok::CharConstant => {
                return Err(self.error(item.pos, unsupported("a character constant")));
            }
            Tok::Complex => return Err(self.error(item.pos, unsupported("a complex constant"))),
            Tok::Number => ArgKind::Int(self.number(item)?),
            Tok::LeftParen => {
                self.enter(item.pos)?;
                let inner = self.pipeline("parenthesized pipeline", Tok::RightParen);
                self.depth -= 1;
                let (pipe, close) = inner?;
                let span = Span {
                    start: item.pos,
                    end: close.end,
                };
                let kind = ArgKind::Pipe(Box::new(pipe));
                return Ok(Some(Arg { span, kind }));
            }
            Tok::String | Tok::RawString => {
                ArgKind::Str(unquote(text).map_err(|kind| self.error(item.pos, kind))?)
            }
            _ => {
                self.backup(item);
                return Ok(None);
            }
        };
        let span = Span {
            start: item.pos,
            end: item.end,
        };
        Ok(Some(Arg { span, kind }))
    }

    fn number(&self, item: Item) -> PResult<i64> {
        let text = self.text(item);
        let kind = match parse_go_int(text) {
            Ok(n) => return Ok(n),
            Err(IntError::Overflow) => ParseErrorKind::IntegerOverflow {
                text: text.to_owned(),
            },
            Err(IntError::Syntax) if text.ends_with('i') => ParseErrorKind::Unsupported {
                what: "a complex constant",
            },
            Err(IntError::Syntax)
                if text.contains(['.', 'e', 'E', 'p', 'P'])
                    && text.contains(|c: char| c.is_ascii_digit()) =>
            {
                ParseErrorKind::Unsupported {
                    what: "a floating-point constant",
                }
            }
            Err(IntError::Syntax) => ParseErrorKind::IllegalNumber {
                text: text.to_owned(),
            },
        };
        Err(self.error(item.pos, kind))
    }
}

fn field_name(token: &str) -> String {
    token.strip_prefix('.').unwrap_or(token).to_owned()
}

enum IntError {
    Syntax,
    Overflow,
}

/// Go's `strconv.ParseInt(text, 0, 64)`, which also decides what Go reports for failures:
/// a run of decimal digits that does not fit (or a bad octal like `089`, which Go parses as
/// a float) is an overflow.
fn parse_go_int(text: &str) -> Result<i64, IntError> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d, true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d, true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d, true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower.get(1..).unwrap_or_default(), true)
    } else {
        (10, lower.as_str(), false)
    };
    let decimal_run = !body.is_empty() && body.chars().all(|c| c.is_ascii_digit() || c == '_');
    let syntax = if decimal_run && underscores_ok(body) {
        IntError::Overflow
    } else {
        IntError::Syntax
    };
    if digits.contains('_') && !underscores_ok(&lower) {
        return Err(IntError::Syntax);
    }
    let clean: String = digits.chars().filter(|&c| c != '_').collect();
    if (clean.is_empty() && !prefixed) || !clean.chars().all(|c| c.is_digit(radix)) {
        return Err(syntax);
    }
    if clean.is_empty() {
        return Err(IntError::Syntax);
    }
    let magnitude = u64::from_str_radix(&clean, radix).map_err(|_| syntax)?;
    let value = if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    };
    value.ok_or(IntError::Overflow)
}

/// Go's `underscoreOK`: underscores only between digits, or after a base prefix.
fn underscores_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let mut saw = b'^';
    let mut i = 0;
    let mut hex = false;
    if b.first() == Some(&b'0')
        && let Some(p) = b.get(1).map(u8::to_ascii_lowercase)
        && matches!(p, b'b' | b'o' | b'x')
    {
        i = 2;
        saw = b'0';
        hex = p == b'x';
    }
    for &c in b.iter().skip(i) {
        if c.is_ascii_digit() || (hex && c.is_ascii_hexdigit()) {
            saw = b'0';
            continue;
        }
        if c == b'_' {
            if saw != b'0' {
                return false;
            }
            saw = b'_';
            continue;
        }
        if saw == b'_' {
            return false;
        }
        saw = b'!';
    }
    saw != b'_'
}

/// Go's `strconv.Unquote` for the two string forms the lexer produces.
fn unquote(raw: &str) -> Result<String, ParseErrorKind> {
    if let Some(inner) = raw.strip_prefix('`').and_then(|s| s.strip_suffix('`')) {
        return Ok(inner.replace('\r', ""));
    }
    let inner = raw
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or(ParseErrorKind::InvalidString)?;
    let mut out: Vec<u8> = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    let hex = |chars: &mut std::str::Chars<'_>, n: usize| -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            v = v * 16 + chars.next()?.to_digit(16)?;
        }
        Some(v)
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let escaped = chars.next().ok_or(ParseErrorKind::InvalidString)?;
        let byte = |b: u8, out: &mut Vec<u8>| out.push(b);
        match escaped {
            'a' => byte(0x07, &mut out),
            'b' => byte(0x08, &mut out),
            'f' => byte(0x0c, &mut out),
            'n' => byte(b'\n', &mut out),
            'r' => byte(b'\r', &mut out),
            't' => byte(b'\t', &mut out),
            'v' => byte(0x0b, &mut out),
            '\\' => byte(b'\\', &mut out),
            '"' => byte(b'"', &mut out),
            'x' => {
                let v = hex(&mut chars, 2).ok_or(ParseErrorKind::InvalidString)?;
                byte(
                    u8::try_from(v).map_err(|_| ParseErrorKind::InvalidString)?,
                    &mut out,
                );
            }
            'u' | 'U' => {
                let n = if escaped == 'u' { 4 } else { 8 };
                let v = hex(&mut chars, n).ok_or(ParseErrorKind::InvalidString)?;
                let ch = char::from_u32(v).ok_or(ParseErrorKind::InvalidString)?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
            '0'..='7' => {
                let mut v = escaped.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    let d = chars.next().and_then(|c| c.to_digit(8));
                    v = v * 8 + d.ok_or(ParseErrorKind::InvalidString)?;
                }
                byte(
                    u8::try_from(v).map_err(|_| ParseErrorKind::InvalidString)?,
                    &mut out,
                );
            }
            _ => return Err(ParseErrorKind::InvalidString),
        }
    }
    String::from_utf8(out).map_err(|_| ParseErrorKind::Unsupported {
        what: "a string literal that is not UTF-8",
    })
}

fn format_supported(format: &str) -> bool {
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c == '%' && !matches!(chars.next(), Some('s' | 'v' | 'd' | 'q' | '%')) {
            return false;
        }
    }
    true
}

fn collect_fields(nodes: &[Node], dot_is_root: bool, out: &mut BTreeSet<String>) {
    for node in nodes {
        match node {
            Node::Text { .. } | Node::Break | Node::Continue => {}
            Node::Action(pipe) => collect_pipe(pipe, dot_is_root, out),
            Node::If(c) | Node::With(c) | Node::Range(c) => {
                collect_pipe(&c.pipe, dot_is_root, out);
                let body_is_root = match node {
                    Node::If(_) => dot_is_root,
                    // `with .` / `with $` keep the data as dot.
                    Node::With(_) => match c.pipe.cmds.as_slice() {
                        [cmd] if cmd.rest.is_empty() => match &cmd.head.kind {
                            ArgKind::Dot => dot_is_root,
                            ArgKind::Variable { name, fields } => name == "$" && fields.is_empty(),
                            _ => false,
                        },
                        _ => false,
                    },
                    _ => false,
                };
                collect_fields(&c.list, body_is_root, out);
                if let Some(else_list) = &c.else_list {
                    collect_fields(else_list, dot_is_root, out);
                }
            }
        }
    }
}

fn collect_pipe(pipe: &Pipe, dot_is_root: bool, out: &mut BTreeSet<String>) {
    for cmd in &pipe.cmds {
        collect_arg(&cmd.head, dot_is_root, out);
        for arg in &cmd.rest {
            collect_arg(arg, dot_is_root, out);
        }
    }
}

fn collect_arg(arg: &Arg, dot_is_root: bool, out: &mut BTreeSet<String>) {
    match &arg.kind {
        ArgKind::Field(idents) if dot_is_root => out.extend(idents.first().cloned()),
        ArgKind::Variable { name, fields } if name == "$" => out.extend(fields.first().cloned()),
        ArgKind::Chain { term, .. } => collect_arg(term, dot_is_root, out),
        ArgKind::Pipe(pipe) => collect_pipe(pipe, dot_is_root, out),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// Executor (Go's text/template/exec.go and funcs.go)
// ---------------------------------------------------------------------------------------

/// A run-time value: Go's `reflect.Value` narrowed to what the data and builtins produce.
#[derive(Debug, Clone)]
enum Val<'a> {
    /// The data itself (Go: the struct passed to Execute).
    Root,
    Str(Cow<'a, str>),
    List(&'a [String]),
    Map(&'a BTreeMap<String, String>),
    Int(i64),
    /// A string indexed by `index` (Go: `uint8`).
    Byte(u8),
    Bool(bool),
    /// Go's invalid value: a missing map key via `.Map.key`, or `nil`.
    Invalid,
}

impl<'a> Val<'a> {
    fn from_value(v: &'a Value) -> Self {
        match v {
            Value::Str(s) => Val::Str(Cow::Borrowed(s)),
            Value::List(l) => Val::List(l),
            Value::Map(m) => Val::Map(m),
            Value::Int(i) => Val::Int(*i),
        }
    }

    fn is_valid(&self) -> bool {
        !matches!(self, Val::Invalid)
    }

    fn type_name(&self) -> GoType {
        match self {
            Val::Root => GoType::Data,
            Val::Str(_) => GoType::String,
            Val::List(_) => GoType::StringSlice,
            Val::Map(_) => GoType::StringMap,
            Val::Int(_) => GoType::Int,
            Val::Byte(_) => GoType::Uint8,
            Val::Bool(_) => GoType::Bool,
            Val::Invalid => GoType::Nil,
        }
    }
}

/// Go's `isTrue`.
fn truth(v: &Val<'_>) -> bool {
    match v {
        Val::Root => true,
        Val::Str(s) => !s.is_empty(),
        Val::List(l) => !l.is_empty(),
        Val::Map(m) => !m.is_empty(),
        Val::Int(i) => *i != 0,
        Val::Byte(b) => *b != 0,
        Val::Bool(b) => *b,
        Val::Invalid => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Normal,
    Break,
    Continue,
}

type RResult<T> = Result<T, TemplateError>;

struct Exec<'a> {
    src: &'a str,
    data: &'a Data,
    out: String,
    vars: Vec<(&'a str, Val<'a>)>,
    steps: usize,
}

impl<'a> Exec<'a> {
    fn fail(&self, span: Span, kind: RenderErrorKind) -> TemplateError {
        let (line, column) = line_col(self.src, span.start);
        TemplateError::Render {
            offset: span.start,
            line,
            column,
            context: self
                .src
                .get(span.start..span.end)
                .unwrap_or_default()
                .to_owned(),
            kind,
        }
    }

    fn step(&mut self, span: Span) -> RResult<()> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            let limit = MAX_STEPS;
            return Err(self.fail(span, RenderErrorKind::TooManySteps { limit }));
        }
        Ok(())
    }

    fn write(&mut self, span: Span, s: &str) -> RResult<()> {
        if self.out.len() + s.len() > MAX_OUTPUT {
            let limit = MAX_OUTPUT;
            return Err(self.fail(span, RenderErrorKind::OutputTooLarge { limit }));
        }
        self.out.push_str(s);
        Ok(())
    }

    fn walk(&mut self, dot: &Val<'a>, nodes: &'a [Node]) -> RResult<Flow> {
        for node in nodes {
            match node {
                Node::Text { pos, text } => {
                    let span = Span {
                        start: *pos,
                        end: *pos,
                    };
                    self.step(span)?;
                    self.write(span, text)?;
                }
                Node::Action(pipe) => {
                    self.step(pipe.span)?;
                    let val = self.eval_pipeline(dot, pipe)?;
                    if pipe.decl.is_empty() {
                        self.print_value(pipe.span, &val)?;
                    }
                }
                Node::If(c) | Node::With(c) => {
                    self.step(c.pipe.span)?;
                    let mark = self.vars.len();
                    let flow = self.walk_if_or_with(dot, c, matches!(node, Node::With(_)));
                    self.vars.truncate(mark);
                    let flow = flow?;
                    if flow != Flow::Normal {
                        return Ok(flow);
                    }
                }
                Node::Range(c) => {
                    self.step(c.pipe.span)?;
                    let mark = self.vars.len();
                    let flow = self.walk_range(dot, c);
                    self.vars.truncate(mark);
                    // A `break` is consumed by its range; `continue` from the range's else
                    // list belongs to an enclosing range (so says Go's recover logic).
                    if flow? == Flow::Continue {
                        return Ok(Flow::Continue);
                    }
                }
                Node::Break => return Ok(Flow::Break),
                Node::Continue => return Ok(Flow::Continue),
            }
        }
        Ok(Flow::Normal)
    }

    fn walk_if_or_with(&mut self, dot: &Val<'a>, c: &'a Control, with: bool) -> RResult<Flow> {
        let val = self.eval_pipeline(dot, &c.pipe)?;
        if truth(&val) {
            if with {
                self.walk(&val, &c.list)
            } else {
                self.walk(dot, &c.list)
            }
        } else if let Some(else_list) = &c.else_list {
            self.walk(dot, else_list)
        } else {
            Ok(Flow::Normal)
        }
    }

    fn walk_range(&mut self, dot: &Val<'a>, c: &'a Control) -> RResult<Flow> {
        let val = self.eval_pipeline(dot, &c.pipe)?;
        let mark = self.vars.len();
        match val {
            Val::List(items) if !items.is_empty() => {
                for (i, item) in items.iter().enumerate() {
                    let index = Val::Int(i64::try_from(i).unwrap_or(i64::MAX));
                    let elem = Val::Str(Cow::Borrowed(item.as_str()));
                    if self.range_iteration(c, index, elem, mark)? == Flow::Break {
                        break;
                    }
                }
                return Ok(Flow::Normal);
            }
            Val::Map(map) if !map.is_empty() => {
                for (key, value) in map {
                    let key = Val::Str(Cow::Borrowed(key.as_str()));
                    let elem = Val::Str(Cow::Borrowed(value.as_str()));
                    if self.range_iteration(c, key, elem, mark)? == Flow::Break {
                        break;
                    }
                }
                return Ok(Flow::Normal);
            }
            Val::List(_) | Val::Map(_) | Val::Invalid => {}
            other => {
                let value = display(&other, 'v');
                return Err(self.fail(c.pipe.span, RenderErrorKind::CannotRange { value }));
            }
        }
        match &c.else_list {
            Some(else_list) => self.walk(dot, else_list),
            None => Ok(Flow::Normal),
        }
    }

    fn range_iteration(
        &mut self,
        c: &'a Control,
        index: Val<'a>,
        elem: Val<'a>,
        mark: usize,
    ) -> RResult<Flow> {
        let span = c.pipe.span;
        // Counted per iteration: nested ranges with empty bodies must not spin unbounded.
        self.step(span)?;
        let decl = &c.pipe.decl;
        if let Some(first) = decl.first() {
            if c.pipe.is_assign {
                // With two variables the index comes first; with one, the element.
                let v = if decl.len() > 1 {
                    index.clone()
                } else {
                    elem.clone()
                };
                self.set_var(first, v, span)?;
            } else {
                self.set_top_var(1, elem.clone());
            }
        }
        if let Some(second) = decl.get(1) {
            if c.pipe.is_assign {
                self.set_var(second, elem.clone(), span)?;
            } else {
                self.set_top_var(2, index);
            }
        }
        let flow = self.walk(&elem, &c.list);
        self.vars.truncate(mark);
        Ok(match flow? {
            Flow::Break => Flow::Break,
            Flow::Normal | Flow::Continue => Flow::Normal,
        })
    }

    fn set_var(&mut self, name: &str, value: Val<'a>, span: Span) -> RResult<()> {
        match self.vars.iter_mut().rev().find(|(n, _)| *n == name) {
            Some(slot) => {
                slot.1 = value;
                Ok(())
            }
            None => {
                let name = name.to_owned();
                Err(self.fail(span, RenderErrorKind::UndefinedVariable { name }))
            }
        }
    }

    fn set_top_var(&mut self, n: usize, value: Val<'a>) {
        let len = self.vars.len();
        if let Some(slot) = len.checked_sub(n).and_then(|i| self.vars.get_mut(i)) {
            slot.1 = value;
        }
    }

    fn var_value(&self, name: &str, span: Span) -> RResult<Val<'a>> {
        match self.vars.iter().rev().find(|(n, _)| *n == name) {
            Some((_, v)) => Ok(v.clone()),
            None => {
                let name = name.to_owned();
                Err(self.fail(span, RenderErrorKind::UndefinedVariable { name }))
            }
        }
    }

    fn print_value(&mut self, span: Span, val: &Val<'a>) -> RResult<()> {
        match val {
            Val::Str(s) => self.write(span, s),
            Val::Invalid => self.write(span, "<no value>"),
            other => {
                let mut s = String::new();
                write_value(&mut s, 'v', other).map_err(|k| self.fail(span, k))?;
                self.write(span, &s)
            }
        }
    }

    fn eval_pipeline(&mut self, dot: &Val<'a>, pipe: &'a Pipe) -> RResult<Val<'a>> {
        let mut value = None;
        for cmd in &pipe.cmds {
            value = Some(self.eval_command(dot, cmd, value)?);
        }
        let value = value.unwrap_or(Val::Invalid);
        for name in &pipe.decl {
            if pipe.is_assign {
                self.set_var(name, value.clone(), pipe.span)?;
            } else {
                self.vars.push((name, value.clone()));
            }
        }
        Ok(value)
    }

    fn not_a_function(&self, cmd: &Cmd, last: &Option<Val<'a>>) -> RResult<()> {
        if !cmd.rest.is_empty() || last.is_some() {
            let node = self
                .src
                .get(cmd.head.span.start..cmd.head.span.end)
                .unwrap_or_default()
                .to_owned();
            return Err(self.fail(cmd.head.span, RenderErrorKind::NotAFunction { node }));
        }
        Ok(())
    }

    /// `last` is the previous pipeline stage's value, passed as the final argument.
    fn eval_command(
        &mut self,
        dot: &Val<'a>,
        cmd: &'a Cmd,
        last: Option<Val<'a>>,
    ) -> RResult<Val<'a>> {
        self.step(cmd.span)?;
        let has_args = !cmd.rest.is_empty() || last.is_some();
        match &cmd.head.kind {
            ArgKind::Field(idents) => {
                self.eval_fields(dot.clone(), idents, cmd.head.span, has_args)
            }
            ArgKind::Chain { term, fields } => {
                let receiver = self.eval_arg(dot, term)?;
                self.eval_fields(receiver, fields, cmd.head.span, has_args)
            }
            ArgKind::Func(func) => self.eval_call(dot, *func, cmd.span, &cmd.rest, last),
            ArgKind::Pipe(pipe) => {
                self.not_a_function(cmd, &last)?;
                self.eval_pipeline(dot, pipe)
            }
            ArgKind::Variable { name, fields } => {
                let value = self.var_value(name, cmd.head.span)?;
                if fields.is_empty() {
                    self.not_a_function(cmd, &last)?;
                    return Ok(value);
                }
                self.eval_fields(value, fields, cmd.head.span, has_args)
            }
            ArgKind::Nil => {
                self.not_a_function(cmd, &last)?;
                Err(self.fail(cmd.head.span, RenderErrorKind::NilCommand))
            }
            ArgKind::Dot => {
                self.not_a_function(cmd, &last)?;
                Ok(dot.clone())
            }
            ArgKind::Bool(b) => {
                self.not_a_function(cmd, &last)?;
                Ok(Val::Bool(*b))
            }
            ArgKind::Int(i) => {
                self.not_a_function(cmd, &last)?;
                Ok(Val::Int(*i))
            }
            ArgKind::Str(s) => {
                self.not_a_function(cmd, &last)?;
                Ok(Val::Str(Cow::Borrowed(s)))
            }
        }
    }

    /// Walks `.A.B.C` from `receiver`; only the last field sees the command's arguments.
    fn eval_fields(
        &self,
        receiver: Val<'a>,
        idents: &'a [String],
        span: Span,
        has_args: bool,
    ) -> RResult<Val<'a>> {
        let mut value = receiver;
        let last = idents.len().saturating_sub(1);
        for (i, name) in idents.iter().enumerate() {
            value = self.eval_field(name, value, has_args && i == last, span)?;
        }
        Ok(value)
    }

    fn eval_field(
        &self,
        name: &str,
        receiver: Val<'a>,
        has_args: bool,
        span: Span,
    ) -> RResult<Val<'a>> {
        let field = || name.to_owned();
        match receiver {
            Val::Invalid => Ok(Val::Invalid),
            Val::Root => match self.data.get(name) {
                Some(_) if has_args => {
                    let kind = RenderErrorKind::FieldHasArguments { field: field() };
                    Err(self.fail(span, kind))
                }
                Some(v) => Ok(Val::from_value(v)),
                None => Err(self.fail(span, RenderErrorKind::MissingField { field: field() })),
            },
            Val::Map(map) => {
                if has_args {
                    let kind = RenderErrorKind::MapKeyHasArguments { field: field() };
                    return Err(self.fail(span, kind));
                }
                Ok(map
                    .get(name)
                    .map_or(Val::Invalid, |v| Val::Str(Cow::Borrowed(v.as_str()))))
            }
            other => {
                let ty = other.type_name();
                let kind = RenderErrorKind::FieldOfNonStruct { field: field(), ty };
                Err(self.fail(span, kind))
            }
        }
    }

    /// An argument to a builtin whose parameter is `any` or `reflect.Value`.
    fn eval_arg(&mut self, dot: &Val<'a>, arg: &'a Arg) -> RResult<Val<'a>> {
        match &arg.kind {
            ArgKind::Dot => Ok(dot.clone()),
            ArgKind::Nil => Ok(Val::Invalid),
            ArgKind::Bool(b) => Ok(Val::Bool(*b)),
            ArgKind::Int(i) => Ok(Val::Int(*i)),
            ArgKind::Str(s) => Ok(Val::Str(Cow::Borrowed(s))),
            ArgKind::Field(idents) => self.eval_fields(dot.clone(), idents, arg.span, false),
            ArgKind::Variable { name, fields } => {
                let value = self.var_value(name, arg.span)?;
                self.eval_fields(value, fields, arg.span, false)
            }
            ArgKind::Chain { term, fields } => {
                let receiver = self.eval_arg(dot, term)?;
                self.eval_fields(receiver, fields, arg.span, false)
            }
            ArgKind::Pipe(pipe) => self.eval_pipeline(dot, pipe),
            ArgKind::Func(func) => self.eval_call(dot, *func, arg.span, &[], None),
        }
    }

    /// printf's format parameter, which Go types as `string`.
    fn eval_format(&mut self, dot: &Val<'a>, arg: &'a Arg) -> RResult<Cow<'a, str>> {
        let value = match &arg.kind {
            ArgKind::Str(s) => return Ok(Cow::Borrowed(s)),
            ArgKind::Nil => {
                return Err(self.fail(arg.span, RenderErrorKind::NilArgument { to: "string" }));
            }
            ArgKind::Bool(_) | ArgKind::Int(_) => {
                let found = self
                    .src
                    .get(arg.span.start..arg.span.end)
                    .unwrap_or_default()
                    .to_owned();
                return Err(self.fail(arg.span, RenderErrorKind::ExpectedString { found }));
            }
            _ => self.eval_arg(dot, arg)?,
        };
        self.string_param(value, arg.span)
    }

    fn string_param(&self, value: Val<'a>, span: Span) -> RResult<Cow<'a, str>> {
        match value {
            Val::Str(s) => Ok(s),
            Val::Invalid => {
                let kind = RenderErrorKind::InvalidValue { expected: "string" };
                Err(self.fail(span, kind))
            }
            other => {
                let kind = RenderErrorKind::WrongType {
                    expected: "string",
                    got: other.type_name(),
                };
                Err(self.fail(span, kind))
            }
        }
    }

    fn eval_call(
        &mut self,
        dot: &Val<'a>,
        func: Func,
        span: Span,
        args: &'a [Arg],
        last: Option<Val<'a>>,
    ) -> RResult<Val<'a>> {
        let given = args.len() + usize::from(last.is_some());
        let (fixed, variadic) = func.arity();
        if variadic && given < fixed {
            let kind = RenderErrorKind::TooFewArgs {
                func: func.name(),
                want: fixed,
                got: args.len(),
            };
            return Err(self.fail(span, kind));
        }
        if !variadic && given != fixed {
            let kind = RenderErrorKind::WrongArgCount {
                func: func.name(),
                want: fixed,
                got: given,
            };
            return Err(self.fail(span, kind));
        }
        match func {
            // `and` and `or` stop evaluating at the first argument that decides.
            Func::And | Func::Or => {
                let decides = func == Func::Or;
                let mut value = Val::Invalid;
                for arg in args {
                    value = self.eval_arg(dot, arg)?;
                    if truth(&value) == decides {
                        return Ok(value);
                    }
                }
                Ok(last.unwrap_or(value))
            }
            Func::Printf => {
                let (format, rest) = match args.split_first() {
                    Some((first, rest)) => (self.eval_format(dot, first)?, rest),
                    None => {
                        let value = last.clone().unwrap_or(Val::Invalid);
                        (self.string_param(value, span)?, args)
                    }
                };
                let mut values = Vec::with_capacity(given);
                for arg in rest {
                    values.push(self.eval_arg(dot, arg)?);
                }
                if !args.is_empty() {
                    values.extend(last);
                }
                let s = sprintf(&format, &values).map_err(|k| self.fail(span, k))?;
                Ok(Val::Str(Cow::Owned(s)))
            }
            _ => {
                let mut values = Vec::with_capacity(given);
                for arg in args {
                    values.push(self.eval_arg(dot, arg)?);
                }
                values.extend(last);
                call_builtin(func, values).map_err(|k| self.fail(span, k))
            }
        }
    }
}

fn call_builtin(func: Func, args: Vec<Val<'_>>) -> Result<Val<'_>, RenderErrorKind> {
    let call = |error| RenderErrorKind::Call {
        func: func.name(),
        error,
    };
    if matches!(func, Func::Print | Func::Println) {
        let s = if func == Func::Print {
            sprint(&args)?
        } else {
            sprintln(&args)?
        };
        return Ok(Val::Str(Cow::Owned(s)));
    }
    let mut it = args.into_iter();
    let first = it.next().unwrap_or(Val::Invalid);
    match func {
        Func::Not => Ok(Val::Bool(!truth(&first))),
        Func::Len => length(&first).map(Val::Int).map_err(call),
        Func::Index => index(first, it).map_err(call),
        Func::Eq => {
            let rest: Vec<Val<'_>> = it.collect();
            eq(&first, &rest).map(Val::Bool).map_err(call)
        }
        Func::Ne | Func::Lt | Func::Le | Func::Gt | Func::Ge => {
            let second = it.next().unwrap_or(Val::Invalid);
            let result = match func {
                Func::Ne => eq(&first, std::slice::from_ref(&second)).map(|t| !t),
                Func::Lt => lt(&first, &second),
                Func::Le => le(&first, &second),
                Func::Gt => le(&first, &second).map(|t| !t),
                _ => lt(&first, &second).map(|t| !t),
            };
            result.map(Val::Bool).map_err(call)
        }
        // Evaluated by the caller (lazily, or with a typed format).
        Func::And | Func::Or | Func::Printf | Func::Print | Func::Println => {
            Ok(it.last().unwrap_or(first))
        }
    }
}

fn length(v: &Val<'_>) -> Result<i64, CallError> {
    let n = match v {
        Val::Str(s) => s.len(),
        Val::List(l) => l.len(),
        Val::Map(m) => m.len(),
        Val::Invalid => return Err(CallError::LenOfNil),
        other => {
            let ty = other.type_name();
            return Err(CallError::LenOfType { ty });
        }
    };
    Ok(i64::try_from(n).unwrap_or(i64::MAX))
}

fn index<'a>(item: Val<'a>, indexes: impl Iterator<Item = Val<'a>>) -> Result<Val<'a>, CallError> {
    if !item.is_valid() {
        return Err(CallError::IndexOfNil);
    }
    let mut item = item;
    for i in indexes {
        item = match item {
            Val::List(list) => {
                let x = index_arg(&i, list.len())?;
                let kind = "slice";
                let s = list
                    .get(x)
                    .ok_or(CallError::ReflectIndexOutOfRange { kind })?;
                Val::Str(Cow::Borrowed(s.as_str()))
            }
            Val::Str(s) => {
                let x = index_arg(&i, s.len())?;
                let kind = "string";
                let b = s
                    .as_bytes()
                    .get(x)
                    .ok_or(CallError::ReflectIndexOutOfRange { kind })?;
                Val::Byte(*b)
            }
            Val::Map(map) => {
                let key = match &i {
                    Val::Str(k) => k,
                    Val::Invalid => return Err(CallError::NilKey),
                    other => {
                        let ty = other.type_name();
                        return Err(CallError::KeyType { ty });
                    }
                };
                // A missing key gives the element type's zero value, "".
                Val::Str(Cow::Borrowed(map.get(&**key).map_or("", String::as_str)))
            }
            other => {
                let ty = other.type_name();
                return Err(CallError::CannotIndex { ty });
            }
        };
    }
    Ok(item)
}

fn index_arg(i: &Val<'_>, len: usize) -> Result<usize, CallError> {
    let x = match i {
        Val::Int(x) => *x,
        Val::Byte(b) => i64::from(*b),
        Val::Invalid => return Err(CallError::IndexWithNil),
        other => {
            let ty = other.type_name();
            return Err(CallError::IndexWithType { ty });
        }
    };
    match usize::try_from(x) {
        Ok(u) if u <= len => Ok(u),
        _ => Err(CallError::IndexOutOfRange { index: x }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Int,
    Uint,
    Str,
    /// Go's `invalidKind`: lists, maps, the data, nil.
    Other,
}

fn basic_kind(v: &Val<'_>) -> Kind {
    match v {
        Val::Bool(_) => Kind::Bool,
        Val::Int(_) => Kind::Int,
        Val::Byte(_) => Kind::Uint,
        Val::Str(_) => Kind::Str,
        Val::Root | Val::List(_) | Val::Map(_) | Val::Invalid => Kind::Other,
    }
}

fn eq(a: &Val<'_>, rest: &[Val<'_>]) -> Result<bool, CallError> {
    if rest.is_empty() {
        return Err(CallError::MissingComparisonArgument);
    }
    let k1 = basic_kind(a);
    for b in rest {
        let truth = if k1 != basic_kind(b) {
            match (a, b) {
                (Val::Int(x), Val::Byte(y)) | (Val::Byte(y), Val::Int(x)) => *x == i64::from(*y),
                _ if a.is_valid() && b.is_valid() => {
                    return Err(CallError::IncompatibleTypes {
                        left: a.type_name(),
                        right: b.type_name(),
                    });
                }
                _ => false,
            }
        } else {
            match (a, b) {
                (Val::Bool(x), Val::Bool(y)) => x == y,
                (Val::Int(x), Val::Int(y)) => x == y,
                (Val::Byte(x), Val::Byte(y)) => x == y,
                (Val::Str(x), Val::Str(y)) => x == y,
                _ => {
                    // Go compares the rest only against nil.
                    let same_kind = std::mem::discriminant(a) == std::mem::discriminant(b);
                    if !same_kind && a.is_valid() && b.is_valid() {
                        return Err(CallError::NonComparableTypes {
                            left: display(a, 's').into(),
                            left_type: a.type_name(),
                            right_type: b.type_name(),
                            right: display(b, 'v').into(),
                        });
                    }
                    if a.is_valid() && b.is_valid() {
                        return Err(CallError::NonComparableType {
                            value: display(b, 's').into(),
                            ty: b.type_name(),
                        });
                    }
                    !a.is_valid() && !b.is_valid()
                }
            }
        };
        if truth {
            return Ok(true);
        }
    }
    Ok(false)
}

fn lt(a: &Val<'_>, b: &Val<'_>) -> Result<bool, CallError> {
    let (k1, k2) = (basic_kind(a), basic_kind(b));
    if k1 == Kind::Other || k2 == Kind::Other {
        return Err(CallError::BadComparisonType);
    }
    match (a, b) {
        (Val::Int(x), Val::Byte(y)) => Ok(*x < i64::from(*y)),
        (Val::Byte(x), Val::Int(y)) => Ok(i64::from(*x) < *y),
        (Val::Int(x), Val::Int(y)) => Ok(x < y),
        (Val::Byte(x), Val::Byte(y)) => Ok(x < y),
        (Val::Str(x), Val::Str(y)) => Ok(x < y),
        (Val::Bool(_), Val::Bool(_)) => Err(CallError::BadComparisonType),
        _ => Err(CallError::IncompatibleTypes {
            left: a.type_name(),
            right: b.type_name(),
        }),
    }
}

fn le(a: &Val<'_>, b: &Val<'_>) -> Result<bool, CallError> {
    if lt(a, b)? {
        return Ok(true);
    }
    eq(a, std::slice::from_ref(b))
}

// ---------------------------------------------------------------------------------------
// Printing (Go's fmt for the values above)
// ---------------------------------------------------------------------------------------

/// Prints `v` as `fmt` does with `verb` (one of `s v d q`).
fn write_value(out: &mut String, verb: char, v: &Val<'_>) -> Result<(), RenderErrorKind> {
    match v {
        Val::Root => return Err(RenderErrorKind::PrintData),
        Val::Invalid if verb == 'v' => out.push_str("<nil>"),
        Val::Invalid => {
            let _ = write!(out, "%!{verb}(<nil>)");
        }
        Val::Str(s) => write_str(out, verb, s),
        Val::Int(i) => match verb {
            'v' | 'd' => {
                let _ = write!(out, "{i}");
            }
            'q' => quote_rune(out, *i),
            _ => {
                let _ = write!(out, "%!{verb}(int={i})");
            }
        },
        Val::Byte(b) => match verb {
            'v' | 'd' => {
                let _ = write!(out, "{b}");
            }
            'q' => quote_rune(out, i64::from(*b)),
            _ => {
                let _ = write!(out, "%!{verb}(uint8={b})");
            }
        },
        Val::Bool(b) => {
            if verb == 'v' {
                let _ = write!(out, "{b}");
            } else {
                let _ = write!(out, "%!{verb}(bool={b})");
            }
        }
        Val::List(list) => {
            out.push('[');
            for (i, s) in list.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                write_str(out, verb, s);
            }
            out.push(']');
        }
        Val::Map(map) => {
            out.push_str("map[");
            for (i, (k, s)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                write_str(out, verb, k);
                out.push(':');
                write_str(out, verb, s);
            }
            out.push(']');
        }
    }
    Ok(())
}

fn write_str(out: &mut String, verb: char, s: &str) {
    match verb {
        's' | 'v' => out.push_str(s),
        'q' => quote_into(out, s, '"'),
        _ => {
            let _ = write!(out, "%!{verb}(string={s})");
        }
    }
}

/// For error messages, where the data value cannot fail the message.
fn display(v: &Val<'_>, verb: char) -> String {
    let mut s = String::new();
    if write_value(&mut s, verb, v).is_err() {
        s = "{...}".to_owned();
    }
    s
}

fn check_size(s: String) -> Result<String, RenderErrorKind> {
    if s.len() > MAX_OUTPUT {
        let limit = MAX_OUTPUT;
        return Err(RenderErrorKind::OutputTooLarge { limit });
    }
    Ok(s)
}

/// `fmt.Sprint`: a space between operands when neither is a string.
fn sprint(args: &[Val<'_>]) -> Result<String, RenderErrorKind> {
    let mut out = String::new();
    let mut prev_string = false;
    for (i, arg) in args.iter().enumerate() {
        let is_string = matches!(arg, Val::Str(_));
        if i > 0 && !is_string && !prev_string {
            out.push(' ');
        }
        write_value(&mut out, 'v', arg)?;
        prev_string = is_string;
        if out.len() > MAX_OUTPUT {
            break;
        }
    }
    check_size(out)
}

/// `fmt.Sprintln`: spaces between all operands, and a newline.
fn sprintln(args: &[Val<'_>]) -> Result<String, RenderErrorKind> {
    let mut out = String::new();
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        write_value(&mut out, 'v', arg)?;
        if out.len() > MAX_OUTPUT {
            break;
        }
    }
    out.push('\n');
    check_size(out)
}

/// `fmt.Sprintf` for the verbs `%s %v %d %q` and `%%`, with Go's `%!verb(...)` reports.
fn sprintf(format: &str, args: &[Val<'_>]) -> Result<String, RenderErrorKind> {
    if !format_supported(format) {
        let format = format.to_owned();
        return Err(RenderErrorKind::UnsupportedFormat { format });
    }
    let mut out = String::new();
    let mut next_arg = args.iter();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if out.len() > MAX_OUTPUT {
            break;
        }
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(verb) => match next_arg.next() {
                Some(arg) => write_value(&mut out, verb, arg)?,
                None => {
                    let _ = write!(out, "%!{verb}(MISSING)");
                }
            },
            None => {}
        }
    }
    let extra: Vec<&Val<'_>> = next_arg.collect();
    if !extra.is_empty() {
        out.push_str("%!(EXTRA ");
        for (i, arg) in extra.into_iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            if arg.is_valid() {
                let _ = write!(out, "{}=", arg.type_name());
                write_value(&mut out, 'v', arg)?;
            } else {
                out.push_str("<nil>");
            }
        }
        out.push(')');
    }
    check_size(out)
}

/// Go's `strconv.Quote` (`quote` `"`) and `QuoteRune` (`quote` `'`).
fn quote_into(out: &mut String, s: &str, quote: char) {
    out.push(quote);
    for c in s.chars() {
        if c == quote || c == '\\' {
            out.push('\\');
            out.push(c);
            continue;
        }
        if is_go_print(c) {
            out.push(c);
            continue;
        }
        let _ = match c {
            '\x07' => write!(out, "\\a"),
            '\x08' => write!(out, "\\b"),
            '\x0c' => write!(out, "\\f"),
            '\n' => write!(out, "\\n"),
            '\r' => write!(out, "\\r"),
            '\t' => write!(out, "\\t"),
            '\x0b' => write!(out, "\\v"),
            c if u32::from(c) < 0x20 || c == '\x7f' => write!(out, "\\x{:02x}", u32::from(c)),
            c if u32::from(c) < 0x10000 => write!(out, "\\u{:04x}", u32::from(c)),
            c => write!(out, "\\U{:08x}", u32::from(c)),
        };
    }
    out.push(quote);
}

fn quote_rune(out: &mut String, r: i64) {
    let c = u32::try_from(r)
        .ok()
        .and_then(char::from_u32)
        .unwrap_or(char::REPLACEMENT_CHARACTER);
    let mut buf = [0u8; 4];
    quote_into(out, c.encode_utf8(&mut buf), '\'');
}

fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    quote_into(&mut out, s, '"');
    out
}

/// `%#U`: `U+0023 '#'`.
fn go_unicode(c: &char) -> String {
    let code = u32::from(*c);
    if is_go_print(*c) {
        format!("U+{code:04X} '{c}'")
    } else {
        format!("U+{code:04X}")
    }
}

/// Go's `strconv.IsPrint`: letters, marks, numbers, punctuation, symbols and ASCII space.
/// Exact for ASCII; elsewhere it excludes controls, spaces, format characters and private
/// use, which is what label values and PromQL can contain.
fn is_go_print(c: char) -> bool {
    if c.is_ascii() {
        return c == ' ' || c.is_ascii_graphic();
    }
    let u = u32::from(c);
    let format = matches!(
        u,
        0xAD | 0x600..=0x605
            | 0x61C
            | 0x6DD
            | 0x70F
            | 0x890..=0x891
            | 0x8E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    );
    let private_or_non_char = matches!(u, 0xE000..=0xF8FF | 0xF0000..=0x10FFFF | 0xFDD0..=0xFDEF)
        || (u & 0xFFFE) == 0xFFFE;
    !(c.is_control() || c.is_whitespace() || format || private_or_non_char)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn list(items: &[&str]) -> Value {
        Value::List(items.iter().map(|s| (*s).to_owned()).collect())
    }

    fn map(pairs: &[(&str, &str)]) -> Value {
        Value::Map(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn s(v: &str) -> Value {
        Value::Str(v.to_owned())
    }

    /// prometheus-adapter's args for `pods/*/http_requests_per_second` in `somens` for p1, p2
    /// (the example in docs/config.md, with current label names).
    fn pods() -> Data {
        Data::from([
            ("Series", s("http_requests_total")),
            ("LabelMatchers", s(r#"namespace="somens",pod=~"p1|p2""#)),
            (
                "LabelValuesByName",
                map(&[("namespace", "somens"), ("pod", "p1|p2")]),
            ),
            ("GroupBy", s("pod")),
            ("GroupBySlice", list(&["pod"])),
        ])
    }

    #[track_caller]
    fn check(src: &str, data: &Data, expected: &str) {
        let template = match Template::parse(src) {
            Ok(t) => t,
            Err(e) => panic!("parse {src:?}: {e}"),
        };
        match template.render(data) {
            Ok(out) => assert_eq!(out, expected, "template {src:?}"),
            Err(e) => panic!("render {src:?}: {e}"),
        }
    }

    #[track_caller]
    fn check_parse_error(src: &str, offset: usize, message: &str) {
        match Template::parse(src) {
            Ok(_) => panic!("{src:?} parsed"),
            Err(e) => {
                let TemplateError::Parse { kind, .. } = &e else {
                    panic!("{src:?}: not a parse error: {e}");
                };
                assert_eq!(
                    (e.offset(), kind.to_string().as_str()),
                    (Some(offset), message),
                    "{src:?}"
                );
            }
        }
    }

    #[track_caller]
    fn check_render_error(src: &str, data: &Data, offset: usize, message: &str) {
        let template = Template::parse(src).unwrap_or_else(|e| panic!("parse {src:?}: {e}"));
        match template.render(data) {
            Ok(out) => panic!("{src:?} rendered {out:?}"),
            Err(e) => {
                let TemplateError::Render { kind, .. } = &e else {
                    panic!("{src:?}: not a render error: {e}");
                };
                assert_eq!(
                    (e.offset(), kind.to_string().as_str()),
                    (Some(offset), message),
                    "{src:?}"
                );
            }
        }
    }

    /// Rendered against [`pods`]; expectations are what Go's text/template prints.
    const CASES: &[(&str, &str)] = &[
        // Text and fields.
        ("", ""),
        ("plain text", "plain text"),
        ("<<.Series>>", "http_requests_total"),
        (
            "sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)",
            r#"sum(rate(http_requests_total{namespace="somens",pod=~"p1|p2"}[2m])) by (pod)"#,
        ),
        ("<<.GroupBySlice>>", "[pod]"),
        ("<<.LabelValuesByName>>", "map[namespace:somens pod:p1|p2]"),
        ("<<.LabelValuesByName.pod>>", "p1|p2"),
        ("<<.LabelValuesByName.missing>>", "<no value>"),
        ("<<$.Series>>", "http_requests_total"),
        ("<< .Series >>", "http_requests_total"),
        ("<<.Series\n>>", "http_requests_total"),
        ("a>>b<<.GroupBy>>c>d", "a>>bpodc>d"),
        ("{{.Series}}", "{{.Series}}"),
        // index.
        (r#"<<index .LabelValuesByName "pod">>"#, "p1|p2"),
        (r#"<<index .LabelValuesByName "nope">>"#, ""),
        ("<<index .GroupBySlice 0>>", "pod"),
        ("<<index .Series 0>>", "104"),
        ("<<index .GroupBySlice 0 1>>", "111"),
        ("<<index .GroupBySlice>>", "[pod]"),
        (r#"<<"pod" | index .LabelValuesByName>>"#, "p1|p2"),
        // Literals and printing.
        (r#"<<"a\tb\x41\u00e9\101">>"#, "a\tbAéA"),
        ("<<`raw\\n`>>", "raw\\n"),
        ("<<`a\r\nb`>>", "a\nb"),
        ("<<42>>", "42"),
        ("<<-7>>", "-7"),
        ("<<0x1F>>", "31"),
        ("<<0o17>>", "15"),
        ("<<017>>", "15"),
        ("<<1_000>>", "1000"),
        ("<<true>>", "true"),
        ("<<print>>", ""),
        (r#"<<print "a" "b" 1 2 "c" 3>>"#, "ab1 2c3"),
        ("<<print .GroupBySlice .GroupBySlice>>", "[pod] [pod]"),
        ("<<print nil .LabelValuesByName.x>>", "<nil> <nil>"),
        ("<<println 1 \"a\">>", "1 a\n"),
        // printf.
        (r#"<<printf "%s-%v-%d-%q" "a" "b" 3 "c">>"#, r#"a-b-3-"c""#),
        (
            r#"<<printf "%s_total" .Series>>"#,
            "http_requests_total_total",
        ),
        (
            r#"<<.Series | printf "%s:%s" "x">>"#,
            "x:http_requests_total",
        ),
        (r#"<<printf "%q" .GroupBySlice>>"#, r#"["pod"]"#),
        (
            r#"<<printf "%q" .LabelValuesByName>>"#,
            r#"map["namespace":"somens" "pod":"p1|p2"]"#,
        ),
        (r#"<<printf "%d" "x">>"#, "%!d(string=x)"),
        (r#"<<printf "%s" 5>>"#, "%!s(int=5)"),
        (r#"<<printf "%d" .GroupBySlice>>"#, "[%!d(string=pod)]"),
        (r#"<<printf "%s %s" "a">>"#, "a %!s(MISSING)"),
        (r#"<<printf "%s" "a" 1 "b">>"#, "a%!(EXTRA int=1, string=b)"),
        (r#"<<printf "100%%">>"#, "100%"),
        (r#"<<printf "%q" 97>>"#, "'a'"),
        (r#"<<printf "%q" -1>>"#, "'\u{FFFD}'"),
        (r#"<<printf "%v %s" true true>>"#, "true %!s(bool=true)"),
        (r#"<<printf "%s" nil>>"#, "%!s(<nil>)"),
        (
            r#"<<printf "%q" "a\"b\\c\n\x01é\u200b">>"#,
            r#""a\"b\\c\n\x01é\u200b""#,
        ),
        (r#"<<"%s-x" | printf>>"#, "%!s(MISSING)-x"),
        // Comparisons and logic.
        (r#"<<eq .GroupBy "pod">>"#, "true"),
        (r#"<<eq .GroupBy "a" "b" "pod">>"#, "true"),
        (r#"<<ne .GroupBy "pod">>"#, "false"),
        (
            "<<lt 1 2>> <<le 2 2>> <<gt 1 2>> <<ge 2 3>>",
            "true true false false",
        ),
        (r#"<<lt "a" "b">>"#, "true"),
        ("<<eq (index .Series 0) 104>>", "true"),
        ("<<eq .LabelValuesByName.x nil>>", "true"),
        (r#"<<eq .LabelValuesByName.x "">>"#, "false"),
        ("<<not .GroupBy>> <<not \"\">>", "false true"),
        (
            r#"<<and .GroupBy "x">>|<<and "" "x">>|<<or "" "y">>|<<or "" "">>"#,
            "x||y|",
        ),
        ("<<and 1 0 .Missing>>", "0"),
        ("<<or 1 .Missing>>", "1"),
        (
            "<<len .GroupBySlice>> <<len .Series>> <<len .LabelValuesByName>>",
            "1 19 2",
        ),
        ("<<.GroupBySlice | len>>", "1"),
        // Control.
        ("<<if .GroupBy>>yes<<end>>", "yes"),
        (
            "<<if .LabelValuesByName.missing>>yes<<else>>no<<end>>",
            "no",
        ),
        (
            r#"<<if eq .GroupBy "x">>a<<else if eq .GroupBy "pod">>b<<else>>c<<end>>"#,
            "b",
        ),
        ("<<if 0>>a<<else if \"\">>b<<else>>c<<end>>", "c"),
        ("<<with .LabelValuesByName>><<.pod>><<end>>", "p1|p2"),
        (
            "<<with .LabelValuesByName.missing>>x<<else>>none<<end>>",
            "none",
        ),
        ("<<with \"\">>x<<else with .GroupBy>><<.>><<end>>", "pod"),
        ("<<with $x := .GroupBy>><<$x>>/<<.>><<end>>", "pod/pod"),
        ("<<range .GroupBySlice>>[<<.>>]<<end>>", "[pod]"),
        (
            "<<range $i, $v := .GroupBySlice>><<if $i>>,<<end>><<$v>><<end>>",
            "pod",
        ),
        (
            "<<range $k, $v := .LabelValuesByName>><<$k>>=<<$v>>;<<end>>",
            "namespace=somens;pod=p1|p2;",
        ),
        (
            "<<range $v := .LabelValuesByName>><<$v>>;<<end>>",
            "somens;p1|p2;",
        ),
        (
            "<<range .LabelValuesByName.missing>>x<<else>>empty<<end>>",
            "empty",
        ),
        (
            "<<range $i, $v := .GroupBySlice>><<$i>><<end>><<.GroupBy>>",
            "0pod",
        ),
        (
            "<<$x := 1>><<range .GroupBySlice>><<$x = 2>><<end>><<$x>>",
            "2",
        ),
        (
            "<<range $k, $v := .LabelValuesByName>><<if eq $k \"namespace\">><<continue>><<end>><<$v>><<end>>",
            "p1|p2",
        ),
        (
            "<<range .LabelValuesByName>><<.>><<break>><<end>>",
            "somens",
        ),
        ("<<$x := .Series>><<$x>>", "http_requests_total"),
        ("<<$x := 1>><<if true>><<$x := 2>><<$x>><<end>><<$x>>", "21"),
        ("<<(.LabelValuesByName).pod>>", "p1|p2"),
        ("<<(print \"a\" | printf \"%s!\")>>", "a!"),
        (
            "<<print (len .GroupBySlice) (index .GroupBySlice 0)>>",
            "1pod",
        ),
        // Trim markers and comments.
        ("a  <<- .GroupBy>>  b", "apod  b"),
        ("a  <<.GroupBy ->>  \n b", "a  podb"),
        ("a \n\t<<- .GroupBy ->> \n\tb", "apodb"),
        ("<<- /* note */ ->>x", "x"),
        ("a <</* note */>> b", "a  b"),
        ("a <<- /* multi\nline */>> b", "a b"),
        ("<<-3>>", "-3"),
        ("<<3 ->>  x", "3x"),
        ("<<3  ->>  x", "3x"),
        ("x <<-\t.GroupBy\t->>\ty", "xpody"),
    ];

    #[test]
    fn case_table() {
        let data = pods();
        for (src, expected) in CASES {
            check(src, &data, expected);
        }
    }

    /// Resource label templates: prometheus-adapter renders them with `Group` and `Resource`.
    #[test]
    fn resource_templates() {
        let data = Data::from([("Group", s("apps")), ("Resource", s("deployment"))]);
        // docs/config.md
        check(
            "kube_<<.Group>>_<<.Resource>>",
            &data,
            "kube_apps_deployment",
        );
        // docs/config-walkthrough.md
        check("kubernetes_<<.Resource>>", &data, "kubernetes_deployment");
        // docs/sample-config.yaml, deploy manifests
        check("<<.Resource>>", &data, "deployment");
    }

    /// metricsQuery strings from prometheus-adapter's docs, manifests, tests and issue
    /// threads, with the data it would pass and the query Go renders.
    #[test]
    fn real_world_queries() {
        let custom = pods();
        let external = Data::from([
            ("Series", s("queue_consumer_lag")),
            ("LabelMatchers", s(r#"name="orders",namespace="default""#)),
            (
                "LabelValuesByName",
                map(&[("name", "orders"), ("namespace", "default")]),
            ),
            ("GroupBy", s("")),
            ("GroupBySlice", list(&[])),
        ]);
        let rendered_pods = r#"namespace="somens",pod=~"p1|p2""#;
        let cases: &[(&str, &Data, String)] = &[
            // docs/config.md (and pkg/config/default.go's rule, with `<< >>` delimiters)
            (
                r#"sum(rate(<<.Series>>{<<.LabelMatchers>>,container_name!="POD"}[2m])) by (<<.GroupBy>>)"#,
                &custom,
                format!(r#"sum(rate(http_requests_total{{{rendered_pods},container_name!="POD"}}[2m])) by (pod)"#),
            ),
            // docs/sample-config.yaml, first rule
            (
                r#"sum(rate(<<.Series>>{<<.LabelMatchers>>,container!="POD"}[2m])) by (<<.GroupBy>>)"#,
                &custom,
                format!(r#"sum(rate(http_requests_total{{{rendered_pods},container!="POD"}}[2m])) by (pod)"#),
            ),
            // docs/sample-config.yaml and docs/externalmetrics.md, externalRules
            (
                "sum(<<.Series>>{<<.LabelMatchers>>}) by (name)",
                &external,
                r#"sum(queue_consumer_lag{name="orders",namespace="default"}) by (name)"#.to_owned(),
            ),
            // docs/sample-config.yaml, the cheddar rule (no actions at all)
            (r#"count(cheddar{sharp="true"})"#, &custom, r#"count(cheddar{sharp="true"})"#.to_owned()),
            // docs/config-walkthrough.md
            (
                "sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)",
                &custom,
                format!("sum(rate(http_requests_total{{{rendered_pods}}}[2m])) by (pod)"),
            ),
            // deploy/manifests/custom-metrics-config-map.yaml (YAML folds the line break)
            (
                r#"sum(rate(<<.Series>>{<<.LabelMatchers>>,container_name!="POD"}[5m])) by (<<.GroupBy>>)"#,
                &custom,
                format!(r#"sum(rate(http_requests_total{{{rendered_pods},container_name!="POD"}}[5m])) by (pod)"#),
            ),
            // deploy/manifests/custom-metrics-config-map.yaml, non-cumulative rule
            (
                r#"sum(<<.Series>>{<<.LabelMatchers>>,container_name!="POD"}) by (<<.GroupBy>>)"#,
                &custom,
                format!(r#"sum(http_requests_total{{{rendered_pods},container_name!="POD"}}) by (pod)"#),
            ),
            // deploy/manifests/config-map.yaml, resourceRules.cpu.containerQuery (block scalar)
            (
                "sum by (<<.GroupBy>>) (\n  irate (\n      container_cpu_usage_seconds_total{<<.LabelMatchers>>,container!=\"\",pod!=\"\"}[4m]\n  )\n)\n",
                &custom,
                format!("sum by (pod) (\n  irate (\n      container_cpu_usage_seconds_total{{{rendered_pods},container!=\"\",pod!=\"\"}}[4m]\n  )\n)\n"),
            ),
            // deploy/manifests/config-map.yaml, resourceRules.memory.nodeQuery
            (
                "sum by (<<.GroupBy>>) (\n  node_memory_working_set_bytes{<<.LabelMatchers>>}\n)\n",
                &custom,
                format!("sum by (pod) (\n  node_memory_working_set_bytes{{{rendered_pods}}}\n)\n"),
            ),
            // issue #297 (both attempts parse; the second is bad PromQL, not a bad template)
            (
                "avg(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
                &custom,
                format!("avg(http_requests_total{{{rendered_pods}}}) by (pod)"),
            ),
            (
                "avg(<<.Series>>{<<.LabelMatchers>>} by (<<.GroupBy>>))",
                &custom,
                format!("avg(http_requests_total{{{rendered_pods}}} by (pod))"),
            ),
            // issue #194
            (
                r#"avg(jvm_memory_bytes_used{app=~".*smp-core.*",area="heap"}) by (release)"#,
                &custom,
                r#"avg(jvm_memory_bytes_used{app=~".*smp-core.*",area="heap"}) by (release)"#.to_owned(),
            ),
            // issue #219
            (
                r#"sum({__name__=~"my_metrics.*",someId="someId"})"#,
                &custom,
                r#"sum({__name__=~"my_metrics.*",someId="someId"})"#.to_owned(),
            ),
            // PR #146: an external rule with no matchers renders `{}` and `by ()`
            (
                "sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)",
                &Data::from([
                    ("Series", s("http_requests_per_second")),
                    ("LabelMatchers", s("")),
                    ("GroupBy", s("")),
                ]),
                "sum(rate(http_requests_per_second{}[2m])) by ()".to_owned(),
            ),
            // a Helm values file using delta
            (
                "sum(delta(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)",
                &custom,
                format!("sum(delta(http_requests_total{{{rendered_pods}}}[1m])) by (pod)"),
            ),
            // deckhouse's adapter config: `$1` and regex text pass through untouched
            (
                r#"label_replace(<<.Series>>{<<.LabelMatchers>>}, "__name__", "$1", "__name__", "^kube_adapter_metric_(.*)$")"#,
                &external,
                r#"label_replace(queue_consumer_lag{name="orders",namespace="default"}, "__name__", "$1", "__name__", "^kube_adapter_metric_(.*)$")"#.to_owned(),
            ),
        ];
        for (src, data, expected) in cases {
            check(src, data, expected);
        }
    }

    /// pkg/naming/metrics_query_test.go: the templates and what Go's tests expect.
    #[test]
    fn prometheus_adapter_unit_tests() {
        let names = |values: &[(&str, &str)], group_by: &[&str]| {
            Data::from([
                ("Series", s("foo")),
                ("LabelMatchers", s("")),
                ("LabelValuesByName", map(values)),
                ("GroupBy", s(&group_by.join(","))),
                ("GroupBySlice", list(group_by)),
            ])
        };
        check("series <<.Series>>", &names(&[], &[]), "series foo");
        let one = names(&[("resource", "bar")], &["resource"]);
        check(r#"<<index .LabelValuesByName "resource">>"#, &one, "bar");
        let many = names(
            &[("namespaces", "default"), ("resource", "bar|baz")],
            &["resource", "extra", "groups"],
        );
        check(
            r#"<<index .LabelValuesByName "resource">>"#,
            &many,
            "bar|baz",
        );
        check(
            r#"<<index .LabelValuesByName "namespaces">> <<index .LabelValuesByName "resource">>"#,
            &many,
            "default bar|baz",
        );
        check("<<.GroupBy>>", &many, "resource,extra,groups");
        check("<<.GroupBySlice>>", &one, "[resource]");
        check("<<.GroupBySlice>>", &many, "[resource extra groups]");
        let ext = names(&[("namespaces", "default")], &["foo", "bar"]);
        check(
            r#"<<index .LabelValuesByName "namespaces">> <<.GroupBySlice>>"#,
            &ext,
            "default [foo bar]",
        );
        check(
            "<<.LabelValuesByName>>",
            &names(&[("foo", "bar|baz")], &[]),
            "map[foo:bar|baz]",
        );
    }

    #[test]
    fn parse_errors() {
        let cases: &[(&str, usize, &str)] = &[
            ("sum(<<.Series", 4, "unclosed action"),
            ("x <<.Series\n  ", 2, "unclosed action"),
            ("<<", 0, "unclosed action"),
            ("ab<<end>>", 2, "unexpected {{end}}"),
            ("<<else>>", 0, "unexpected {{else}}"),
            ("<<if .A>>x", 0, "unexpected EOF"),
            ("a<<range .A>><<if .B>>x<<end>>", 1, "unexpected EOF"),
            (
                "<<if .A>>a<<else>>b<<else>>c<<end>>",
                19,
                "expected end; found {{else}}",
            ),
            (
                r#"<<join .GroupBySlice ",">>"#,
                2,
                r#"function "join" not defined"#,
            ),
            ("<<html .Series>>", 2, r#"function "html" is not supported"#),
            ("<<.Series-foo>>", 2, "bad character U+002D '-'"),
            ("<<.Series#>>", 2, "bad character U+0023 '#'"),
            ("<<..Series>>", 2, r#"unexpected . after term ".""#),
            (r#"<<"a".Foo>>"#, 2, r#"unexpected . after term "\"a\"""#),
            ("<<.Series.>>", 9, "unexpected <.> in operand"),
            ("<<.A #>>", 5, r##"unexpected "#" in operand"##),
            ("<<.A end>>", 5, "unexpected <end> in operand"),
            ("<<end x>>", 6, r#"unexpected "x" in end"#),
            ("<<else x>>", 7, r#"unexpected "x" in else"#),
            ("<<$x>>", 2, r#"undefined variable "$x""#),
            (
                "<<if $x := 1>><<end>><<$x>>",
                23,
                r#"undefined variable "$x""#,
            ),
            ("<<>>", 2, "missing value for command"),
            ("<<if>><<end>>", 4, "missing value for if"),
            ("<<range>><<end>>", 7, "missing value for range"),
            ("<<.A | | .B>>", 7, r#"unexpected "|" in command"#),
            (
                r#"<<.A | "x">>"#,
                7,
                "non executable command in pipeline stage 2",
            ),
            ("<<(.A>>", 0, "unclosed left paren"),
            ("<<.A)>>", 4, "unexpected right paren"),
            ("<<.A : 1>>", 5, "expected :="),
            ("<<$x : 1>>", 2, r#"undefined variable "$x""#),
            ("<<\"abc>>", 2, "unterminated quoted string"),
            ("<<`abc>>", 2, "unterminated raw quoted string"),
            ("<<'a>>", 2, "unterminated character constant"),
            ("<<'a'>>", 2, "a character constant is not supported"),
            (r#"<<"\q">>"#, 2, "invalid syntax"),
            (
                r#"<<"\xff">>"#,
                2,
                "a string literal that is not UTF-8 is not supported",
            ),
            ("<<3x>>", 2, r#"bad number syntax: "3x""#),
            ("<<3->>", 2, r#"bad number syntax: "3-""#),
            ("<<1.5>>", 2, "a floating-point constant is not supported"),
            ("<<1+2i>>", 2, "a complex constant is not supported"),
            ("<<+>>", 2, r#"illegal number syntax: "+""#),
            (
                "<<99999999999999999999>>",
                2,
                r#"integer overflow: "99999999999999999999""#,
            ),
            ("<<089>>", 2, r#"integer overflow: "089""#),
            ("<</* x", 0, "unclosed comment"),
            ("<</* x */ >>", 0, "comment ends before closing delimiter"),
            ("<<break>>", 2, "{{break}} outside {{range}}"),
            (
                "<<range .A>><<end>><<continue>>",
                21,
                "{{continue}} outside {{range}}",
            ),
            (
                "<<if $a, $b := .X>><<end>>",
                7,
                "too many declarations in if",
            ),
            (
                "<<range $a, 1>><<end>>",
                12,
                "range can only initialize variables",
            ),
            ("<<template \"x\">>", 2, "{{template}} is not supported"),
            ("<<define \"x\">><<end>>", 2, "{{define}} is not supported"),
            ("<<block \"x\" .>><<end>>", 2, "{{block}} is not supported"),
            ("<<\u{1}>>", 2, "unrecognized character in action: U+0001"),
            (
                r#"<<printf "%5s" .A>>"#,
                9,
                r#"printf format "%5s" is not supported (only %s, %v, %d, %q and %% without flags)"#,
            ),
            ("<<.A | ", 0, "unclosed action"),
            ("<<.A \"aaaaaaaaaaaaaa\" |", 0, "unclosed action"),
            ("<<:=>>", 2, r#"unexpected ":=" in command"#),
            ("<<if .A>>x<<else if>><<end>>", 19, "missing value for if"),
        ];
        for (src, offset, message) in cases {
            check_parse_error(src, *offset, message);
        }
    }

    #[test]
    fn parse_error_display_has_line_and_column() {
        let e = Template::parse("a\nb <<.X").unwrap_err();
        assert_eq!(e.to_string(), "template: 2:2: unclosed action");
        assert_eq!(e.offset(), Some(4));
        let e = Template::parse("<<join .A>>").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"template: 1:2: function "join" not defined"#
        );
    }

    #[test]
    fn long_tokens_are_shortened_like_go() {
        check_parse_error(
            r#"<<.A "abcdefghijklm" #>>"#,
            21,
            r##"unexpected "#" in operand"##,
        );
        check_parse_error(
            r#"<<if .A>><<end "abcdefghijklm">>"#,
            15,
            r#"unexpected "\"abcdefghi"... in end"#,
        );
    }

    #[test]
    fn render_errors() {
        let data = pods();
        let cases: &[(&str, usize, &str)] = &[
            ("sum(<<.Foo>>)", 6, "can't evaluate field Foo"),
            (
                "<<.Series.Foo>>",
                2,
                "can't evaluate field Foo in type string",
            ),
            (
                "<<range .GroupBySlice>><<.Name>><<end>>",
                25,
                "can't evaluate field Name in type string",
            ),
            (
                r#"<<.Series "x">>"#,
                2,
                "Series has arguments but cannot be invoked as function",
            ),
            (
                r#"<<.LabelValuesByName.pod "x">>"#,
                2,
                "pod is not a method but has arguments",
            ),
            (
                r#"<<"a" | .Series>>"#,
                8,
                "Series has arguments but cannot be invoked as function",
            ),
            ("<<1 2>>", 2, "can't give argument to non-function 1"),
            ("<<nil>>", 2, "nil is not a command"),
            ("<<if true>><<$x := 1>><<else>><<$x>><<end>>", 0, ""),
            (
                "<<not 1 2>>",
                2,
                "wrong number of args for not: want 1 got 2",
            ),
            (
                "<<1 | len 2>>",
                6,
                "wrong number of args for len: want 1 got 2",
            ),
            (
                "<<and>>",
                2,
                "wrong number of args for and: want at least 1 got 0",
            ),
            (
                "<<eq 1>>",
                2,
                "error calling eq: missing argument for comparison",
            ),
            (
                r#"<<eq 1 "a">>"#,
                2,
                "error calling eq: incompatible types for comparison: int and string",
            ),
            (
                "<<eq .GroupBySlice .GroupBySlice>>",
                2,
                "error calling eq: non-comparable type [pod]: []string",
            ),
            (
                "<<eq .GroupBySlice .LabelValuesByName>>",
                2,
                "error calling eq: non-comparable types [pod]: []string, map[string]string: map[namespace:somens pod:p1|p2]",
            ),
            (
                "<<lt true false>>",
                2,
                "error calling lt: invalid type for comparison",
            ),
            (
                "<<lt .GroupBySlice 1>>",
                2,
                "error calling lt: invalid type for comparison",
            ),
            (
                r#"<<gt 1 "a">>"#,
                2,
                "error calling gt: incompatible types for comparison: int and string",
            ),
            (
                "<<index .GroupBySlice 5>>",
                2,
                "error calling index: index out of range: 5",
            ),
            (
                "<<index .GroupBySlice 1>>",
                2,
                "error calling index: reflect: slice index out of range",
            ),
            (
                "<<index .GroupBySlice -1>>",
                2,
                "error calling index: index out of range: -1",
            ),
            (
                r#"<<index .GroupBySlice "a">>"#,
                2,
                "error calling index: cannot index slice/array with type string",
            ),
            (
                "<<index .LabelValuesByName 1>>",
                2,
                "error calling index: value has type int; should be string",
            ),
            (
                "<<index .LabelValuesByName nil>>",
                2,
                "error calling index: value is nil; should be of type string",
            ),
            (
                "<<index nil 1>>",
                2,
                "error calling index: index of untyped nil",
            ),
            (
                "<<index 1 1>>",
                2,
                "error calling index: can't index item of type int",
            ),
            ("<<len 3>>", 2, "error calling len: len of type int"),
            (
                "<<len .LabelValuesByName.x>>",
                2,
                "error calling len: reflect: call of reflect.Value.Type on zero Value",
            ),
            ("<<printf 3>>", 9, "expected string; found 3"),
            (
                "<<printf .GroupBySlice>>",
                9,
                "wrong type for value; expected string; got []string",
            ),
            ("<<printf nil>>", 9, "cannot assign nil to string"),
            (
                "<<printf .LabelValuesByName.x>>",
                9,
                "invalid value; expected string",
            ),
            ("<<printf .GroupBy 1>>", 2, ""),
            (
                "<<range .Series>>x<<end>>",
                8,
                "range can't iterate over http_requests_total",
            ),
            ("<<range 3>>x<<end>>", 8, "range can't iterate over 3"),
            ("<<.>>", 2, "can't print the template data itself"),
            ("<<print .>>", 2, "can't print the template data itself"),
        ];
        for (src, offset, message) in cases {
            let template = Template::parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
            match (template.render(&data), *message) {
                // Go renders these; they are here to pin that they do not fail.
                (Ok(_), "") => {}
                (Ok(out), _) => panic!("{src:?} rendered {out:?}"),
                (Err(e), "") => panic!("{src:?}: {e}"),
                (Err(_), _) => check_render_error(src, &data, *offset, message),
            }
        }
    }

    #[test]
    fn printf_with_a_computed_format_is_checked_at_render() {
        let data = Data::from([("F", s("%x"))]);
        check_render_error(
            "<<printf .F 1>>",
            &data,
            2,
            r#"printf format "%x" is not supported (only %s, %v, %d, %q and %% without flags)"#,
        );
    }

    #[test]
    fn render_error_display_has_context() {
        let t = Template::parse("sum(<<.Foo>>)").unwrap();
        let e = t.render(&pods()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "template: 1:6: executing at <.Foo>: can't evaluate field Foo"
        );
        let t = Template::parse("a\n <<index .GroupBySlice 9>>").unwrap();
        let e = t.render(&pods()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "template: 2:3: executing at <index .GroupBySlice 9>: error calling index: index out of range: 9"
        );
    }

    #[test]
    fn fields_lists_top_level_references() {
        let fields = |src: &str| -> Vec<String> {
            Template::parse(src).unwrap().fields().into_iter().collect()
        };
        assert_eq!(
            fields("sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)"),
            ["GroupBy", "LabelMatchers", "Series"]
        );
        assert_eq!(
            fields(r#"<<index .LabelValuesByName "pod">>"#),
            ["LabelValuesByName"]
        );
        assert_eq!(fields("<<.LabelValuesByName.pod>>"), ["LabelValuesByName"]);
        // Inside range and with, dot is the element: only `$.X` and the pipelines count.
        assert_eq!(
            fields("<<range .GroupBySlice>><<.Name>><<$.Series>><<end>>"),
            ["GroupBySlice", "Series"]
        );
        assert_eq!(fields("<<with .A>><<.B>><<else>><<.C>><<end>>"), ["A", "C"]);
        assert_eq!(fields("<<with .>><<.B>><<end>>"), ["B"]);
        assert_eq!(
            fields("<<if .A>><<.B>><<else>><<(.C).D>><<end>>"),
            ["A", "B", "C"]
        );
        assert_eq!(fields("<<print (len .Foo)>>"), ["Foo"]);
        assert!(fields("no actions").is_empty());
    }

    #[test]
    fn error_stays_small_enough_to_return_by_value() {
        // clippy's result_large_err threshold; callers wrap this error with `#[from]`.
        assert!(
            std::mem::size_of::<TemplateError>() <= 112,
            "{}",
            std::mem::size_of::<TemplateError>()
        );
    }

    #[test]
    fn source_is_kept() {
        let src = "<<- .Series ->>";
        assert_eq!(Template::parse(src).unwrap().source(), src);
    }

    #[test]
    fn missing_field_caught_by_fields_before_render() {
        let t = Template::parse("<<.Sereis>>").unwrap();
        let known = ["Series", "LabelMatchers", "GroupBy"];
        assert!(t.fields().iter().any(|f| !known.contains(&f.as_str())));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep_parens = format!("<<{}1{}>>", "(".repeat(10_000), ")".repeat(10_000));
        check_parse_error(
            &deep_parens,
            2 + MAX_DEPTH,
            "nesting deeper than 100 levels",
        );
        let deep_ifs = format!("{}x{}", "<<if 1>>".repeat(10_000), "<<end>>".repeat(10_000));
        check_parse_error(&deep_ifs, 8 * MAX_DEPTH, "nesting deeper than 100 levels");
        let else_ifs = format!("<<if 0>>{}<<end>>", "<<else if 0>>".repeat(500));
        assert!(Template::parse(&else_ifs).is_err());
        // At the limit it parses and renders.
        let ok = format!(
            "{}x{}",
            "<<if 1>>".repeat(MAX_DEPTH),
            "<<end>>".repeat(MAX_DEPTH)
        );
        check(&ok, &pods(), "x");
        let ok = format!(
            "<<{}1{}>>",
            "(".repeat(MAX_DEPTH - 1),
            ")".repeat(MAX_DEPTH - 1)
        );
        check(&ok, &pods(), "1");
    }

    #[test]
    fn nested_ranges_stop_at_the_step_budget() {
        let items: Vec<String> = (0..200).map(|i| i.to_string()).collect();
        let data = Data::from([("L", Value::List(items))]);
        let src = "<<range .L>><<range $.L>><<range $.L>><<end>><<end>><<end>>";
        let e = Template::parse(src).unwrap().render(&data).unwrap_err();
        assert!(
            matches!(
                &e,
                TemplateError::Render {
                    kind: RenderErrorKind::TooManySteps { .. },
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn output_is_capped() {
        let items: Vec<String> = (0..4096).map(|_| "x".repeat(1024)).collect();
        let data = Data::from([("L", Value::List(items))]);
        let src = "<<range .L>><<range $.L>><<.>><<end>><<end>>";
        let e = Template::parse(src).unwrap().render(&data).unwrap_err();
        assert!(
            matches!(
                &e,
                TemplateError::Render {
                    kind: RenderErrorKind::OutputTooLarge { .. },
                    ..
                }
            ),
            "{e}"
        );
        // Doubling a variable through printf hits the same cap instead of growing forever.
        let data = Data::from([("L", Value::List(vec![String::new(); 64]))]);
        let src = r#"<<$x := "ab">><<range .L>><<$x = printf "%s%s" $x $x>><<end>>"#;
        let e = Template::parse(src).unwrap().render(&data).unwrap_err();
        assert!(
            matches!(
                &e,
                TemplateError::Render {
                    kind: RenderErrorKind::OutputTooLarge { .. },
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn every_prefix_of_a_template_is_handled() {
        let src = r#"a <<- range $i, $v := .GroupBySlice ->><<if $i>>,<<end>><<printf "%q" $v | print>><</* c */>><<end>> b"#;
        for end in 0..=src.len() {
            let Some(prefix) = src.get(..end) else {
                continue;
            };
            if let Err(e) = Template::parse(prefix) {
                assert!(
                    e.offset().is_some_and(|o| o <= prefix.len()),
                    "{prefix:?}: {e}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(src in ".{0,64}") {
            if let Ok(t) = Template::parse(&src) {
                let _ = t.render(&pods());
            }
        }

        #[test]
        fn parse_never_panics_on_template_shaped_input(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("<<"), Just(">>"), Just("<<-"), Just("->>"), Just(" "), Just("."),
                    Just("$"), Just("$x"), Just(":="), Just("="), Just(","), Just("|"),
                    Just("("), Just(")"), Just("\""), Just("`"), Just("if"), Just("else"),
                    Just("end"), Just("range"), Just("with"), Just("break"), Just("index"),
                    Just("printf"), Just("\"%s\""), Just("1"), Just("-"), Just("/*"),
                    Just("*/"), Just(".Series"), Just(".GroupBySlice"), Just("nil"),
                    Just("\n"), Just("é"),
                ],
                0..24,
            )
        ) {
            let src: String = parts.concat();
            match Template::parse(&src) {
                Ok(t) => { let _ = t.render(&pods()); }
                Err(e) => prop_assert!(e.offset().is_some_and(|o| o <= src.len())),
            }
        }
    }
}
