//! MMLU in Hugging Face parquet form (see the parent module's doc), read with
//! the `parquet` crate's record API.
//!
//! The schema is checked before any row is read, and only the four columns are
//! projected: the record API panics on column types it does not convert, so a
//! file must not reach it unchecked. Decoding runs under `catch_unwind` all the
//! same, so a corrupt file the crate does not anticipate is an error naming the
//! file, never a crash.

use std::collections::HashMap;
use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use parquet::basic::{Compression, ConvertedType, Repetition, Type as PhysicalType};
use parquet::file::metadata::RowGroupMetaData;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::{Type, TypePtr};

use crate::error::{Error, Result};
use crate::jsonl::LoadOptions;
use crate::task::Example;

const QUESTION: &str = "question";
const SUBJECT: &str = "subject";
const CHOICES: &str = "choices";
const ANSWER: &str = "answer";

fn format_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Appends the examples of one parquet file to `out`; returns how many rows were
/// skipped. `rows_per_subject` numbers each subject's rows across the files of
/// one load (the ids).
pub(super) fn load_file(
    path: &Path,
    opts: LoadOptions,
    rows_per_subject: &mut HashMap<String, usize>,
    out: &mut Vec<Example>,
) -> Result<usize> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let n_before = out.len();
    let mut counts = rows_per_subject.clone();
    let result = catch_unwind(AssertUnwindSafe(|| {
        read_rows(path, file, opts, &mut counts, out)
    }));
    match result {
        Ok(Ok(n_skipped)) => {
            *rows_per_subject = counts;
            Ok(n_skipped)
        }
        Ok(Err(e)) => Err(e),
        Err(panic) => {
            out.truncate(n_before);
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown cause");
            Err(format_err(
                path,
                format!("not a readable MMLU parquet file: the parquet decoder failed ({what})"),
            ))
        }
    }
}

fn read_rows(
    path: &Path,
    file: File,
    opts: LoadOptions,
    rows_per_subject: &mut HashMap<String, usize>,
    out: &mut Vec<Example>,
) -> Result<usize> {
    let reader = SerializedFileReader::new(file)
        .map_err(|e| format_err(path, format!("not a readable parquet file: {e}")))?;
    let projection = check_schema(path, reader.metadata().file_metadata().schema())?;
    check_codecs(path, reader.metadata().row_groups())?;
    let rows = reader
        .get_row_iter(Some(projection))
        .map_err(|e| format_err(path, format!("cannot read rows: {e}")))?;
    let mut n_skipped = 0;
    for (i, row) in rows.enumerate() {
        let n = i + 1;
        let row = row.map_err(|e| format_err(path, format!("row {n}: cannot read: {e}")))?;
        opts.keep(
            parse_row(path, n, &row, rows_per_subject),
            out,
            &mut n_skipped,
        )?;
    }
    Ok(n_skipped)
}

/// Checks that the file has the four columns with types the loader reads, and
/// returns the projection onto them (in the order question, subject, choices,
/// answer).
fn check_schema(path: &Path, root: &Type) -> Result<Type> {
    let column = |name: &str| -> Result<TypePtr> {
        root.get_fields()
            .iter()
            .find(|f| f.name() == name)
            .cloned()
            .ok_or_else(|| {
                let have: Vec<&str> = root.get_fields().iter().map(|f| f.name()).collect();
                format_err(
                    path,
                    format!(
                        "no column `{name}` (MMLU parquet needs question, subject, choices, \
                         answer; the file has {})",
                        have.join(", ")
                    ),
                )
            })
    };
    let mistyped = |name: &str, want: &str, field: &Type| {
        format_err(
            path,
            format!("column `{name}` must be {want}, found {}", describe(field)),
        )
    };
    let question = column(QUESTION)?;
    let subject = column(SUBJECT)?;
    let choices = column(CHOICES)?;
    let answer = column(ANSWER)?;
    for field in [&question, &subject] {
        if !is_string(field) || is_repeated(field) {
            return Err(mistyped(field.name(), "a string", field));
        }
    }
    let list_of_strings = || -> bool {
        if !choices.is_group()
            || is_repeated(&choices)
            || choices.get_basic_info().converted_type() != ConvertedType::LIST
        {
            return false;
        }
        let [repeated] = choices.get_fields() else {
            return false;
        };
        if !is_repeated(repeated) {
            return false;
        }
        if repeated.is_primitive() {
            // The legacy two-level form: `repeated binary element`.
            return is_string(repeated);
        }
        // The standard three-level form pyarrow writes:
        // `repeated group list { optional binary element }`.
        let name = repeated.name();
        if name == "array" || name.ends_with("_tuple") {
            return false; // a list of one-field groups, not of strings
        }
        matches!(repeated.get_fields(), [element] if is_string(element) && !is_repeated(element))
    };
    if !list_of_strings() {
        return Err(mistyped(CHOICES, "a list of strings", &choices));
    }
    if !is_integer(&answer) || is_repeated(&answer) {
        return Err(mistyped(
            ANSWER,
            "an integer (the index of the right choice)",
            &answer,
        ));
    }
    Type::group_type_builder(root.name())
        .with_fields(vec![question, subject, choices, answer])
        .build()
        .map_err(|e| format_err(path, format!("cannot project the MMLU columns: {e}")))
}

