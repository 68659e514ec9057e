//! Object data files: naming, positioned I/O, hole punching, sparse copy.
//!
//! Each object's data lives in `objects/<id % 256 as 2 hex>/<id as 16 hex>`.
//! Ids come from the metadata table and are never reused, so names need no
//! escaping and no length limit applies to object names. A missing file reads
//! as zeros; a file may be shorter than the object (a sparse tail).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const OBJECTS_DIR: &str = "objects";
pub const FANOUT: u64 = 256;

/// Directory holding the data file of object `id`.
pub fn obj_dir(root: &Path, id: u64) -> PathBuf {
    root.join(OBJECTS_DIR).join(format!("{:02x}", id % FANOUT))
}

pub fn obj_path(root: &Path, id: u64) -> PathBuf {
    obj_dir(root, id).join(format!("{id:016x}"))
}

/// Ids with this bit set name files written before their transaction was
/// journaled (placed writes); they are handed out by a counter of their own
/// at queue time, so the ids the metadata table hands out at apply time stay
/// the same when replay re-applies the journal.
pub const PLACED_ID_BIT: u64 = 1 << 63;

/// Where a clone is built before it is renamed into place.
pub fn tmp_path(root: &Path, id: u64) -> PathBuf {
    obj_dir(root, id).join(format!("{id:016x}.tmp"))
}

/// Parse a data file name back to its id (`None` for anything else).
pub fn parse_name(name: &str) -> Option<u64> {
    if name.len() != 16 {
        return None;
    }
    u64::from_str_radix(name, 16).ok()
}

