//! Atomic file writes: a file appears at its path complete, or not at all, and the file it
//! replaces survives any failure or interruption.
//!
//! The data goes to an unnamed file in the destination's folder (`O_TMPFILE`), which
//! nothing can follow or swap and which vanishes with the process if it is killed, even by
//! SIGKILL. Once written and synced it gets a fresh random name (created exclusively, so
//! never through a planted link) and is renamed over the destination. Where the folder's
//! file system has no `O_TMPFILE`, the file is created under that random name from the
//! start; the name is registered so that a SIGINT or SIGTERM handler can remove it
//! ([`remove_pending`]), and any failure removes it. A SIGKILL in the moment between
//! naming and renaming can leave that `.NAME.RANDOM.tmp` behind; nothing else can.
//!
//! Atomic replacement is for regular files and new paths. A destination that exists and is
//! something else (a FIFO, a character device, `/dev/stdout`) is opened and written in
//! place, as `cp` and `sort -o` do: it is never replaced by a regular file.

use crate::error::{Error, Result};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// A file being written; [`AtomicFile::commit`] puts it in place.
pub struct AtomicFile {
    dest: PathBuf,
    w: BufWriter<File>,
    /// The temporary name, when the file has one (no `O_TMPFILE`).
    named: Option<Pending>,
    /// Written straight into `dest`, which is no regular file.
    in_place: bool,
}

/// Whether `path` exists as something other than a regular file or a folder (following
/// links): a FIFO, a device, a socket.
fn is_special(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

impl AtomicFile {
    /// Start writing what will become `dest`.
    pub fn create(dest: &Path) -> Result<AtomicFile> {
        if is_special(dest) {
            let f = OpenOptions::new()
                .write(true)
                .open(dest)
                .map_err(|e| Error::io(dest, e))?;
            return Ok(AtomicFile {
                dest: dest.to_path_buf(),
                w: BufWriter::with_capacity(1 << 20, f),
                named: None,
                in_place: true,
            });
        }
        let dir = folder(dest);
        let tmpfile = OpenOptions::new()
            .write(true)
            .mode(0o644)
            .custom_flags(libc::O_TMPFILE)
            .open(&dir);
        let (file, named) = match tmpfile {
            Ok(f) => (f, None),
            Err(_) => {
                let (f, p) = create_unique(dest)?;
                (f, Some(Pending::register(p)))
            }
        };
        Ok(AtomicFile {
            dest: dest.to_path_buf(),
            w: BufWriter::with_capacity(1 << 20, file),
            named,
            in_place: false,
        })
    }

    /// A path the data written so far can be read back from before it takes the
    /// destination's place (to check it), flushed; `None` when written in place.
    pub fn written_path(&mut self) -> Result<Option<PathBuf>> {
        self.w.flush().map_err(|e| Error::io(&self.dest, e))?;
        Ok(match (&self.named, self.in_place) {
            (_, true) => None,
            (Some(p), false) => Some(p.path().to_path_buf()),
            (None, false) => {
                let fd = std::os::fd::AsRawFd::as_raw_fd(self.w.get_ref());
                Some(PathBuf::from(format!("/proc/self/fd/{fd}")))
            }
        })
    }

    /// Sync the data, name the file and rename it over the destination (written in place:
    /// flush it).
    pub fn commit(self) -> Result<()> {
        let AtomicFile {
            dest,
            w,
            named,
            in_place,
        } = self;
        let io = |e| Error::io(&dest, e);
        let file = w.into_inner().map_err(|e| io(e.into_error()))?;
        if in_place {
            return Ok(());
        }
        file.sync_all().map_err(io)?;
        let pending = match named {
            Some(p) => p,
            None => {
                // Give the unnamed file a fresh random name, then rename it into place.
                let fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
                let link = link_unique(&fd, &dest)?;
                Pending::register(link)
            }
        };
        std::fs::rename(pending.path(), &dest).map_err(io)?;
        pending.forget();
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.w.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.commit()
}

/// Check, before any work, that `path` can be written: its folder exists and takes new
/// files, and it is not a folder itself; or it is a FIFO or device this process may write.
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: is a folder, not a file to write",
            path.display()
        )));
    }
    if is_special(path) {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| Error::Invalid(format!("{}: a NUL in the path", path.display())))?;
        // SAFETY: a NUL-terminated path; access does not retain it.
        if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
            return Err(Error::io(path, std::io::Error::last_os_error()));
        }
        return Ok(());
    }
    let (f, p) = create_unique(path)?;
    drop(f);
    let _ = std::fs::remove_file(p);
    Ok(())
}

/// The folder `path` will be written in.
fn folder(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `.NAME.RANDOM.tmp` beside `dest`.
fn temp_name(dest: &Path) -> PathBuf {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let mut seed = [0u8; 8];
    let got =
        File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed));
    let mut r = u64::from_le_bytes(seed);
    if got.is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        r = t ^ ((std::process::id() as u64) << 32);
    }
    r ^= COUNT
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    folder(dest).join(format!(".{name}.{r:016x}.tmp"))
}

/// A new file under a fresh random name beside `dest`, created exclusively.
fn create_unique(dest: &Path) -> Result<(File, PathBuf)> {
    loop {
        let p = temp_name(dest);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&p)
        {
            Ok(f) => return Ok((f, p)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(dest, e)),
        }
    }
}

/// Link the open file at `/proc/self/fd/N` under a fresh random name beside `dest`.
fn link_unique(fd_path: &str, dest: &Path) -> Result<PathBuf> {
    let from = CString::new(fd_path).expect("no NUL in a /proc path");
    loop {
        let p = temp_name(dest);
        let to = CString::new(p.as_os_str().as_bytes())
            .map_err(|_| Error::Invalid(format!("{}: a NUL in the path", dest.display())))?;
        // SAFETY: both are NUL-terminated paths; linkat does not retain them.
        let rc = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if rc == 0 {
            return Ok(p);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(Error::io(dest, e));
        }
    }
}

/// Temporary names that a signal handler removes ([`remove_pending`]).
const SLOTS: usize = 32;
static PENDING: [AtomicPtr<libc::c_char>; SLOTS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];

/// A registered temporary file: removed on drop unless forgotten.
struct Pending {
    path: PathBuf,
    slot: Option<usize>,
}

impl Pending {
    fn register(path: PathBuf) -> Pending {
        let slot = CString::new(path.as_os_str().as_bytes())
            .ok()
            .and_then(|c| {
                let raw = c.into_raw();
                let slot = PENDING.iter().position(|s| {
                    s.compare_exchange(
                        std::ptr::null_mut(),
                        raw,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    )
                    .is_ok()
                });
                slot
            });
        Pending { path, slot }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// The file was renamed into place: nothing to remove.
    fn forget(mut self) {
        self.release();
        self.path = PathBuf::new();
    }

    /// Empty the slot. Its name is never freed: a signal handler may be reading it.
    fn release(&mut self) {
        if let Some(i) = self.slot.take() {
            PENDING[i].store(std::ptr::null_mut(), Ordering::SeqCst);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.release();
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Remove every temporary file still being written: for a SIGINT or SIGTERM handler,
/// which then exits. Async-signal-safe (atomic loads and `unlink`).
pub fn remove_pending() {
    for s in &PENDING {
        let p = s.load(Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: a NUL-terminated path registered by `Pending::register`, never freed.
            unsafe { libc::unlink(p) };
        }
    }
}