/// Only snappy (pyarrow's and so HF's default) and uncompressed data are read;
/// say so up front rather than fail on the first page with a build-feature error.
fn check_codecs(path: &Path, row_groups: &[RowGroupMetaData]) -> Result<()> {
    for chunk in row_groups.iter().flat_map(|rg| rg.columns()) {
        let codec = chunk.compression();
        let column = chunk
            .column_path()
            .parts()
            .first()
            .map_or("", String::as_str);
        if [QUESTION, SUBJECT, CHOICES, ANSWER].contains(&column)
            && !matches!(codec, Compression::SNAPPY | Compression::UNCOMPRESSED)
        {
            let name = format!("{codec:?}");
            let name = name.split('(').next().unwrap_or(&name);
            return Err(format_err(
                path,
                format!(
                    "column `{column}` is compressed with {name}; only snappy (pyarrow's \
                     default, which Hugging Face uses) and uncompressed parquet are read \
                     (rewrite it with pyarrow: pq.write_table(pq.read_table(src), dst))"
                ),
            ));
        }
    }
    Ok(())
}

fn is_repeated(field: &Type) -> bool {
    let info = field.get_basic_info();
    info.has_repetition() && info.repetition() == Repetition::REPEATED
}

fn is_string(field: &Type) -> bool {
    field.is_primitive()
        && field.get_physical_type() == PhysicalType::BYTE_ARRAY
        && matches!(
            field.get_basic_info().converted_type(),
            ConvertedType::UTF8 | ConvertedType::NONE
        )
}

fn is_integer(field: &Type) -> bool {
    if !field.is_primitive() {
        return false;
    }
    let converted = field.get_basic_info().converted_type();
    match field.get_physical_type() {
        PhysicalType::INT32 => matches!(
            converted,
            ConvertedType::NONE
                | ConvertedType::INT_8
                | ConvertedType::INT_16
                | ConvertedType::INT_32
                | ConvertedType::UINT_8
                | ConvertedType::UINT_16
                | ConvertedType::UINT_32
        ),
        PhysicalType::INT64 => matches!(
            converted,
            ConvertedType::NONE | ConvertedType::INT_64 | ConvertedType::UINT_64
        ),
        _ => false,
    }
}

/// A column's type in words, for errors.
fn describe(field: &Type) -> String {
    let converted = field.get_basic_info().converted_type();
    let annotation = if converted == ConvertedType::NONE {
        String::new()
    } else {
        format!(" ({converted})")
    };
    if field.is_primitive() {
        format!("{}{annotation}", field.get_physical_type())
    } else {
        format!("a group{annotation} of {} fields", field.get_fields().len())
    }
}

fn parse_row(
    path: &Path,
    n: usize,
    row: &Row,
    rows_per_subject: &mut HashMap<String, usize>,
) -> Result<Example> {
    let fields: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
    let [question, subject, choices, answer] = fields[..] else {
        return Err(Error::record(
            path,
            n,
            format!("expected 4 columns, read {}", fields.len()),
        ));
    };
    let subject = text(path, n, &format!("column `{SUBJECT}`"), subject)?;
    if subject.is_empty() {
        return Err(Error::record(path, n, "column `subject`: empty"));
    }
    let count = rows_per_subject.entry(subject.clone()).or_insert(0);
    *count += 1;
    let id = format!("{subject}-{count}");
    let question = text(path, n, &format!("column `{QUESTION}`"), question)?;
    let Field::ListInternal(list) = choices else {
        return Err(Error::record(
            path,
            n,
            format!(
                "column `choices`: expected a list of strings, got {}",
                show(choices)
            ),
        ));
    };
    let choices = list
        .elements()
        .iter()
        .enumerate()
        .map(|(i, f)| text(path, n, &format!("column `{CHOICES}`, item {i}"), f))
        .collect::<Result<Vec<String>>>()?;
    if choices.len() < 2 {
        return Err(Error::record(
            path,
            n,
            format!(
                "column `choices`: needs at least 2 choices, got {}",
                choices.len()
            ),
        ));
    }
    let answer = match *answer {
        Field::Byte(v) => i128::from(v),
        Field::Short(v) => i128::from(v),
        Field::Int(v) => i128::from(v),
        Field::Long(v) => i128::from(v),
        Field::UByte(v) => i128::from(v),
        Field::UShort(v) => i128::from(v),
        Field::UInt(v) => i128::from(v),
        Field::ULong(v) => i128::from(v),
        ref other => {
            return Err(Error::record(
                path,
                n,
                format!("column `answer`: expected an integer, got {}", show(other)),
            ))
        }
    };
    let Some(answer) = usize::try_from(answer).ok().filter(|&a| a < choices.len()) else {
        return Err(Error::record(
            path,
            n,
            format!(
                "column `answer`: {answer} is out of range for {} choices (0..={})",
                choices.len(),
                choices.len() - 1
            ),
        ));
    };
    let choices: Arc<[String]> = choices.into();
    Example::multiple_choice(id, question, choices, answer, Some(subject))
}

/// A string value; `what` names its column (and item) in errors.
fn text(path: &Path, n: usize, what: &str, field: &Field) -> Result<String> {
    match field {
        Field::Str(s) => Ok(s.clone()),
        Field::Bytes(b) => std::str::from_utf8(b.data())
            .map(str::to_string)
            .map_err(|_| Error::record(path, n, format!("{what}: not valid UTF-8"))),
        other => Err(Error::record(
            path,
            n,
            format!("{what}: expected a string, got {}", show(other)),
        )),
    }
}

fn show(field: &Field) -> String {
    match field {
        Field::Null => "null".into(),
        other => format!("`{other}`"),
    }
}
