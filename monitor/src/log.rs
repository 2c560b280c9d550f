//! The prediction log: every sampled request of a model version (request id, time, input and
//! output tensors) and every feedback label, in append-only segment files under one folder per
//! version. Feedback joins it by request id; `nereid monitor export` turns it into a dataset
//! version for retraining on recent production data.
//!
//! A segment is `<seq>.seg`: an 8-byte magic, then records `len: u32 | body | crc32(body): u32`
//! (little endian). A write is appended whole; after a crash, a segment's torn last record
//! fails its length or checksum and reading stops there, so a half-written record is never
//! read. A segment is closed when it reaches `segment_bytes`; closed segments are deleted,
//! oldest first, while the folder holds more than `max_bytes` or they are older than `max_age`.
//!
//! Body: `kind: u8 | time_ms: u64 | id: u16-prefixed UTF-8 | payload`, where a prediction
//! (kind 1) carries `u8` counts of input and output tensors, each `name: u16-prefixed | dtype:
//! u8 | ndim: u8 | dims: i64 × ndim | data: u32-prefixed`, and feedback (kind 2) carries `u32`
//! truths, each `0 | u16-prefixed class name` or `1 | f64`.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use nereid_protocol::{DataType, Tensor};

use crate::performance::Truth;

const MAGIC: &[u8; 8] = b"NRDLOG1\n";
/// Largest record read back (a corrupt length beyond it ends the segment).
const MAX_RECORD: u32 = 256 << 20;
const PREDICTION: u8 = 1;
const FEEDBACK: u8 = 2;

/// Where the log goes and how much of it is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSettings {
    pub segment_bytes: u64,
    pub max_bytes: u64,
    pub max_age: Duration,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            segment_bytes: 64 << 20,
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Prediction {
        time_ms: u64,
        id: String,
        inputs: Vec<Tensor>,
        outputs: Vec<Tensor>,
    },
    Feedback {
        time_ms: u64,
        id: String,
        truth: Vec<Truth>,
    },
}

impl Record {
    pub fn time_ms(&self) -> u64 {
        match self {
            Record::Prediction { time_ms, .. } | Record::Feedback { time_ms, .. } => *time_ms,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Record::Prediction { id, .. } | Record::Feedback { id, .. } => id,
        }
    }
}

struct Segment {
    path: PathBuf,
    seq: u64,
    bytes: u64,
    last_ms: u64,
}

/// Appends records to a version's log folder.
pub struct LogWriter {
    dir: PathBuf,
    settings: LogSettings,
    /// Closed segments, oldest first.
    closed: VecDeque<Segment>,
    open: Option<(BufWriter<File>, Segment)>,
    next_seq: u64,
    buffer: Vec<u8>,
}

impl LogWriter {
    /// Opens (creating) `dir`; existing segments are kept and counted, new records go to a new
    /// segment.
    pub fn open(dir: &Path, settings: LogSettings) -> io::Result<LogWriter> {
        fs::create_dir_all(dir)?;
        let mut closed: Vec<Segment> = segment_paths(dir)?
            .into_iter()
            .map(|(seq, path)| {
                let meta = fs::metadata(&path)?;
                let last_ms = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as u64);
                Ok(Segment {
                    path,
                    seq,
                    bytes: meta.len(),
                    last_ms,
                })
            })
            .collect::<io::Result<_>>()?;
        closed.sort_by_key(|s| s.seq);
        let next_seq = closed.last().map_or(1, |s| s.seq + 1);
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            settings,
            closed: closed.into(),
            open: None,
            next_seq,
            buffer: Vec::with_capacity(1024),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes in the folder's segments.
    pub fn total_bytes(&self) -> u64 {
        self.closed.iter().map(|s| s.bytes).sum::<u64>()
            + self.open.as_ref().map_or(0, |(_, s)| s.bytes)
    }

    /// Appends one record (buffered: [`LogWriter::flush`] hands it to the OS).
    pub fn append(&mut self, record: &Record) -> io::Result<()> {
        self.buffer.clear();
        encode(record, &mut self.buffer)?;
        let len = self.buffer.len() as u32;
        let crc = crc32fast::hash(&self.buffer);
        if self.open.is_none() {
            self.start_segment()?;
        }
        let (writer, segment) = self
            .open
            .as_mut()
            .expect("a segment was just opened. This is a bug.");
        writer.write_all(&len.to_le_bytes())?;
        writer.write_all(&self.buffer)?;
        writer.write_all(&crc.to_le_bytes())?;
        segment.bytes += u64::from(len) + 8;
        segment.last_ms = segment.last_ms.max(record.time_ms());
        if segment.bytes >= self.settings.segment_bytes {
            self.close_segment()?;
            self.enforce_retention(record.time_ms())?;
        }
        Ok(())
    }

