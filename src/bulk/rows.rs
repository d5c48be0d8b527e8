//! Reading a bulk file row by row, as request documents: CSV with a header row (columns map
//! to request fields, see [`Column`]) or NDJSON (one request object per line). Rows are
//! streamed: one row is in memory at a time, whatever the size of the file.
//!
//! Each row becomes the `org.provision.requested` document a publisher would send, with the
//! run's defaults applied (`--target`, `--template`) and, without a `request_id`, one derived
//! from the target and the key column ([`derived_request_id`]). Checking the document is not
//! done here: the caller runs the worker's own checks on it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::contract::MAX_MESSAGE_BYTES;

/// The two file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Ndjson,
}

impl Format {
    /// From the file's extension: `.csv`, or `.ndjson` / `.jsonl`.
    pub fn of_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "ndjson" | "jsonl" => Some(Format::Ndjson),
            _ => None,
        }
    }
}

/// How rows become requests: the run's defaults and the key of derived request ids.
#[derive(Clone, Debug)]
pub struct Mapping {
    pub target: Option<String>,
    pub template: Option<String>,
    /// The column (CSV) or field (NDJSON, same names) a derived request_id is made from.
    pub key_column: String,
}

/// A column of a CSV file, i.e. one request field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Column {
    RequestId,
    Target,
    Template,
    Source,
    OccurredAt,
    /// `organization.<field>` for a string field (`name`, `display_name`, ...).
    Organization(&'static str),
    /// `organization.domains`, `;`-separated.
    Domains,
    /// `organization.metadata.<key>`
    Metadata(String),
    /// `organization.branding.<key>`
    Branding(&'static str),
    /// `admin.<field>`
    Admin(&'static str),
}

const ORGANIZATION_FIELDS: &[&str] = &["name", "display_name", "description", "email", "parent_id"];
const BRANDING_FIELDS: &[&str] = &["logo_url", "primary_color", "page_background_color"];
const ADMIN_FIELDS: &[&str] = &["email", "first_name", "last_name", "phone", "locale"];

/// Every column name a CSV header may hold (`metadata.<key>` for any key).
pub const COLUMNS: &str = "request_id, name, display_name, description, email, parent_id, domains, \
    metadata.<key>, branding.logo_url, branding.primary_color, branding.page_background_color, \
    admin.email, admin.first_name, admin.last_name, admin.phone, admin.locale, target, template, source, occurred_at";

impl Column {
    /// The column a header names, or why it names none.
    pub fn parse(header: &str) -> Result<Column, String> {
        let header = header.trim();
        let lower = header.to_ascii_lowercase();
        let pick = |list: &[&'static str], name: &str| list.iter().copied().find(|f| *f == name);
        if let Some(key) = header.get("metadata.".len()..).filter(|_| lower.starts_with("metadata.")) {
            return if key.is_empty() {
                Err("metadata. needs a key: metadata.<key>".into())
            } else {
                Ok(Column::Metadata(key.to_owned()))
            };
        }
        if let Some(field) = lower.strip_prefix("branding.") {
            return pick(BRANDING_FIELDS, field)
                .map(Column::Branding)
                .ok_or_else(|| format!("unknown branding field {field:?}; known: {}", BRANDING_FIELDS.join(", ")));
        }
        if let Some(field) = lower.strip_prefix("admin.") {
            return pick(ADMIN_FIELDS, field)
                .map(Column::Admin)
                .ok_or_else(|| format!("unknown admin field {field:?}; known: {}", ADMIN_FIELDS.join(", ")));
        }
        Ok(match lower.as_str() {
            "request_id" => Column::RequestId,
            "target" => Column::Target,
            "template" => Column::Template,
            "source" => Column::Source,
            "occurred_at" => Column::OccurredAt,
            "domains" => Column::Domains,
            other => match pick(ORGANIZATION_FIELDS, other) {
                Some(field) => Column::Organization(field),
                None => return Err(format!("unknown column {header:?}; known: {COLUMNS}")),
            },
        })
    }

    /// The dotted request field of this column (`organization.name`), as checks name them.
    pub fn field(&self) -> String {
        match self {
            Column::RequestId => "request_id".into(),
            Column::Target => "target".into(),
            Column::Template => "template".into(),
            Column::Source => "source".into(),
            Column::OccurredAt => "occurred_at".into(),
            Column::Organization(f) => format!("organization.{f}"),
            Column::Domains => "organization.domains".into(),
            Column::Metadata(k) => format!("organization.metadata.{k}"),
            Column::Branding(f) => format!("organization.branding.{f}"),
            Column::Admin(f) => format!("admin.{f}"),
        }
    }
}

/// The CSV column a request field is in: `organization.` dropped (`organization.metadata.plan`
/// is column `metadata.plan`).
pub fn column_of_field(field: &str) -> String {
    field.strip_prefix("organization.").unwrap_or(field).to_owned()
}

/// One problem of a row: the column (CSV) or field (NDJSON) and what is wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub column: String,
    pub reason: String,
}

impl Problem {
    pub fn new(column: impl Into<String>, reason: impl Into<String>) -> Problem {
        Problem { column: column.into(), reason: reason.into() }
    }
}

/// One row of the file: where it starts, and its request document or why there is none.
#[derive(Debug)]
pub struct Row {
    /// Line of the file the row starts on (1 is a CSV file's header).
    pub line: u64,
    pub document: Result<Document, Vec<Problem>>,
}

/// A row's request document and the request_id it carries (given or derived).
#[derive(Debug)]
pub struct Document {
    pub request_id: String,
    /// Whether the request_id was derived (no `request_id` in the row).
    pub derived: bool,
    pub value: Value,
}

impl Document {
    /// The message payload: the document as JSON.
    pub fn payload(&self) -> Vec<u8> {
        serde_json::to_vec(&self.value).unwrap_or_default()
    }
}

/// The request_id of a row without one: `bulk-` and the first 32 hex digits of SHA-256 over
/// the target, a NUL and the key column's value. Rerunning the same file gives the same ids;
/// the same key on another target gives another id.
pub fn derived_request_id(target: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(target.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    format!("bulk-{}", &hex::encode(h.finalize())[..32])
}

/// A problem of the whole file (its header, its format): nothing can be read from it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FileError(pub String);

/// Rows of a bulk file, in order.
pub struct Rows {
    inner: Inner,
    mapping: Mapping,
    /// The file could not be read further.
    done: bool,
}

enum Inner {
    Csv {
        reader: csv::Reader<LineTracker>,
        lines: Arc<Mutex<LineStarts>>,
        columns: Vec<Column>,
        record: csv::ByteRecord,
    },
    Ndjson {
        reader: BufReader<File>,
        line: u64,
        buf: Vec<u8>,
    },
}

impl Rows {
    /// Opens `path` and, for CSV, reads and checks the header.
    pub fn open(path: &Path, format: Format, mapping: &Mapping) -> Result<Rows, FileError> {
        let file = File::open(path).map_err(|e| FileError(format!("cannot open {}: {e}", path.display())))?;
        let reader = BufReader::with_capacity(64 * 1024, file);
        let inner = match format {
            Format::Csv => {
                let lines = Arc::new(Mutex::new(LineStarts::default()));
                let tracker = LineTracker { inner: reader, lines: lines.clone() };
                let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(tracker);
                let header = reader
                    .byte_headers()
                    .map_err(|e| FileError(format!("{}: cannot read the header row: {e}", path.display())))?
                    .clone();
                let columns = header_columns(&header, mapping)
                    .map_err(|e| FileError(format!("{}, line 1 (header): {e}", path.display())))?;
                Inner::Csv { reader, lines, columns, record: csv::ByteRecord::new() }
            }
            Format::Ndjson => Inner::Ndjson { reader, line: 0, buf: Vec::new() },
        };
        Ok(Rows { inner, mapping: mapping.clone(), done: false })
    }
}

/// The columns of a header, checked: known names, no repeats, and enough to make requests.
fn header_columns(header: &csv::ByteRecord, mapping: &Mapping) -> Result<Vec<Column>, String> {
    let mut columns = Vec::with_capacity(header.len());
    let mut problems = Vec::new();
    for (i, raw) in header.iter().enumerate() {
        let text = String::from_utf8_lossy(raw);
        // A spreadsheet's UTF-8 byte order mark sits before the first name.
        let text = if i == 0 { text.trim_start_matches('\u{feff}').to_owned() } else { text.into_owned() };
        match Column::parse(&text) {
            Ok(c) if columns.contains(&c) => problems.push(format!("column {:?} appears twice", text.trim())),
            Ok(c) => columns.push(c),
            Err(e) => problems.push(e),
        }
    }
    let has = |c: &Column| columns.contains(c);
    if !has(&Column::Organization("name")) {
        problems.push("no name column: every row needs organization.name".into());
    }
    if !has(&Column::Target) && mapping.target.is_none() {
        problems.push("no target column and no --target".into());
    }
    if !has(&Column::Template) && mapping.template.is_none() {
        problems.push("no template column and no --template".into());
    }
    if !has(&Column::RequestId) {
        match Column::parse(&mapping.key_column) {
            Ok(key) if has(&key) => {}
            _ => problems.push(format!(
                "no request_id column, and the key column {:?} (--key-column) that request ids are derived from is \
                 not in the header",
                mapping.key_column
            )),
        }
    }
    if problems.is_empty() { Ok(columns) } else { Err(problems.join("; ")) }
}

impl Iterator for Rows {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        if self.done {
            return None;
        }
        match &mut self.inner {
            Inner::Csv { reader, lines, columns, record } => loop {
                let at = reader.position().line();
                match reader.read_byte_record(record) {
                    Ok(false) => return None,
                    Ok(true) => {
                        // csv counts a record from where its scan began, blank lines before it
                        // included; the line its first byte is on is what a person looks for.
                        let scan = record.position().map_or((0, at), |p| (p.byte(), p.line()));
                        let line = lines.lock().map_or(scan.1, |mut l| l.line_at(scan.0).unwrap_or(scan.1));
                        // A blank line is no row.
                        if record.len() == 1 && record.get(0).is_some_and(<[u8]>::is_empty) {
                            continue;
                        }
                        return Some(Row { line, document: csv_document(record, columns, &self.mapping) });
                    }
                    Err(e) => {
                        let line = e.position().map_or(at, |p| p.line());
                        let problem = Problem::new("-", format!("not a CSV row: {e}"));
                        // After a read error the file cannot be read further.
                        self.done = matches!(e.kind(), csv::ErrorKind::Io(_));
                        return Some(Row { line, document: Err(vec![problem]) });
                    }
                }
            },
            Inner::Ndjson { reader, line, buf } => loop {
                *line += 1;
                match read_line(reader, buf) {
                    Ok(None) => return None,
                    Ok(Some(too_long)) => {
                        let text = &buf[..];
                        if !too_long && text.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        let document = if too_long {
                            Err(vec![Problem::new(
                                "-",
                                format!("line is over the {MAX_MESSAGE_BYTES} byte message limit; it was not parsed"),
                            )])
                        } else {
                            ndjson_document(text, &self.mapping)
                        };
                        return Some(Row { line: *line, document });
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Row { line: *line, document: Err(vec![Problem::new("-", e.to_string())]) });
                    }
                }
            },
        }
    }
}

/// Where the non-blank lines of a file start, for the few lines the CSV reader has read but
/// not yet returned as records (older ones are dropped as records pass them).
#[derive(Debug, Default)]
struct LineStarts {
    /// Bytes read so far.
    offset: u64,
    /// The line `offset` is on (1-based).
    line: u64,
    at_line_start: bool,
    /// (byte offset, line) of each non-blank line start not yet passed.
    starts: VecDeque<(u64, u64)>,
}

impl LineStarts {
    fn saw(&mut self, bytes: &[u8]) {
        if self.line == 0 {
            (self.line, self.at_line_start) = (1, true);
        }
        for &b in bytes {
            if self.at_line_start && b != b'\n' && b != b'\r' {
                self.starts.push_back((self.offset, self.line));
                self.at_line_start = false;
            }
            if b == b'\n' {
                self.line += 1;
                self.at_line_start = true;
            }
            self.offset += 1;
        }
    }

    /// The line of the first non-blank line starting at or after `byte`.
    fn line_at(&mut self, byte: u64) -> Option<u64> {
        while self.starts.front().is_some_and(|(at, _)| *at < byte) {
            self.starts.pop_front();
        }
        self.starts.front().map(|(_, line)| *line)
    }
}

/// The file under the CSV reader, noting where lines start as they are read.
struct LineTracker {
    inner: BufReader<File>,
    lines: Arc<Mutex<LineStarts>>,
}

impl Read for LineTracker {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Ok(mut lines) = self.lines.lock() {
            lines.saw(&buf[..n]);
        }
        Ok(n)
    }
}

