//! The write-ahead journal: a chain of segment files of framed records.
//!
//! Segment `journal.<start seq as 16 hex>` holds records `start..next start`.
//! Only the newest segment is appended to; a checkpoint rotates to a new
//! segment and deletes the older ones once the metadata snapshot covers their
//! last record (keeping the newest of them as the spare, below). A closed
//! segment was fully synced before the rotation.
//!
//! Appends go to the page cache (one `writev` loop per append); the caller
//! makes every append so far durable with one `fdatasync` of the current
//! segment (a group commit), whenever it needs to.
//!
//! Recycling: the newest trimmed segment is kept as `journal-spare` and
//! becomes the next rotation's segment, written over from its start. An
//! `fdatasync` after writing over blocks a file already has is a data write
//! and a cache flush; after an append it also commits the file's new size
//! through the file system's journal, which doubled the cost of a 4 KiB
//! write followed by `fsync`. So a segment may hold, after its records,
//! records of its previous use (their seqs are below the segment's start)
//! or padding: each append is followed by zeros up to the end of its page
//! (and a whole page more where fewer than a record header's bytes are
//! left), so the kernel never reads an old page back to write part of it,
//! and replay finds a zero header where the records end.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

use super::codec::Step;
use super::codec::{self, DecodeError, RECORD_HEADER_LEN};
use super::data::fsync_dir;
use crate::sync::Arc;

const PREFIX: &str = "journal.";
/// A trimmed segment kept for the next rotation (not a segment: replay and
/// `list_segments` ignore it).
const SPARE: &str = "journal-spare";
/// Appends are padded with zeros to a multiple of this.
const PAGE: u64 = 4096;
static ZEROS: [u8; 2 * PAGE as usize] = [0; 2 * PAGE as usize];

pub fn segment_path(root: &Path, start: u64) -> PathBuf {
    root.join(format!("{PREFIX}{start:016x}"))
}