    /// Writes buffered records to the file (no fsync: a crash loses at most what the OS had
    /// not written, and never leaves a readable half record).
    pub fn flush(&mut self) -> io::Result<()> {
        if let Some((writer, _)) = self.open.as_mut() {
            writer.flush()?;
        }
        Ok(())
    }

    fn start_segment(&mut self) -> io::Result<()> {
        // Another writer on the folder (a version reloading while the old one drains) may have
        // taken the next number: take the one after it.
        let (path, file) = loop {
            let path = self.dir.join(format!("{:010}.seg", self.next_seq));
            match OpenOptions::new().create_new(true).append(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => self.next_seq += 1,
                Err(e) => return Err(e),
            }
        };
        let mut writer = BufWriter::with_capacity(256 << 10, file);
        writer.write_all(MAGIC)?;
        self.open = Some((
            writer,
            Segment {
                path,
                seq: self.next_seq,
                bytes: MAGIC.len() as u64,
                last_ms: 0,
            },
        ));
        self.next_seq += 1;
        Ok(())
    }

    fn close_segment(&mut self) -> io::Result<()> {
        if let Some((mut writer, segment)) = self.open.take() {
            writer.flush()?;
            writer.get_ref().sync_data()?;
            self.closed.push_back(segment);
        }
        Ok(())
    }

