//! The results file of a bulk run: one CSV row per input row, written to a temporary file
//! beside the final one and renamed into place, so a reader never sees half a file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// The header of a results file.
pub const HEADER: [&str; 7] =
    ["line", "request_id", "status", "organization_id", "created", "error_code", "error_message"];

/// A row's status in the results file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Provisioned,
    Failed,
    /// No outcome yet (published and in work, or not published because the run stopped).
    Pending,
    /// Not published: the row breaks a rule (only with `--skip-invalid`).
    Invalid,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Provisioned => "provisioned",
            Status::Failed => "failed",
            Status::Pending => "pending",
            Status::Invalid => "invalid",
        }
    }
}

/// One line of the results file.
#[derive(Clone, Debug, Default)]
pub struct ResultRow {
    pub line: u64,
    pub request_id: String,
    pub status: Option<Status>,
    pub organization_id: Option<String>,
    pub created: Option<bool>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

/// What the results file says, counted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    pub rows: u64,
    pub provisioned: u64,
    /// Provisioned by adopting an organization an earlier attempt made (`created` false).
    pub adopted: u64,
    pub failed: u64,
    pub failed_by_code: BTreeMap<String, u64>,
    pub pending: u64,
    pub invalid: u64,
}

pub struct ResultsFile {
    writer: csv::Writer<BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
    pub counts: Counts,
}

/// The default results path: `<input stem>.results.csv` beside the input.
pub fn default_path(input: &Path) -> PathBuf {
    let stem = input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "bulk".into());
    input.with_file_name(format!("{stem}.results.csv"))
}

impl ResultsFile {
    pub fn create(path: &Path) -> std::io::Result<ResultsFile> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "results".into());
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let mut writer = csv::Writer::from_writer(BufWriter::new(File::create(&tmp)?));
        writer.write_record(HEADER)?;
        Ok(ResultsFile { writer, tmp, path: path.to_owned(), counts: Counts::default() })
    }

    pub fn write(&mut self, row: &ResultRow) -> std::io::Result<()> {
        let c = &mut self.counts;
        c.rows += 1;
        match row.status {
            Some(Status::Provisioned) => {
                c.provisioned += 1;
                c.adopted += u64::from(row.created == Some(false));
            }
            Some(Status::Failed) => {
                c.failed += 1;
                *c.failed_by_code.entry(row.error_code.clone().unwrap_or_else(|| "?".into())).or_default() += 1;
            }
            Some(Status::Invalid) => c.invalid += 1,
            Some(Status::Pending) | None => c.pending += 1,
        }
        let created = row.created.map(|c| c.to_string()).unwrap_or_default();
        self.writer.write_record([
            row.line.to_string().as_str(),
            &row.request_id,
            row.status.unwrap_or(Status::Pending).as_str(),
            row.organization_id.as_deref().unwrap_or_default(),
            &created,
            row.error_code.as_deref().unwrap_or_default(),
            row.error_message.as_deref().unwrap_or_default(),
        ])?;
        Ok(())
    }

    /// Flushes and moves the file into place; returns its path and the counts.
    pub fn finish(self) -> std::io::Result<(PathBuf, Counts)> {
        let mut inner = self.writer.into_inner().map_err(|e| e.into_error())?;
        std::io::Write::flush(&mut inner)?;
        inner.get_ref().sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        Ok((self.path, self.counts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_results_file_appears_whole_with_its_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = default_path(&dir.path().join("customers.csv"));
        assert_eq!(path.file_name().unwrap(), "customers.results.csv");
        let mut file = ResultsFile::create(&path).unwrap();
        assert!(!path.exists(), "nothing at the final path until it is complete");
        let ok = ResultRow {
            line: 2,
            request_id: "r1".into(),
            status: Some(Status::Provisioned),
            organization_id: Some("org_1".into()),
            created: Some(false),
            ..ResultRow::default()
        };
        file.write(&ok).unwrap();
        let failed = ResultRow {
            line: 3,
            request_id: "r2".into(),
            status: Some(Status::Failed),
            error_code: Some("conflict".into()),
            error_message: Some("taken, by \"x\"".into()),
            ..ResultRow::default()
        };
        file.write(&failed).unwrap();
        let (written, counts) = file.finish().unwrap();
        assert_eq!((counts.provisioned, counts.adopted, counts.failed), (1, 1, 1));
        let text = std::fs::read_to_string(written).unwrap();
        assert_eq!(
            text,
            "line,request_id,status,organization_id,created,error_code,error_message\n\
             2,r1,provisioned,org_1,false,,\n3,r2,failed,,,conflict,\"taken, by \"\"x\"\"\"\n"
        );
    }
}