/// Journal segments in the store directory, sorted by start seq.
pub fn list_segments(root: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    for ent in std::fs::read_dir(root)? {
        let ent = ent?;
        let name = ent.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        if let Ok(start) = u64::from_str_radix(hex, 16)
            && hex.len() == 16
        {
            v.push((start, ent.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// Create an empty segment and make its directory entry durable, so records
/// synced into it later are reachable after a crash.
pub fn create_segment(root: &Path, start: u64) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(segment_path(root, start))?;
    fsync_dir(root)?;
    Ok(f)
}

/// Make the spare the segment starting at `start`, to be written over from
/// its start, with its new name durable.
fn reuse_segment(root: &Path, start: u64) -> io::Result<File> {
    let path = segment_path(root, start);
    std::fs::rename(root.join(SPARE), &path)?;
    fsync_dir(root)?;
    OpenOptions::new().read(true).write(true).open(path)
}

/// The appending side of the journal.
pub struct JournalWriter {
    root: PathBuf,
    file: Arc<File>,
    /// Start seq of the current segment.
    start: u64,
    /// Bytes in the current segment.
    bytes: u64,
    /// Older segments still on disk: (start, bytes).
    older: Vec<(u64, u64)>,
    /// Seq the next record will carry.
    next_seq: u64,
    /// A trimmed segment is waiting as `journal-spare` for the next rotation.
    spare: bool,
    /// Bytes appended since the journal was opened (checkpoints do not
    /// lower it), for tests.
    #[cfg(test)]
    appended: u64,
}

impl JournalWriter {
    /// Start appending to a fresh segment beginning at `next_seq`.
    pub fn create(root: &Path, next_seq: u64) -> io::Result<Self> {
        let file = Arc::new(create_segment(root, next_seq)?);
        Ok(Self {
            root: root.to_path_buf(),
            file,
            start: next_seq,
            bytes: 0,
            older: Vec::new(),
            next_seq,
            spare: root.join(SPARE).exists(),
            #[cfg(test)]
            appended: 0,
        })
    }

    /// The segment appended to now.
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// Start seq of the current segment.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Bytes in the current segment.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Seq of the last record appended (start - 1 when none yet).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Bytes in every segment still on disk.
    pub fn total_bytes(&self) -> u64 {
        self.bytes + self.older.iter().map(|(_, b)| b).sum::<u64>()
    }

    /// Append records (already in seq order, starting at `next_seq`) with one
    /// `writev` loop. Returns the bytes in every segment now; the caller must
    /// `fdatasync` the current segment before calling them committed. On
    /// error the segment may hold part of the records, or all of them; the
    /// caller must stop appending (replay treats a partial one as a torn
    /// tail, and may replay whole ones).
    pub fn write(&mut self, first_seq: u64, count: u64, bufs: &[Bytes]) -> io::Result<u64> {
        if first_seq != self.next_seq {
            return Err(io::Error::other(format!(
                "journal sequence gap: expected {}, got {first_seq}",
                self.next_seq
            )));
        }
        let len: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        let end = self.bytes + len;
        let mut pad = PAGE - end % PAGE;
        if pad < RECORD_HEADER_LEN as u64 {
            pad += PAGE;
        }
        let padded: Vec<&[u8]> = bufs
            .iter()
            .map(|b| &b[..])
            .chain([&ZEROS[..pad as usize]])
            .collect();
        write_all_at(&self.file, &padded, self.bytes)?;
        // The next record goes where this one ends, over the padding.
        self.bytes += len;
        #[cfg(test)]
        {
            self.appended += len;
        }
        self.next_seq += count;
        Ok(self.total_bytes())
    }

    /// Bytes appended since the journal was opened.
    #[cfg(test)]
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// Sync the current segment and start a new one at the next seq; returns
    /// the seq below which every record is in an older (synced) segment.
    /// No-op if the current one is empty.
    pub fn rotate(&mut self) -> io::Result<u64> {
        if self.bytes > 0 {
            // Not cut to its records: the padding after the last one ends
            // its replay as it ends the newest segment's, and a recycled
            // segment that keeps its length keeps the room to be written
            // over next time (cut, it would offer only what this use took).
            self.file.sync_data()?;
            let reused = match std::mem::take(&mut self.spare) {
                true => reuse_segment(&self.root, self.next_seq).map(Some),
                false => Ok(None),
            };
            let file = Arc::new(match reused {
                Ok(Some(f)) => f,
                Ok(None) => create_segment(&self.root, self.next_seq)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    create_segment(&self.root, self.next_seq)?
                }
                Err(e) => return Err(e),
            });
            self.older.push((self.start, self.bytes));
            self.file = file;
            self.start = self.next_seq;
            self.bytes = 0;
        }
        Ok(self.start)
    }

    /// Swap the segment's file handle, to inject I/O errors in tests.
    #[cfg(test)]
    pub fn replace_file_for_test(&mut self, file: File) {
        self.file = Arc::new(file);
    }

    /// Delete older segments whose records are all `<= covered`, oldest
    /// first, and keep the newest of them as the spare: a crash part way
    /// leaves segments that still follow each other. Only whole segments
    /// older than the current one go.
    pub fn trim(&mut self, covered: u64) -> io::Result<()> {
        let starts: Vec<u64> = self
            .older
            .iter()
            .map(|(s, _)| *s)
            .chain([self.start])
            .collect();
        let n = (0..self.older.len())
            .take_while(|i| starts[i + 1] <= covered + 1)
            .count();
        let gone: Vec<u64> = self.older.drain(..n).map(|(s, _)| s).collect();
        let Some((newest, rest)) = gone.split_last() else {
            return Ok(());
        };
        for start in rest {
            super::data::remove_file(&segment_path(&self.root, *start))?;
        }
        // A full segment, when the journal's size brought the checkpoint;
        // it replaces the spare.
        std::fs::rename(segment_path(&self.root, *newest), self.root.join(SPARE))?;
        self.spare = true;
        fsync_dir(&self.root)
    }
}

/// Write all of `bufs`, in order, at `pos` (`pwritev`: the file offset is
/// neither used nor moved, so no seek per append).
fn write_all_at(f: &File, bufs: &[&[u8]], mut pos: u64) -> io::Result<()> {
    const MAX_IOV: usize = 512;
    let mut idx = 0;
    let mut off = 0;
    while idx < bufs.len() {
        if off == bufs[idx].len() {
            idx += 1;
            off = 0;
            continue;
        }
        let end = (idx + MAX_IOV).min(bufs.len());
        let iov = |b: &[u8]| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        };
        let mut iovs = Vec::with_capacity(end - idx);
        iovs.push(iov(&bufs[idx][off..]));
        iovs.extend(bufs[idx + 1..end].iter().map(|b| iov(b)));
        // SAFETY: the iovecs point into `bufs`, which outlive the call, and
        // pwritev only reads through them.
        let r = unsafe {
            libc::pwritev(
                f.as_raw_fd(),
                iovs.as_ptr(),
                iovs.len() as libc::c_int,
                pos as libc::off_t,
            )
        };
        let mut n = match r {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n if n > 0 => n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
        };
        pos += n as u64;
        while n > 0 {
            let rem = bufs[idx].len() - off;
            if n >= rem {
                n -= rem;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// Why replay of the journal stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayEnd {
    /// Every segment read to its end, or to the padding after its last
    /// record (a recycled segment holds older records past it).
    Clean,
    /// A torn or corrupt record; records from there on were ignored.
    Torn {
        segment: PathBuf,
        offset: u64,
        why: String,
    },
}

/// A record that must refuse the open (a valid record of a newer format).
#[derive(Debug)]
pub enum ReplayError {
    Io(io::Error),
    NewerVersion {
        segment: PathBuf,
        offset: u64,
        version: u8,
    },
    /// The callback refused a record.
    Apply(super::StoreError),
    /// A record that cannot be read in a segment that a later one follows.
    /// Such a segment was synced whole before the next one was made, so this
    /// is damage, not a crash's torn tail: the records after it (flushed,
    /// maybe) would be lost.
    Damaged {
        segment: PathBuf,
        offset: u64,
        why: String,
    },
}

/// Read every record of every segment in order, calling `f(seq, txn)`.
/// Stops at the first torn or corrupt record, or at a break in the
/// sequence, in the last segment; anywhere else, that is an error
/// ([`ReplayError::Damaged`]).
pub fn replay(
    root: &Path,
    mut f: impl FnMut(u64, Vec<Step>) -> Result<(), super::StoreError>,
) -> Result<ReplayEnd, ReplayError> {
    let segments = list_segments(root).map_err(ReplayError::Io)?;
    let last = segments.len().saturating_sub(1);
    let mut prev: Option<u64> = None;
    for (i, (seg_start, path)) in segments.into_iter().enumerate() {
        let end = replay_segment(&path, seg_start, &mut prev, &mut f)?;
        if let ReplayEnd::Torn {
            segment,
            offset,
            why,
        } = end
        {
            if i < last {
                return Err(ReplayError::Damaged {
                    segment,
                    offset,
                    why,
                });
            }
            return Ok(ReplayEnd::Torn {
                segment,
                offset,
                why,
            });
        }
    }
    Ok(ReplayEnd::Clean)
}

/// The records of one segment, the first of them following `prev`.
fn replay_segment(
    path: &Path,
    seg_start: u64,
    prev: &mut Option<u64>,
    f: &mut impl FnMut(u64, Vec<Step>) -> Result<(), super::StoreError>,
) -> Result<ReplayEnd, ReplayError> {
    {
        let mut file = File::open(path).map_err(ReplayError::Io)?;
        let flen = file.metadata().map_err(ReplayError::Io)?.len();
        file.seek(SeekFrom::Start(0)).map_err(ReplayError::Io)?;
        let mut r = io::BufReader::with_capacity(1 << 20, file);
        let mut offset = 0u64;
        while offset < flen {
            let torn = |why: String| ReplayEnd::Torn {
                segment: path.to_path_buf(),
                offset,
                why,
            };
            let mut head = [0u8; RECORD_HEADER_LEN];
            if flen - offset < RECORD_HEADER_LEN as u64 {
                return Ok(torn("short record header".into()));
            }
            r.read_exact(&mut head).map_err(ReplayError::Io)?;
            if head == [0u8; RECORD_HEADER_LEN] {
                // The padding after the last record.
                break;
            }
            let h = match codec::parse_header(&head) {
                Ok(h) => h,
                Err(e) => return Ok(torn(e.to_string())),
            };
            if h.seq < seg_start {
                // A record of a recycled segment's previous use.
                break;
            }
            let rest = flen - offset - RECORD_HEADER_LEN as u64;
            if u64::from(h.payload_len) > rest {
                return Ok(torn(format!(
                    "record length {} runs past the end of the segment",
                    h.payload_len
                )));
            }
            let mut payload = BytesMut::zeroed(h.payload_len as usize);
            r.read_exact(&mut payload).map_err(ReplayError::Io)?;
            let txn = match codec::decode_payload(&h, payload.freeze()) {
                Ok(t) => t,
                Err(DecodeError::NewerVersion(version)) => {
                    return Err(ReplayError::NewerVersion {
                        segment: path.to_path_buf(),
                        offset,
                        version,
                    });
                }
                Err(e) => return Ok(torn(e.to_string())),
            };
            if let Some(p) = *prev
                && h.seq != p + 1
            {
                if offset == 0 {
                    // The segment before was synced whole before this one
                    // was made: its last records are gone.
                    return Err(ReplayError::Damaged {
                        segment: path.to_path_buf(),
                        offset,
                        why: format!(
                            "the segment starts at seq {} but the one before ends at {p}",
                            h.seq
                        ),
                    });
                }
                return Ok(torn(format!("sequence {} does not follow {p}", h.seq)));
            }
            *prev = Some(h.seq);
            f(h.seq, txn).map_err(ReplayError::Apply)?;
            offset += (RECORD_HEADER_LEN + h.payload_len as usize) as u64;
        }
    }
    Ok(ReplayEnd::Clean)
}
