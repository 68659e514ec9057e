//! The admin socket's wire format: JSON lines over a Unix stream socket.
//!
//! A client sends one [`Request`] line; the daemon answers with any number of
//! [`Event::Progress`] lines followed by exactly one [`Event::Result`] line, all
//! carrying the request's id, then the client closes the connection (one request
//! per connection keeps the daemon side stateless).
//!
//! ```text
//! -> {"v":1,"id":7,"verb":"flatten","args":{...}}
//! <- {"id":7,"event":"progress","what":"Image flatten","done":3,"total":64}
//! <- {"id":7,"event":"result","errno":0,"message":"","output":{...}}
//! ```
//!
//! The id makes a retried request idempotent: the daemon remembers recent ids and
//! answers a repeat with the outcome of the first attempt (or attaches to it while
//! it still runs) instead of doing the work twice.

use serde::{Deserialize, Serialize};

/// Version of the line format; a daemon refuses requests of another version.
pub const PROTO_VERSION: u8 = 1;

/// Longest line either side accepts (a request or an event), in bytes.
pub const MAX_LINE: usize = 1 << 20;

/// One request from a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Format version, [`PROTO_VERSION`].
    pub v: u8,
    /// Chosen by the client, unique per logical request (kept across retries).
    pub id: u64,
    /// What to do (`flatten`, `snap_create`, ...), for logs; the arguments carry it too.
    pub verb: String,
    /// The command, as the command layer serialises it.
    pub args: serde_json::Value,
}

/// One line from the daemon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Progress of a long operation: `done` of `total` units.
    Progress {
        id: u64,
        what: String,
        done: u64,
        total: u64,
    },
    /// The final answer: `errno` 0 on success, else the error's errno and message.
    Result {
        id: u64,
        errno: i32,
        message: String,
        output: serde_json::Value,
    },
}

impl Event {
    /// The request id the event belongs to.
    pub fn id(&self) -> u64 {
        match self {
            Event::Progress { id, .. } | Event::Result { id, .. } => *id,
        }
    }
}

/// Encode one line (with its trailing newline).
pub fn encode_line<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail: no maps with non-string keys.
    let mut line = serde_json::to_vec(msg).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Decode one line (with or without its newline); malformed input is an error.
pub fn decode_line<'a, T: Deserialize<'a>>(line: &'a [u8]) -> Result<T, serde_json::Error> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    serde_json::from_slice(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_request_golden_line_round_trips() {
        // Arrange: the exact bytes a client of version 1 sends.
        let golden = br#"{"v":1,"id":7,"verb":"flatten","args":{"spec":"rbd/a"}}"#;

        // Act
        let req: Request = decode_line(golden).unwrap();

        // Assert
        assert_eq!(req.id, 7);
        assert_eq!(req.verb, "flatten");
        assert_eq!(encode_line(&req), [&golden[..], b"\n"].concat());
    }

    #[test]
    fn test_event_golden_lines_decode() {
        let progress = br#"{"event":"progress","id":7,"what":"Image flatten","done":3,"total":64}"#;
        let result = br#"{"event":"result","id":7,"errno":22,"message":"no parent","output":null}"#;

        let p: Event = decode_line(progress).unwrap();
        let r: Event = decode_line(result).unwrap();

        assert_eq!(
            p,
            Event::Progress {
                id: 7,
                what: "Image flatten".into(),
                done: 3,
                total: 64
            }
        );
        assert!(matches!(r, Event::Result { errno: 22, .. }));
    }

    #[test]
    fn test_decode_line_corrupt_input_is_error() {
        assert!(decode_line::<Request>(b"{\"v\":1,\"id\":").is_err());
        assert!(decode_line::<Event>(b"\xff\xfe").is_err());
        assert!(decode_line::<Event>(br#"{"event":"bogus","id":1}"#).is_err());
    }
}
