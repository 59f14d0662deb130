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
