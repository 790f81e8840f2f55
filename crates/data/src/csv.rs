//! A small RFC 4180 CSV reader (what the MMLU files use).
//!
//! Rules: fields are separated by `,` and records by `\n` or `\r\n`; a field
//! that starts with `"` is quoted, may hold commas and newlines, and writes a
//! literal quote as `""`; text after a closing quote up to the next separator is
//! an error.
//! Every record carries the 1-based line on which it starts.
//! An empty line is an empty record and is skipped, as is a final newline.

use std::path::Path;

use crate::error::{Error, Result};

/// One CSV record: its starting line and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvRecord {
    pub line: usize,
    pub fields: Vec<String>,
}

/// Parses the whole text of a CSV file; `path` only names the file in errors.
pub fn parse_csv(path: &Path, text: &str) -> Result<Vec<CsvRecord>> {
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1;
    let mut record_line = 1;
    let mut chars = text.chars().peekable();
    // State: at the start of a field, inside an unquoted field, inside quotes,
    // or just after a closing quote.
    let mut in_quotes = false;
    let mut after_quote = false;
    let mut field_started = false;
    let mut end_record =
        |fields: &mut Vec<String>, field: &mut String, started: bool, at: usize| {
            if started || !fields.is_empty() {
                fields.push(std::mem::take(field));
                records.push(CsvRecord {
                    line: at,
                    fields: std::mem::take(fields),
                });
            }
        };
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    in_quotes = false;
                    after_quote = true;
                }
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            ',' => {
                fields.push(std::mem::take(&mut field));
                after_quote = false;
                field_started = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                end_record(&mut fields, &mut field, field_started, record_line);
                line += 1;
                record_line = line;
                after_quote = false;
                field_started = false;
            }
            _ if after_quote => {
                return Err(Error::record(
                    path,
                    line,
                    format!("unexpected `{c}` after a closing quote"),
                ))
            }
            '"' if field.is_empty() => {
                in_quotes = true;
                field_started = true;
            }
            _ => {
                field.push(c);
                field_started = true;
            }
        }
    }
    if in_quotes {
        return Err(Error::record(
            path,
            record_line,
            "unterminated quoted field",
        ));
    }
    end_record(&mut fields, &mut field, field_started, record_line);
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Vec<(usize, Vec<String>)> {
        parse_csv(Path::new("t.csv"), text)
            .unwrap()
            .into_iter()
            .map(|r| (r.line, r.fields))
            .collect()
    }

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plain_quoted_and_multiline_fields() {
        let text = "a,b,c\r\n\"x, y\",\"say \"\"hi\"\"\",\n\"two\nlines\",,z\n\nlast";
        assert_eq!(
            fields(text),
            vec![
                (1, v(&["a", "b", "c"])),
                (2, v(&["x, y", "say \"hi\"", ""])),
                (3, v(&["two\nlines", "", "z"])),
                (6, v(&["last"])),
            ]
        );
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse_csv(Path::new("t.csv"), "a\n\"b\"c,d\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.csv:2: unexpected `c` after a closing quote"
        );
        let err = parse_csv(Path::new("t.csv"), "a\n\"open\n").unwrap_err();
        assert_eq!(err.to_string(), "t.csv:2: unterminated quoted field");
    }
}