/// Reads one line into `buf` (without its newline), keeping at most the message limit plus
/// one byte: `Some(true)` when the line was longer (the rest is skipped), `None` at the end.
fn read_line(reader: &mut BufReader<File>, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(read_any.then_some(too_long));
        }
        read_any = true;
        let newline = chunk.iter().position(|b| *b == b'\n');
        let part = &chunk[..newline.unwrap_or(chunk.len())];
        let room = (MAX_MESSAGE_BYTES + 1).saturating_sub(buf.len());
        too_long |= part.len() > room;
        buf.extend_from_slice(&part[..part.len().min(room)]);
        let used = newline.map_or(chunk.len(), |i| i + 1);
        reader.consume(used);
        if newline.is_some() {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Some(too_long));
        }
    }
}

/// The request document of a CSV record.
fn csv_document(record: &csv::ByteRecord, columns: &[Column], mapping: &Mapping) -> Result<Document, Vec<Problem>> {
    let mut problems = Vec::new();
    if record.len() != columns.len() {
        problems.push(Problem::new(
            "-",
            format!("the row has {} fields, the header {} columns", record.len(), columns.len()),
        ));
        return Err(problems);
    }
    let mut doc = Map::new();
    let mut organization = Map::new();
    let mut metadata = Map::new();
    let mut branding = Map::new();
    let mut admin = Map::new();
    for (column, raw) in columns.iter().zip(record.iter()) {
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t.trim(),
            Err(_) => {
                problems.push(Problem::new(column_of_field(&column.field()), "not valid UTF-8"));
                continue;
            }
        };
        if text.is_empty() {
            continue;
        }
        let s = json!(text);
        match column {
            Column::RequestId => _ = doc.insert("request_id".into(), s),
            Column::Target => _ = doc.insert("target".into(), s),
            Column::Template => _ = doc.insert("template".into(), s),
            Column::Source => _ = doc.insert("source".into(), s),
            Column::OccurredAt => _ = doc.insert("occurred_at".into(), s),
            Column::Organization(f) => _ = organization.insert((*f).into(), s),
            Column::Domains => {
                let list: Vec<&str> = text.split(';').map(str::trim).filter(|d| !d.is_empty()).collect();
                organization.insert("domains".into(), json!(list));
            }
            Column::Metadata(k) => _ = metadata.insert(k.clone(), s),
            Column::Branding(f) => _ = branding.insert((*f).into(), s),
            Column::Admin(f) => _ = admin.insert((*f).into(), s),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    if !metadata.is_empty() {
        organization.insert("metadata".into(), Value::Object(metadata));
    }
    if !branding.is_empty() {
        organization.insert("branding".into(), Value::Object(branding));
    }
    doc.insert("organization".into(), Value::Object(organization));
    if !admin.is_empty() {
        doc.insert("admin".into(), Value::Object(admin));
    }
    doc.entry("source").or_insert_with(|| json!("orgprov-bulk"));
    finish(Value::Object(doc), mapping, true)
}

/// The request document of an NDJSON line.
fn ndjson_document(line: &[u8], mapping: &Mapping) -> Result<Document, Vec<Problem>> {
    let value: Value = serde_json::from_slice(line).map_err(|e| vec![Problem::new("-", format!("not JSON: {e}"))])?;
    if !value.is_object() {
        return Err(vec![Problem::new("-", "the line is JSON but not a request object")]);
    }
    finish(value, mapping, false)
}

/// Applies the run's defaults and the request_id: inside a CloudEvents envelope's `data` if
/// the document is one.
fn finish(mut value: Value, mapping: &Mapping, csv: bool) -> Result<Document, Vec<Problem>> {
    let envelope = value.get("specversion").is_some();
    let request = if envelope { &mut value["data"] } else { &mut value };
    let Some(request) = request.as_object_mut() else {
        // The checks say what is wrong with such an envelope.
        return Ok(Document { request_id: String::new(), derived: false, value });
    };
    for (key, default) in [("target", &mapping.target), ("template", &mapping.template)] {
        if let (None, Some(d)) = (request.get(key), default) {
            request.insert(key.into(), json!(d));
        }
    }
    if let Some(id) = request.get("request_id") {
        let request_id = id.as_str().unwrap_or_default().to_owned();
        return Ok(Document { request_id, derived: false, value });
    }
    let key_column = &mapping.key_column;
    let key_field = Column::parse(key_column).map(|c| c.field()).unwrap_or_else(|_| key_column.clone());
    let key_name = if csv { key_column.clone() } else { key_field.clone() };
    let pointer = format!("/{}", key_field.replace('.', "/"));
    let key = request_value(request, &pointer);
    let target = request.get("target").and_then(Value::as_str).unwrap_or_default();
    match key {
        Some(key) if !key.trim().is_empty() => {
            let request_id = derived_request_id(target, key.trim());
            request.insert("request_id".into(), json!(request_id));
            Ok(Document { request_id, derived: true, value })
        }
        _ => Err(vec![Problem::new(
            if csv { key_name.clone() } else { "request_id".to_owned() },
            format!("no request_id, and {key_name} (the --key-column request ids are derived from) is empty"),
        )]),
    }
}

/// The text at `pointer` of a request object.
fn request_value(request: &Map<String, Value>, pointer: &str) -> Option<String> {
    let mut parts = pointer.trim_start_matches('/').splitn(2, '/');
    let first = request.get(parts.next()?)?;
    let value = match parts.next() {
        Some(rest) => first.pointer(&format!("/{rest}"))?,
        None => first,
    };
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mapping() -> Mapping {
        Mapping { target: Some("acme".into()), template: Some("standard".into()), key_column: "name".into() }
    }

    fn rows(text: &str, ext: &str, mapping: &Mapping) -> Result<Vec<Row>, FileError> {
        let mut file = tempfile::Builder::new().suffix(ext).tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let format = Format::of_path(file.path()).unwrap();
        Ok(Rows::open(file.path(), format, mapping)?.collect())
    }

    #[test]
    fn csv_columns_map_to_request_fields() {
        let text = "\u{feff}name,display_name,domains,metadata.crm_id,branding.primary_color,admin.email,admin.first_name,Admin.Last_Name\n\
                    acme,Acme Inc.,acme.com; acme.org ;,C-1,#112233,ada@acme.com,Ada,Lovelace\n";
        let rows = rows(text, ".csv", &mapping()).unwrap();
        assert_eq!(rows.len(), 1);
        let doc = rows[0].document.as_ref().unwrap();
        assert_eq!(rows[0].line, 2);
        assert!(doc.derived);
        assert_eq!(doc.request_id, derived_request_id("acme", "acme"));
        assert_eq!(
            doc.value,
            json!({ "request_id": doc.request_id, "target": "acme", "template": "standard", "source": "orgprov-bulk",
                    "organization": { "name": "acme", "display_name": "Acme Inc.", "domains": ["acme.com", "acme.org"],
                                      "metadata": { "crm_id": "C-1" }, "branding": { "primary_color": "#112233" } },
                    "admin": { "email": "ada@acme.com", "first_name": "Ada", "last_name": "Lovelace" } })
        );
    }

    #[test]
    fn derived_ids_are_stable_valid_and_per_target() {
        let a = derived_request_id("acme", "globex");
        assert_eq!(a, derived_request_id("acme", "globex"));
        assert_ne!(a, derived_request_id("other", "globex"));
        assert_eq!(a.len(), 37);
        assert!(crate::contract::RequestId::parse(&a).is_ok());
    }

    #[test]
    fn a_bad_header_is_refused_whole() {
        let e = |text: &str, m: &Mapping| rows(text, ".csv", m).err().map(|e| e.to_string()).unwrap_or_default();
        let m = mapping();
        assert!(e("name,colour\nx,y\n", &m).contains("unknown column \"colour\""));
        assert!(e("name,name\nx,y\n", &m).contains("appears twice"));
        assert!(e("display_name\nx\n", &m).contains("no name column"));
        assert!(e("name,branding.theme\nx,y\n", &m).contains("unknown branding field"));
        let bare = Mapping { target: None, template: None, key_column: "metadata.crm_id".into() };
        let text = e("name\nx\n", &bare);
        for needle in ["no target column", "no template column", "metadata.crm_id"] {
            assert!(text.contains(needle), "{text}");
        }
    }

    #[test]
    fn bad_rows_say_where_and_what() {
        let text = "request_id,name,target\nr1,acme,\n\n\"r2\",\"multi\nline\",x\nr3,short\n,,t\n";
        let rows = rows(text, ".csv", &mapping()).unwrap();
        let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, [2, 4, 6, 7]);
        assert_eq!(rows[0].document.as_ref().unwrap().value["target"], "acme", "an empty cell takes the default");
        assert_eq!(rows[1].document.as_ref().unwrap().value["organization"]["name"], "multi\nline");
        let short = rows[2].document.as_ref().unwrap_err();
        assert!(short[0].reason.contains("2 fields, the header 3"), "{short:?}");
        let keyless = rows[3].document.as_ref().unwrap_err();
        assert_eq!(keyless[0].column, "name");
    }

    #[test]
    fn ndjson_lines_take_the_defaults_and_say_what_is_wrong() {
        let text = "{\"organization\":{\"name\":\"acme\"}}\n\n{\"request_id\":\"r2\",\"target\":\"t2\",\"organization\":{\"name\":\"b\"}}\r\nnot json\n[1]\n";
        let rows = rows(text, ".ndjson", &mapping()).unwrap();
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 3, 4, 5]);
        let first = rows[0].document.as_ref().unwrap();
        assert_eq!(first.request_id, derived_request_id("acme", "acme"));
        assert_eq!((&first.value["target"], &first.value["template"]), (&json!("acme"), &json!("standard")));
        let second = rows[1].document.as_ref().unwrap();
        assert_eq!((second.request_id.as_str(), &second.value["target"]), ("r2", &json!("t2")));
        assert!(rows[2].document.as_ref().unwrap_err()[0].reason.starts_with("not JSON"));
        assert!(rows[3].document.as_ref().unwrap_err()[0].reason.contains("not a request object"));
    }

    #[test]
    fn an_overlong_ndjson_line_is_refused_without_being_kept() {
        let long =
            format!("{{\"x\":\"{}\"}}\n{{\"organization\":{{\"name\":\"ok\"}}}}\n", "a".repeat(MAX_MESSAGE_BYTES * 2));
        let rows = rows(&long, ".jsonl", &mapping()).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].document.as_ref().unwrap_err()[0].reason.contains("byte message limit"));
        assert!(rows[1].document.is_ok());
    }
}