/// Open for reading; `None` if the file does not exist.
pub fn open_ro(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Open for reading and writing; `None` if the file does not exist.
pub fn open_rw_existing(path: &Path) -> io::Result<Option<File>> {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Direct I/O alignment: buffer address and length, a multiple of any
/// logical block size in use.
const DIRECT_ALIGN: usize = 4096;

/// Largest direct-write buffer a thread keeps between writes.
const DIRECT_BUF_KEEP: usize = (8 << 20) + DIRECT_ALIGN;

thread_local! {
    static DIRECT_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Largest piece [`write_in_pieces`] hands to one `pwrite`.
const WRITE_PIECE: u64 = 64 << 10;

/// `pwrite` all of `data` at `off`, in pieces that do not cross a
/// `WRITE_PIECE` boundary. The page cache sizes a new folio by the write
/// that creates it, and every later small write into a folio walks all of
/// its buffer heads: a 1 MiB write would make each 4 KiB overwrite there
/// cost 256 of them.
pub fn write_in_pieces(f: &File, data: &[u8], off: u64) -> io::Result<()> {
    let mut done = 0usize;
    while done < data.len() {
        let pos = off + done as u64;
        let room = (WRITE_PIECE - pos % WRITE_PIECE) as usize;
        let n = room.min(data.len() - done);
        f.write_all_at(&data[done..done + n], pos)?;
        done += n;
    }
    Ok(())
}

/// Create the new file `path` holding exactly `data`, durable (but not its
/// directory entry) when this returns.
///
/// Written with `O_DIRECT` where the file system allows it: a large buffered
/// write followed by `fdatasync` waits for writeback of the whole page-cache
/// copy and doubles the memory traffic; a direct write goes from one aligned
/// copy straight to the disk. The buffer is padded to the alignment and the
/// file cut back to `data.len()` before the sync. File systems without direct
/// I/O (tmpfs) get a buffered write.
pub fn write_new_durable(path: &Path, data: &[u8]) -> io::Result<()> {
    let direct = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    let f = match direct {
        Ok(f) => {
            let padded = data.len().div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
            DIRECT_BUF.with_borrow_mut(|raw| {
                // Reused per thread: a fresh 4 MiB buffer costs a thousand
                // page faults per write.
                if raw.len() < padded + DIRECT_ALIGN {
                    *raw = vec![0u8; padded + DIRECT_ALIGN];
                }
                let start = raw.as_ptr().align_offset(DIRECT_ALIGN);
                let buf = &mut raw[start..start + padded];
                buf[..data.len()].copy_from_slice(data);
                buf[data.len()..].fill(0);
                let r = f.write_all_at(buf, 0);
                if raw.len() > DIRECT_BUF_KEEP {
                    *raw = Vec::new();
                }
                r
            })?;
            if padded != data.len() {
                f.set_len(data.len() as u64)?;
            }
            f
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let f = OpenOptions::new().write(true).create_new(true).open(path)?;
            f.write_all_at(data, 0)?;
            f
        }
        Err(e) => return Err(e),
    };
    f.sync_data()
}

pub fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Read `buf.len()` bytes at `off`; bytes past the end of the file are zero.
pub fn read_at_zero_fill(f: &File, buf: &mut [u8], off: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// [`read_at_zero_fill`] from the page cache only: `false` (with `buf` in an
/// unspecified state) where any of it would have to wait for the disk, or
/// lies past the end of the file. The
/// kernel starts reading what is missing, so a blocking read that follows
/// finds it sooner. Where `RWF_NOWAIT` is not supported, this reads.
pub fn read_at_zero_fill_cached(f: &File, buf: &mut [u8], off: u64) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let iov = libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        };
        let at = (off + done as u64) as libc::off_t;
        // SAFETY: one iovec over `rest`, which outlives the call.
        let r = unsafe { libc::preadv2(f.as_raw_fd(), &iov, 1, at, libc::RWF_NOWAIT) };
        match r {
            // The end of the file, or (Linux 5.9 and 5.10, preadv2(2) BUGS)
            // not cached: the blocking read tells them apart.
            0 => return Ok(false),
            n if n > 0 => done += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(false),
                    Some(libc::EINTR) => {}
                    Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => {
                        read_at_zero_fill(f, rest, off + done as u64)?;
                        return Ok(true);
                    }
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(true)
}

/// Make `[off, off + len)` read as zeros without changing the file size:
/// punch a hole, or write zeros where the file system cannot.
pub fn zero_range(f: &File, off: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let flags = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on a valid fd with plain integer arguments.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), flags, off as i64, len as i64) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(e);
    }
    let flen = f.metadata()?.len();
    let end = (off + len).min(flen);
    let zeros = vec![0u8; 1 << 20];
    let mut pos = off;
    while pos < end {
        let n = (end - pos).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

fn lseek(f: &File, off: u64, whence: i32) -> io::Result<Option<u64>> {
    // SAFETY: lseek on a valid fd.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as i64, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Copy the data extents of `src` within `[0, size)` to the empty `dst` and set
/// `dst`'s length to `size`; holes stay holes.
pub fn copy_sparse(src: &File, dst: &File, size: u64) -> io::Result<()> {
    copy_sparse_range(src, dst, 0, size)?;
    dst.set_len(size)
}

/// Copy the data extents of `src` within `[from, size)` to the same offsets
/// of `dst`. Bytes of `dst` over holes of `src` are left as they are.
pub fn copy_sparse_range(src: &File, dst: &File, from: u64, size: u64) -> io::Result<()> {
    let mut pos = from;
    while pos < size {
        let start = match lseek(src, pos, libc::SEEK_DATA) {
            Ok(Some(s)) => s,
            Ok(None) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => pos,
            Err(e) => return Err(e),
        };
        if start >= size {
            break;
        }
        let end = match lseek(src, start, libc::SEEK_HOLE)? {
            Some(e) => e.min(size),
            None => size,
        };
        copy_range(src, dst, start, end - start)?;
        pos = end;
    }
    Ok(())
}

fn copy_range(src: &File, dst: &File, off: u64, len: u64) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        let mut so = (off + done) as i64;
        let mut d_off = (off + done) as i64;
        let want = (len - done).min(1 << 30) as usize;
        // SAFETY: valid fds and pointers to live offset variables.
        let r = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut so,
                dst.as_raw_fd(),
                &mut d_off,
                want,
                0,
            )
        };
        if r > 0 {
            done += r as u64;
            continue;
        }
        if r == 0 {
            // Source shorter than expected: the rest reads as zeros.
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) => {
                return copy_range_rw(src, dst, off + done, len - done);
            }
            _ => return Err(e),
        }
    }
    Ok(())
}

