//! Object files with bytes that are applied but not yet known durable.
//!
//! [`UnsyncedFiles`]: files written in place whose `fdatasync` waits for the
//! next commit. A commit syncs them before the journal, so a record it makes
//! durable never names bytes that are not.
//!
//! [`UndoLog`]: for power-loss tests only ([`super::StoreConfig::undo_unsynced`]),
//! what each unsynced write replaced, so that a simulated power loss can take
//! back every byte no sync made durable.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::sync::{Arc, Mutex};

use super::data::obj_path;

/// Files written in place and not synced since, by id. Each entry carries the
/// stamp of its newest write, so that a sync forgets only what it covered.
#[derive(Default)]
pub(super) struct UnsyncedFiles {
    next: u64,
    files: HashMap<u64, (u64, Arc<File>)>,
}

impl UnsyncedFiles {
    /// File `id` has bytes written since its last sync.
    pub(super) fn add(&mut self, id: u64, f: &Arc<File>) {
        self.next += 1;
        self.files.insert(id, (self.next, f.clone()));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The files to sync now, by id, and the stamp to pass to
    /// [`UnsyncedFiles::synced_upto`] once they are.
    pub(super) fn to_sync(&self) -> (Vec<(u64, Arc<File>)>, u64) {
        let files = self
            .files
            .iter()
            .map(|(id, (_, f))| (*id, f.clone()))
            .collect();
        (files, self.next)
    }

    /// Everything written up to `stamp` is durable: forget those files,
    /// unless written again since.
    pub(super) fn synced_upto(&mut self, stamp: u64) {
        self.files.retain(|_, (s, _)| *s > stamp);
    }

    pub(super) fn stamp(&self) -> u64 {
        self.next
    }
}

/// One write's undo: the bytes file `id` held at `off` before it.
struct Undo {
    stamp: u64,
    id: u64,
    off: u64,
    old: Vec<u8>,
}

/// Run `write`, which writes `[off, off + len)` of file `id`, noting in
/// `log` (when kept) what it replaces inside the file. The note is stamped
/// after the write is done, so later than any sync that began before: such
/// a sync cannot count it as synced.
pub(super) fn undoable(
    log: Option<&Mutex<UndoLog>>,
    f: &File,
    id: u64,
    off: u64,
    len: u64,
    write: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    let Some(log) = log else {
        return write();
    };
    let end = (off + len).min(f.metadata()?.len());
    let old = if end > off {
        let mut old = vec![0; (end - off) as usize];
        f.read_exact_at(&mut old, off)?;
        Some(old)
    } else {
        None
    };
    write()?;
    if let Some(old) = old {
        let mut log = log.lock();
        log.next += 1;
        let stamp = log.next;
        log.undo.push(Undo {
            stamp,
            id,
            off,
            old,
        });
    }
    Ok(())
}

/// What unsynced writes to object files replaced, oldest first (tests).
#[derive(Default)]
pub(super) struct UndoLog {
    next: u64,
    undo: Vec<Undo>,
}

impl UndoLog {
    pub(super) fn stamp(&self) -> u64 {
        self.next
    }

    /// Writes not known durable.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.undo.len()
    }

    /// File `id` was synced: its writes up to `stamp` are durable.
    pub(super) fn synced(&mut self, id: u64, stamp: u64) {
        self.undo.retain(|u| u.id != id || u.stamp > stamp);
    }

    /// Every file was synced: writes up to `stamp` are durable.
    pub(super) fn all_synced(&mut self, stamp: u64) {
        self.undo.retain(|u| u.stamp > stamp);
    }

    /// A power loss: put back what every unsynced write replaced, newest
    /// first, inside each file's current length. A file already deleted is
    /// skipped.
    pub(super) fn take_back(&mut self, root: &Path) -> io::Result<()> {
        for u in std::mem::take(&mut self.undo).into_iter().rev() {
            let f = match std::fs::OpenOptions::new()
                .write(true)
                .open(obj_path(root, u.id))
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let end = (u.off + u.old.len() as u64).min(f.metadata()?.len());
            if end > u.off {
                f.write_all_at(&u.old[..(end - u.off) as usize], u.off)?;
            }
        }
        Ok(())
    }
}