    /// Deletes the oldest closed segments beyond the size or age limit.
    pub fn enforce_retention(&mut self, now_ms: u64) -> io::Result<()> {
        let max_age = self.settings.max_age.as_millis() as u64;
        while let Some(oldest) = self.closed.front() {
            let too_big = self.total_bytes() > self.settings.max_bytes;
            let too_old = now_ms.saturating_sub(oldest.last_ms) > max_age;
            if !(too_big || too_old) {
                break;
            }
            let oldest = self.closed.pop_front().expect("checked above");
            match fs::remove_file(&oldest.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if let Some((writer, _)) = self.open.as_mut() {
            let _ = writer.flush();
        }
    }
}

/// `(seq, path)` of the segments in `dir`, in order.
fn segment_paths(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = name
            .strip_suffix(".seg")
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn put_str(out: &mut Vec<u8>, s: &str) -> io::Result<()> {
    let len = u16::try_from(s.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "string of {} bytes is too long for the prediction log",
                s.len()
            ),
        )
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn encode(record: &Record, out: &mut Vec<u8>) -> io::Result<()> {
    match record {
        Record::Prediction {
            time_ms,
            id,
            inputs,
            outputs,
        } => {
            out.push(PREDICTION);
            out.extend_from_slice(&time_ms.to_le_bytes());
            put_str(out, id)?;
            for tensors in [inputs, outputs] {
                out.push(u8::try_from(tensors.len()).unwrap_or(u8::MAX));
                for t in tensors.iter().take(usize::from(u8::MAX)) {
                    put_str(out, &t.name)?;
                    let code = DataType::ALL
                        .iter()
                        .position(|d| *d == t.datatype)
                        .unwrap_or(0) as u8;
                    out.push(code);
                    out.push(u8::try_from(t.shape.len()).unwrap_or(u8::MAX));
                    for d in t.shape.iter().take(usize::from(u8::MAX)) {
                        out.extend_from_slice(&d.to_le_bytes());
                    }
                    let len = u32::try_from(t.data.len()).map_err(|_| {
                        io::Error::new(io::ErrorKind::InvalidInput, "tensor too large to log")
                    })?;
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(&t.data);
                }
            }
        }
        Record::Feedback { time_ms, id, truth } => {
            out.push(FEEDBACK);
            out.extend_from_slice(&time_ms.to_le_bytes());
            put_str(out, id)?;
            out.extend_from_slice(&(truth.len() as u32).to_le_bytes());
            for t in truth {
                match t {
                    Truth::Class(name) => {
                        out.push(0);
                        put_str(out, name)?;
                    }
                    Truth::Value(v) => {
                        out.push(1);
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
    }
    Ok(())
}

/// A cursor over a record body; every read is bounds-checked.
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.data.len() < n {
            return None;
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
    fn string(&mut self) -> Option<String> {
        let len = usize::from(self.u16()?);
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

fn decode(body: &[u8]) -> Option<Record> {
    let mut c = Cursor { data: body };
    let kind = c.u8()?;
    let time_ms = c.u64()?;
    let id = c.string()?;
    let record = match kind {
        PREDICTION => {
            let mut sides = [Vec::new(), Vec::new()];
            for side in &mut sides {
                let count = c.u8()?;
                for _ in 0..count {
                    let name = c.string()?;
                    let datatype = *DataType::ALL.get(usize::from(c.u8()?))?;
                    let ndim = c.u8()?;
                    let shape = (0..ndim)
                        .map(|_| c.u64().map(|d| d as i64))
                        .collect::<Option<Vec<i64>>>()?;
                    let len = c.u32()? as usize;
                    let data = Bytes::copy_from_slice(c.take(len)?);
                    side.push(Tensor::new(name, datatype, shape, data));
                }
            }
            let [inputs, outputs] = sides;
            Record::Prediction {
                time_ms,
                id,
                inputs,
                outputs,
            }
        }
        FEEDBACK => {
            let count = c.u32()?;
            let mut truth = Vec::with_capacity(count.min(1 << 16) as usize);
            for _ in 0..count {
                truth.push(match c.u8()? {
                    0 => Truth::Class(c.string()?),
                    1 => Truth::Value(f64::from_le_bytes(c.take(8)?.try_into().ok()?)),
                    _ => return None,
                });
            }
            Record::Feedback { time_ms, id, truth }
        }
        _ => return None,
    };
    c.data.is_empty().then_some(record)
}

/// What reading a log found besides its records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadSummary {
    pub segments: usize,
    pub records: u64,
    /// Segments whose end was torn or corrupt (reading stopped there).
    pub torn_segments: usize,
}

/// Finds the prediction of request `id` in the logs under `root` (`<root>/<model>/<version>/`):
/// its model, version and time. Reads every segment until found (a lookup, not a hot path).
pub fn find_request(root: &Path, id: &str) -> io::Result<Option<(String, u64, u64)>> {
    let Ok(models) = std::fs::read_dir(root) else {
        return Ok(None);
    };
    for model in models.flatten() {
        let Ok(versions) = std::fs::read_dir(model.path()) else {
            continue;
        };
        for version in versions.flatten() {
            let Some(number) = version.file_name().to_str().and_then(|v| v.parse().ok()) else {
                continue;
            };
            let mut found = None;
            read_log(&version.path(), |record| {
                if found.is_none() {
                    if let Record::Prediction {
                        time_ms,
                        id: logged,
                        ..
                    } = &record
                    {
                        if logged == id {
                            found = Some(*time_ms);
                        }
                    }
                }
            })?;
            if let Some(time_ms) = found {
                return Ok(Some((
                    model.file_name().to_string_lossy().into_owned(),
                    number,
                    time_ms,
                )));
            }
        }
    }
    Ok(None)
}

/// Reads every intact record of the log in `dir`, oldest first, into `visit`. A missing folder
/// is an empty log.
pub fn read_log(dir: &Path, mut visit: impl FnMut(Record)) -> io::Result<ReadSummary> {
    let mut summary = ReadSummary::default();
    for (_, path) in segment_paths(dir)? {
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => f.read_to_end(&mut bytes)?,
            // Deleted by retention while we listed it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        summary.segments += 1;
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            summary.torn_segments += 1;
            continue;
        }
        let mut rest = &bytes[MAGIC.len()..];
        while !rest.is_empty() {
            let parsed = (|| {
                let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
                if len > MAX_RECORD {
                    return None;
                }
                let end = 4 + len as usize;
                let body = rest.get(4..end)?;
                let crc = u32::from_le_bytes(rest.get(end..end + 4)?.try_into().ok()?);
                if crc32fast::hash(body) != crc {
                    return None;
                }
                Some((decode(body)?, end + 4))
            })();
            match parsed {
                Some((record, used)) => {
                    visit(record);
                    summary.records += 1;
                    rest = &rest[used..];
                }
                None => {
                    summary.torn_segments += 1;
                    break;
                }
            }
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(i: u64) -> Record {
        Record::Prediction {
            time_ms: 1_000 + i,
            id: format!("req-{i}"),
            inputs: vec![Tensor::from_f32(
                "INPUT",
                vec![1, 4],
                &[5.1, 3.5, 1.4, i as f32],
            )],
            outputs: vec![Tensor::from_f32(
                "PROBABILITIES",
                vec![1, 3],
                &[0.9, 0.05, 0.05],
            )],
        }
    }

    #[test]
    fn records_round_trip_and_segments_rotate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = LogSettings {
            segment_bytes: 400,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(3600),
        };
        let mut log = LogWriter::open(dir.path(), settings.clone()).expect("open");
        let mut written = Vec::new();
        for i in 0..20 {
            let r = prediction(i);
            log.append(&r).expect("append");
            written.push(r);
        }
        let feedback = Record::Feedback {
            time_ms: 5_000,
            id: "req-3".into(),
            truth: vec![Truth::Class("setosa".into()), Truth::Value(1.5)],
        };
        log.append(&feedback).expect("append");
        written.push(feedback);
        log.flush().expect("flush");
        let mut read = Vec::new();
        let summary = read_log(dir.path(), |r| read.push(r)).expect("read");
        assert_eq!(read, written);
        assert!(summary.segments > 3, "{summary:?}");
        assert_eq!(summary.torn_segments, 0);
        // A reopened log continues in a new segment.
        drop(log);
        let mut log = LogWriter::open(dir.path(), settings).expect("reopen");
        log.append(&prediction(99)).expect("append");
        log.flush().expect("flush");
        let mut count = 0;
        read_log(dir.path(), |_| count += 1).expect("read");
        assert_eq!(count, written.len() + 1);
    }

    #[test]
    fn a_torn_tail_is_never_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = LogWriter::open(dir.path(), LogSettings::default()).expect("open");
        for i in 0..3 {
            log.append(&prediction(i)).expect("append");
        }
        log.flush().expect("flush");
        drop(log);
        let (_, path) = segment_paths(dir.path()).expect("list").remove(0);
        let full = fs::read(&path).expect("read");
        for cut in [full.len() - 1, full.len() - 5, full.len() - 30] {
            fs::write(&path, &full[..cut]).expect("truncate");
            let mut read = Vec::new();
            let summary = read_log(dir.path(), |r| read.push(r)).expect("read");
            assert_eq!(read.len(), 2, "cut at {cut}");
            assert_eq!(summary.torn_segments, 1);
        }
        // A flipped byte inside a record fails its checksum.
        let mut bad = full.clone();
        bad[MAGIC.len() + 20] ^= 0xff;
        fs::write(&path, &bad).expect("write");
        let mut read = Vec::new();
        read_log(dir.path(), |r| read.push(r)).expect("read");
        assert!(read.is_empty());
    }

    #[test]
    fn two_writers_on_one_folder_take_different_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = LogWriter::open(dir.path(), LogSettings::default()).expect("open");
        let mut b = LogWriter::open(dir.path(), LogSettings::default()).expect("open");
        a.append(&prediction(1)).expect("append a");
        b.append(&prediction(2)).expect("append b");
        a.flush().expect("flush");
        b.flush().expect("flush");
        let mut ids = Vec::new();
        read_log(dir.path(), |r| ids.push(r.id().to_string())).expect("read");
        ids.sort();
        assert_eq!(ids, ["req-1", "req-2"]);
    }

    #[test]
    fn retention_drops_the_oldest_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = LogSettings {
            segment_bytes: 300,
            max_bytes: 1_000,
            max_age: Duration::from_secs(3600),
        };
        let mut log = LogWriter::open(dir.path(), settings).expect("open");
        for i in 0..200 {
            log.append(&prediction(i)).expect("append");
        }
        log.flush().expect("flush");
        assert!(log.total_bytes() <= 1_000 + 300, "{}", log.total_bytes());
        let mut ids = Vec::new();
        read_log(dir.path(), |r| ids.push(r.id().to_string())).expect("read");
        assert_eq!(ids.last().map(String::as_str), Some("req-199"));
        assert!(!ids.contains(&"req-0".to_string()));
    }
}
