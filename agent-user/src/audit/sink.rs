//! Audit sinks: where records go. Producers write to the [`AuditSink`] trait so
//! formats and destinations plug in.
use std::io::{self, Write};

use super::AuditRecord;

/// A destination for audit records. `line` is the sealed JSON line (no newline) the chain was
/// computed over; sinks that store evidence must write it byte for byte.
pub trait AuditSink: Send {
    fn write(&mut self, record: &AuditRecord, line: &str) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

/// JSON Lines: one record per line.
pub struct JsonlSink<W: Write + Send> {
    out: io::BufWriter<W>,
}

impl<W: Write + Send> JsonlSink<W> {
    pub fn new(out: W) -> Self {
        Self { out: io::BufWriter::new(out) }
    }
}

impl<W: Write + Send> AuditSink for JsonlSink<W> {
    fn write(&mut self, _record: &AuditRecord, line: &str) -> io::Result<()> {
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Keeps records in memory (tests, in-process consumers).
#[derive(Default)]
pub struct MemorySink {
    pub records: Vec<AuditRecord>,
    pub lines: Vec<String>,
}

impl AuditSink for MemorySink {
    fn write(&mut self, record: &AuditRecord, line: &str) -> io::Result<()> {
        self.records.push(record.clone());
        self.lines.push(line.to_string());
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes every record to several sinks, in order; the first error wins.
pub struct TeeSink(pub Vec<Box<dyn AuditSink>>);

impl AuditSink for TeeSink {
    fn write(&mut self, record: &AuditRecord, line: &str) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.write(record, line))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.flush())
    }
}

/// JSON Lines into `path`, rotated when it would exceed `max_bytes`: `path` → `path.1` →
/// `path.2` ... (oldest has the highest number). Nothing is deleted unless `keep` says so, so
/// the whole hash chain stays verifiable (`warden verify path.N ... path.1 path`).
pub struct RotatingJsonlSink {
    path: std::path::PathBuf,
    max_bytes: u64,
    keep: Option<usize>,
    out: io::BufWriter<std::fs::File>,
    written: u64,
}

impl RotatingJsonlSink {
    pub fn create(path: &std::path::Path, max_bytes: u64, keep: Option<usize>) -> io::Result<Self> {
        let out = io::BufWriter::new(std::fs::File::create(path)?);
        Ok(Self { path: path.to_path_buf(), max_bytes, keep, out, written: 0 })
    }

    /// Like [`RotatingJsonlSink::create`], but appends to an existing file (a restarted
    /// daemon continues its log).
    pub fn append(path: &std::path::Path, max_bytes: u64, keep: Option<usize>) -> io::Result<Self> {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let written = f.metadata()?.len();
        Ok(Self { path: path.to_path_buf(), max_bytes, keep, out: io::BufWriter::new(f), written })
    }

    fn numbered(&self, n: usize) -> std::path::PathBuf {
        let mut p = self.path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        std::path::PathBuf::from(p)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let mut highest = 0;
        while self.numbered(highest + 1).exists() {
            highest += 1;
        }
        for n in (1..=highest).rev() {
            if self.keep.is_some_and(|k| n >= k) {
                std::fs::remove_file(self.numbered(n))?;
            } else {
                std::fs::rename(self.numbered(n), self.numbered(n + 1))?;
            }
        }
        if self.keep != Some(0) {
            std::fs::rename(&self.path, self.numbered(1))?;
        }
        self.out = io::BufWriter::new(std::fs::File::create(&self.path)?);
        self.written = 0;
        Ok(())
    }
}

impl AuditSink for RotatingJsonlSink {
    fn write(&mut self, _record: &AuditRecord, line: &str) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.written > 0 && self.written + len > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.written += len;
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_every_line_in_order() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("e.jsonl");
        let mut s = RotatingJsonlSink::create(&p, 100, None).unwrap();
        let rec = AuditRecord::default();
        let lines: Vec<String> =
            (0..20).map(|i| format!("{{\"n\":{i:03},\"pad\":\"xxxxxxxxxxxxxxxx\"}}")).collect();
        for l in &lines {
            s.write(&rec, l).unwrap();
        }
        s.flush().unwrap();
        let mut files: Vec<std::path::PathBuf> =
            (1..20).map(|n| d.path().join(format!("e.jsonl.{n}"))).filter(|p| p.exists()).collect();
        files.reverse();
        files.push(p.clone());
        assert!(files.len() > 3);
        let all: Vec<String> = files
            .iter()
            .flat_map(|f| std::fs::read_to_string(f).unwrap().lines().map(str::to_string).collect::<Vec<_>>())
            .collect();
        assert_eq!(all, lines);
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= 100);
        }
    }
}
