//! Atomic file replacement: the bytes go to a temporary file in the target's directory,
//! which is flushed to disk, renamed over the target and the directory flushed, so a crash
//! at any instant leaves the old file or the new one, never a torn one.
//!
//! A save that returns (with success or an error) leaves no temporary file. A save killed
//! part-way (kill -9, power loss) can leave its temporary file behind; it is named
//! `.<file name>.smallmind-tmp.<pid>.<nonce>`, and the next save to the same path removes
//! those of processes that no longer run.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Io,
        format!("could not {what} '{}': {e}", path.display()),
    )
}

fn temp_prefix(file_name: &str) -> String {
    format!(".{file_name}.smallmind-tmp.")
}

/// A random enough nonce: std's per-instance random hasher keys.
fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

/// Whether process `pid` still runs (Linux: /proc; elsewhere assumed to, so nothing of a
/// live save is ever removed).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Removes temporary files of saves to `file_name` in `dir` whose process is gone.
fn remove_stale_temps(dir: &Path, file_name: &str) {
    let prefix = temp_prefix(file_name);
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let pid = rest.split('.').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !process_alive(pid)
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Removes the temporary file unless it was renamed.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Replaces `path` with `bytes` atomically (see the module's comment).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            Error::invalid_argument(format!(
                "path '{}' does not name a file (UTF-8) to save to",
                path.display()
            ))
        })?
        .to_string();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    remove_stale_temps(&dir, &file_name);
    let mut temp = TempFile {
        path: dir.join(format!(
            "{}{}.{:016x}",
            temp_prefix(&file_name),
            std::process::id(),
            nonce()
        )),
        armed: false,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp.path)
        .map_err(|e| io_error("create a temporary file next to", path, e))?;
    temp.armed = true;
    file.write_all(bytes)
        .map_err(|e| io_error("write", &temp.path, e))?;
    file.sync_all()
        .map_err(|e| io_error("flush to disk", &temp.path, e))?;
    drop(file);
    fs::rename(&temp.path, path).map_err(|e| io_error("rename the temporary file to", path, e))?;
    temp.armed = false;
    // The rename is durable once the directory entry is.
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("flush the directory", &dir, e))?;
    Ok(())
}

/// Reads a whole file, with an I/O error naming it.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| io_error("read", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("smallmind-atomic-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_save_replaces_the_file_and_leaves_nothing_else() {
        let d = dir("replace");
        let target = d.join("chat.smc");
        write_atomic(&target, b"old").unwrap();
        write_atomic(&target, b"new").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        let names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("chat.smc")]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_save_leaves_the_old_file_and_no_temporary_file() {
        let d = dir("fail");
        let target = d.join("sub");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("x"), b"keep").unwrap();
        // Renaming a file over a non-empty directory fails after the temp file was written.
        let err = write_atomic(&target, b"new").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Io);
        let names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("sub")]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn temporary_files_of_dead_processes_are_removed_by_the_next_save() {
        let d = dir("stale");
        let target = d.join("c.smc");
        // PIDs above the kernel's maximum (4194304) never run.
        let stale = d.join(format!("{}4294967295.0", temp_prefix("c.smc")));
        fs::write(&stale, b"torn").unwrap();
        write_atomic(&target, b"x").unwrap();
        assert!(!stale.exists());
        fs::remove_dir_all(&d).unwrap();
    }
}
