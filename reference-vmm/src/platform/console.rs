//! Guest console output: kept in memory (the last [`CONSOLE_KEEP`] bytes)
//! and optionally copied to the VMM's stdout.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes of guest output kept in memory: older output is dropped.
pub const CONSOLE_KEEP: usize = 1 << 20;

#[derive(Default)]
struct Buffer {
    /// The last bytes written; between `CONSOLE_KEEP` and twice that it is
    /// trimmed back, so a byte-at-a-time writer costs O(1) amortized.
    bytes: Vec<u8>,
}

impl Buffer {
    fn tail(&self) -> &[u8] {
        let start = self.bytes.len().saturating_sub(CONSOLE_KEEP);
        self.bytes.get(start..).unwrap_or_default()
    }
}

struct Inner {
    buffer: Mutex<Buffer>,
    grown: Condvar,
    tee_stdout: bool,
}

/// A clonable handle on one console; every clone sees the same output.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

impl Default for Console {
    /// A console that only keeps output in memory.
    fn default() -> Self {
        Self::new(false)
    }
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("tee_stdout", &self.inner.tee_stdout)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// A console; with `tee_stdout` guest output is also written to stdout.
    pub fn new(tee_stdout: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                buffer: Mutex::new(Buffer::default()),
                grown: Condvar::new(),
                tee_stdout,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.inner.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends guest output.
    pub fn push(&self, data: &[u8]) {
        {
            let mut b = self.lock();
            b.bytes.extend_from_slice(data);
            if b.bytes.len() > 2 * CONSOLE_KEEP {
                let excess = b.bytes.len() - CONSOLE_KEEP;
                b.bytes.drain(..excess);
            }
        }
        self.inner.grown.notify_all();
        if self.inner.tee_stdout {
            let mut out = io::stdout().lock();
            // Console output to stdout is best effort: a closed stdout must
            // not stop the guest.
            let _ = out.write_all(data).and_then(|()| out.flush());
        }
    }

    /// The kept output (the last [`CONSOLE_KEEP`] bytes), lossily decoded.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(self.lock().tail()).into_owned()
    }

    /// Waits until the kept output contains `needle`; `false` after
    /// `timeout` without it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let needle = needle.as_bytes();
        let mut b = self.lock();
        loop {
            let tail = b.tail();
            if needle.is_empty() || tail.windows(needle.len()).any(|w| w == needle) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            b = match self.inner.grown.wait_timeout(b, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn keeps_output_and_wakes_waiters() {
        let c = Console::default();
        let w = c.clone();
        let t = thread::spawn(move || w.wait_for("login:", Duration::from_secs(10)));
        thread::sleep(Duration::from_millis(20));
        c.clone().write_all(b"hello\nlog").unwrap();
        c.push(b"in: ");
        assert!(t.join().unwrap());
        assert_eq!(c.contents(), "hello\nlogin: ");
        assert!(!c.wait_for("absent", Duration::from_millis(10)));
    }

    #[test]
    fn memory_is_bounded_to_the_last_mib() {
        let c = Console::default();
        let chunk = vec![b'a'; 4096];
        for _ in 0..(3 * CONSOLE_KEEP / chunk.len()) {
            c.push(&chunk);
        }
        c.push(b"END");
        let s = c.contents();
        assert_eq!(s.len(), CONSOLE_KEEP);
        assert!(s.ends_with("aEND"));
        assert!(c.lock().bytes.len() <= 2 * CONSOLE_KEEP);
    }
}