fn copy_range_rw(src: &File, dst: &File, off: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        let got = src.read_at(&mut buf[..n], off + done)?;
        if got == 0 {
            return Ok(());
        }
        dst.write_all_at(&buf[..got], off + done)?;
        done += got as u64;
    }
    Ok(())
}

/// Write `bytes` to `dir/name` atomically: a temporary file, fsynced,
/// renamed over the old one, then the directory fsynced, so a crash leaves
/// either the old or the new file.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let f = open_rw(&tmp)?;
    f.set_len(0)?;
    f.write_all_at(bytes, 0)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    fsync_dir(dir)
}

/// fsync a directory so entries created, renamed or removed in it are durable.
pub fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Flush every dirty page and inode of the file system holding `f`.
pub fn syncfs(f: &File) -> io::Result<()> {
    // SAFETY: syncfs on a valid fd.
    if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `(total, available)` bytes of the file system holding `path`.
pub fn statvfs(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a nul byte"))?;
    // SAFETY: statvfs fills a zeroed plain-data struct from a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let frsize = s.f_frsize as u64;
    Ok((s.f_blocks as u64 * frsize, s.f_bavail as u64 * frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_copy_sparse_hole_and_tail_copied_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let src = open_rw(&dir.path().join("s")).unwrap();
        src.write_all_at(b"abc", 0).unwrap();
        src.write_all_at(b"xyz", 1 << 20).unwrap();
        let dst = open_rw(&dir.path().join("d")).unwrap();

        // Stop inside the second extent: bytes past `size` must not be copied.
        copy_sparse(&src, &dst, (1 << 20) + 2).unwrap();

        let mut got = vec![1u8; (1 << 20) + 2];
        read_at_zero_fill(&dst, &mut got, 0).unwrap();
        let mut want = vec![0u8; (1 << 20) + 2];
        want[..3].copy_from_slice(b"abc");
        want[1 << 20..].copy_from_slice(b"xy");
        assert_eq!(got, want);
        assert_eq!(dst.metadata().unwrap().len(), (1 << 20) + 2);
    }

    #[test]
    fn test_zero_range_keeps_size_and_zeroes() {
        let dir = tempfile::tempdir().unwrap();
        let f = open_rw(&dir.path().join("f")).unwrap();
        f.write_all_at(&[9u8; 8192], 0).unwrap();

        zero_range(&f, 100, 5000).unwrap();

        let mut got = vec![0u8; 8192];
        read_at_zero_fill(&f, &mut got, 0).unwrap();
        assert!(got[100..5100].iter().all(|&b| b == 0));
        assert!(got[..100].iter().chain(&got[5100..]).all(|&b| b == 9));
        assert_eq!(f.metadata().unwrap().len(), 8192);
    }

    #[test]
    fn test_write_new_durable_unaligned_length_reads_back_exactly() {
        // On the disk the tests' temp directory is on, usually with O_DIRECT.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n");
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();

        write_new_durable(&p, &data).unwrap();

        assert_eq!(std::fs::read(&p).unwrap(), data);
    }

    #[test]
    fn test_write_new_durable_existing_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n");
        std::fs::write(&p, b"x").unwrap();

        let r = write_new_durable(&p, b"y");

        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::AlreadyExists);
    }

    #[test]
    fn test_parse_name_roundtrips_ids_only() {
        assert_eq!(parse_name(&format!("{:016x}", 77u64)), Some(77));
        assert_eq!(parse_name("0000000000000001.tmp"), None);
        assert_eq!(parse_name("lock"), None);
    }
}
