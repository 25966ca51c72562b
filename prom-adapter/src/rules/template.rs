//! The subset of Go text/template (delimiters `<<` `>>`) that prometheus-adapter rules use.
