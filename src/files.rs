//! Reading the files an operator points stickylb at (the config file, the
//! certificate and key it names): only regular files, and only up to a
//! size bound checked before and while reading, so `/dev/zero`, a FIFO or
//! a runaway file is an error in a second, never a hang or an
//! out-of-memory abort.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The largest config file read: 1 MiB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The largest certificate or key file read: 1 MiB.
pub const MAX_TLS_BYTES: u64 = 1 << 20;

/// The bytes of `path` (symlinks followed), which must be a regular file
/// of at most `max` bytes. Errors name the file and what is wrong.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "cannot read {shown}: not a regular file (a device, FIFO, socket or directory)"
        ));
    }
    if meta.len() > max {
        return Err(format!(
            "cannot read {shown}: {} bytes, more than the {max} allowed",
            meta.len()
        ));
    }
    // Opened without blocking (a FIFO swapped in after the look above
    // would otherwise wait for a writer), then checked again by its
    // descriptor: what is read is what was checked.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    let opened = file
        .metadata()
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !opened.is_file() || opened.len() > max {
        return Err(format!(
            "cannot read {shown}: it changed into something else than a regular file of at most {max} bytes while being opened"
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // One byte past the bound tells a file that grew while being read.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!(
            "cannot read {shown}: it grew past the {max} bytes allowed while being read"
        ));
    }
    Ok(bytes)
}

/// The text of the config file at `path`: a regular file of at most
/// `MAX_CONFIG_BYTES`, in UTF-8 (an error names the line and column of
/// the first byte that is not).
pub fn read_config(path: &Path) -> Result<String, String> {
    let bytes = read_bounded(path, MAX_CONFIG_BYTES)?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        // Columns count characters, as the config's other errors do.
        let column = String::from_utf8_lossy(&valid[line_start..])
            .chars()
            .count()
            + 1;
        format!(
            "{}:{line}:{column}: the file is not UTF-8 text (invalid byte here)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_directories_and_big_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_config(Path::new("/dev/zero")).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let e = read_config(dir.path()).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; 2 << 20]).unwrap();
        let e = read_config(&big).unwrap_err();
        assert!(e.contains("more than the 1048576 allowed"), "{e}");
    }

    #[test]
    fn invalid_utf8_is_placed_by_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, b"[listen]\naddress = \"\xc3\xa9\xff\"\n").unwrap();
        let e = read_config(&f).unwrap_err();
        assert!(
            e.ends_with("c.toml:2:13: the file is not UTF-8 text (invalid byte here)"),
            "{e}"
        );
    }
}
