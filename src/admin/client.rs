//! The CLI side of the admin socket: send one request to the daemon that holds
//! the store, follow its progress, get its result; time out and retry with the
//! same request id (the daemon de-duplicates by id, so a retry never runs the
//! operation twice).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::proto::{Event, MAX_LINE, PROTO_VERSION, Request, decode_line, encode_line};

/// How long the client waits for any line (progress or result) before it gives
/// the attempt up; the daemon sends keepalives well within it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Attempts per request (the first plus retries).
pub const ATTEMPTS: u32 = 3;

/// A failed admin request.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The daemon ran the request and it failed.
    #[error("{message}")]
    Remote { errno: i32, message: String },
    #[error(
        "the daemon holding the store did not answer in time ({0}); \
         check it with `rbdfs status` or its log"
    )]
    TimedOut(String),
    #[error("talking to the daemon failed: {0}")]
    Io(#[from] io::Error),
}

impl AdminError {
    pub fn errno(&self) -> i32 {
        match self {
            AdminError::Remote { errno, .. } => *errno,
            AdminError::TimedOut(_) => libc::ETIMEDOUT,
            AdminError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// A connection target: the admin socket of a running daemon.
#[derive(Clone, Debug)]
pub struct AdminClient {
    path: PathBuf,
    idle_timeout: Duration,
}

impl AdminClient {
    /// The daemon listening on `path`, or `None` when nobody listens there (no
    /// socket file, or a stale one left by a dead daemon).
    pub fn probe(path: &Path) -> Option<Self> {
        match UnixStream::connect(path) {
            Ok(_) => Some(Self {
                path: path.to_path_buf(),
                idle_timeout: IDLE_TIMEOUT,
            }),
            Err(_) => None,
        }
    }

    /// The same daemon, with the client giving up after `idle` without a
    /// line from it (tests).
    pub fn with_idle_timeout(self, idle: Duration) -> Self {
        Self {
            idle_timeout: idle,
            ..self
        }
    }

    /// Send `args` as verb `verb`; `progress(what, done, total)` is called for
    /// every progress line. Returns the output on success.
    pub fn call(
        &self,
        verb: &str,
        args: serde_json::Value,
        progress: &mut dyn FnMut(&str, u64, u64),
    ) -> Result<serde_json::Value, AdminError> {
        let req = Request {
            v: PROTO_VERSION,
            id: new_request_id(),
            verb: verb.to_string(),
            args,
        };
        let mut last_err = None;
        for attempt in 0..ATTEMPTS {
            match self.attempt(&req, progress) {
                Ok(Ok(out)) => return Ok(out),
                Ok(Err((errno, message))) => return Err(AdminError::Remote { errno, message }),
                Err(e) => {
                    log::warn!(
                        "admin request {} attempt {} failed: {e}",
                        req.id,
                        attempt + 1
                    );
                    last_err = Some(e);
                }
            }
        }
        let e = last_err.unwrap_or_else(|| io::Error::other("no attempt made"));
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            Err(AdminError::TimedOut(format!("{} attempts", ATTEMPTS)))
        } else {
            Err(AdminError::Io(e))
        }
    }

    fn attempt(
        &self,
        req: &Request,
        progress: &mut dyn FnMut(&str, u64, u64),
    ) -> io::Result<Result<serde_json::Value, (i32, String)>> {
        let mut stream = UnixStream::connect(&self.path)?;
        stream.set_read_timeout(Some(self.idle_timeout))?;
        stream.write_all(&encode_line(req))?;
        let mut rd = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut rd)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut line)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the daemon closed the connection before answering",
                ));
            }
            let ev: Event = decode_line(&line).map_err(io::Error::other)?;
            // Id 0: the daemon could not read the request to know its id.
            if let Event::Result {
                id: 0,
                errno,
                message,
                ..
            } = &ev
            {
                if *errno != 0 {
                    return Ok(Err((*errno, message.clone())));
                }
            }
            if ev.id() != req.id {
                return Err(io::Error::other("the daemon answered another request"));
            }
            match ev {
                // A keepalive of a request that reports no progress.
                Event::Progress { what, .. } if what.is_empty() => {}
                Event::Progress {
                    what, done, total, ..
                } => progress(&what, done, total),
                Event::Result {
                    errno,
                    message,
                    output,
                    ..
                } => {
                    return Ok(if errno == 0 {
                        Ok(output)
                    } else {
                        Err((errno, message))
                    });
                }
            }
        }
    }
}

/// A request id unique enough across processes: pid in the high bits, a clock
/// reading below.
fn new_request_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (u64::from(std::process::id()) << 40) ^ (nanos & ((1 << 40) - 1))
}
