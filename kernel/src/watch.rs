//! Watching files that people edit while a node runs (scripts, rules files, tools, plugins):
//! when a file may have changed, and reading it only once a save has finished.

use std::path::Path;
use std::time::{Duration, SystemTime};

/// What tells that a watched file (a script, a rules file) may have changed: its modification
/// time and length. `None` when it cannot be read now (mid-save, removed) or is still being
/// written.
pub type FileStamp = Option<Stamp>;

/// A file's modification time and length.
pub type Stamp = (SystemTime, u64);

/// How long a watched file must be left alone before it is read: a plain save truncates and
/// then writes, and a look in between would load an empty or half-written script.
pub const SETTLE: Duration = Duration::from_millis(100);

pub fn file_stamp(path: &Path) -> FileStamp {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta.modified().ok()?;
    if !settled(modified) {
        return None;
    }
    Some((modified, meta.len()))
}

/// Reads a watched file whole once it has settled. `Ok(None)` while it is being written:
/// modified within [`SETTLE`], or changed while it was read (a save that began just after the
/// look); the caller looks again later. `Err` when it cannot be read at all.
pub fn read_settled(path: &Path) -> std::io::Result<Option<(Stamp, String)>> {
    match read_settled_bytes(path)? {
        None => Ok(None),
        Some((stamp, bytes)) => String::from_utf8(bytes)
            .map(|text| Some((stamp, text)))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
    }
}

/// [`read_settled`] for files that are not text (a WASM module).
pub fn read_settled_bytes(path: &Path) -> std::io::Result<Option<(Stamp, Vec<u8>)>> {
    let Some(before) = file_stamp(path) else {
        // Missing, or being written: tell the two apart for the caller.
        std::fs::metadata(path)?;
        return Ok(None);
    };
    let bytes = std::fs::read(path)?;
    let after = file_stamp(path);
    Ok((after == Some(before) && before.1 == bytes.len() as u64).then_some((before, bytes)))
}

/// Whether a file modified at `modified` has been left alone for [`SETTLE`].
pub fn settled(modified: SystemTime) -> bool {
    modified.elapsed().is_ok_and(|age| age >= SETTLE)
}

/// One look at a watched folder, on tokio's blocking pool (a look reads and may compile).
/// `None` when the runtime is shutting down: the node is stopping, the look never ran, and a
/// watcher ends quietly instead of reporting the folder as broken. A panic in `look` is an
/// error naming it.
pub async fn look_blocking<T: Send + 'static>(
    look: impl FnOnce() -> T + Send + 'static,
) -> Option<Result<T, String>> {
    match tokio::task::spawn_blocking(look).await {
        Ok(seen) => Some(Ok(seen)),
        Err(e) if e.is_cancelled() => None,
        Err(e) => Some(Err(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_look_is_none_once_the_runtime_is_going_down_and_a_panic_is_an_error() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        assert_eq!(rt.block_on(look_blocking(|| 7)), Some(Ok(7)));
        let panicked = rt.block_on(look_blocking(|| -> u8 { panic!("bad folder") }));
        assert!(
            panicked
                .as_ref()
                .is_some_and(|r| r.as_ref().is_err_and(|e| e.contains("panicked"))),
            "{panicked:?}"
        );
        // A node stopping: its runtime shuts down while the watcher is still ticking.
        let handle = rt.handle().clone();
        rt.shutdown_background();
        let _inside = handle.enter();
        assert_eq!(futures::executor::block_on(look_blocking(|| 7)), None);
    }

    #[test]
    fn a_watched_file_is_read_only_once_it_has_settled() {
        let path =
            std::env::temp_dir().join(format!("mofa-settle-{}.rhai", crate::envelope::new_id()));
        // Just written: not read. A try where this thread stalled past the settling time is
        // made again (the file would rightly count as settled).
        let in_time = (0..20).any(|_| {
            let written = std::time::Instant::now();
            std::fs::write(&path, "40 + 2").unwrap();
            let (stamp, read) = (file_stamp(&path), read_settled(&path));
            let fresh = written.elapsed() < SETTLE;
            if fresh {
                assert_eq!(stamp, None, "just written");
                assert!(matches!(read, Ok(None)));
            }
            fresh
        });
        assert!(in_time, "no look within the settling time");
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - 2 * SETTLE).unwrap();
        let (stamp, text) = read_settled(&path).unwrap().expect("settled");
        assert_eq!((stamp.1, text.as_str()), (6, "40 + 2"));
        assert_eq!(file_stamp(&path), Some(stamp));
        std::fs::remove_file(&path).unwrap();
        assert!(read_settled(&path).is_err(), "gone");
    }
}
