//! The admin socket: how `rbdfs <verb>` asks the daemon that holds a store to do
//! something (the daemon owns the images, so it is the one that may change them).
//!
//! JSON lines over a Unix socket `STORE/admin.sock` (mode 0600): see [`proto`].

pub mod client;
pub mod proto;
pub mod server;

pub use client::{AdminClient, AdminError};
pub use server::{AdminServer, Handler, Outcome, ProgressTx};

/// File name of the admin socket inside a store directory.
pub const SOCKET_NAME: &str = "admin.sock";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rados::BoxFuture;
    use crate::sync::{Arc, Mutex};

    struct Echo;

    impl Handler for Echo {
        fn handle(
            &self,
            _id: u64,
            args: serde_json::Value,
            p: ProgressTx,
        ) -> BoxFuture<'static, Outcome> {
            Box::pin(async move {
                for i in 1..=3 {
                    p.send("Echo", i, 3);
                }
                if args["fail"] == true {
                    Err((libc::EBUSY, "busy: try later".into()))
                } else {
                    Ok(args)
                }
            })
        }
    }

    fn serve() -> (tempfile::TempDir, tokio::runtime::Runtime, AdminServer) {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let path = dir.path().join(SOCKET_NAME);
        let server = rt.block_on(async { AdminServer::bind(&path, Arc::new(Echo)).unwrap() });
        (dir, rt, server)
    }

    #[test]
    fn test_admin_call_streams_progress_then_result() {
        // Arrange
        let (dir, _rt, _server) = serve();
        let client = AdminClient::probe(&dir.path().join(SOCKET_NAME)).unwrap();
        let mut seen = Vec::new();

        // Act
        let out = client
            .call("echo", serde_json::json!({"x": 1}), &mut |_, d, t| {
                seen.push((d, t))
            })
            .unwrap();

        // Assert
        assert_eq!(out, serde_json::json!({"x": 1}));
        assert_eq!(seen, vec![(1, 3), (2, 3), (3, 3)]);
    }

    #[test]
    fn test_admin_call_failure_carries_errno_and_message() {
        let (dir, _rt, _server) = serve();
        let client = AdminClient::probe(&dir.path().join(SOCKET_NAME)).unwrap();

        let err = client
            .call("echo", serde_json::json!({"fail": true}), &mut |_, _, _| {})
            .unwrap_err();

        assert_eq!(err.errno(), libc::EBUSY);
        assert_eq!(err.to_string(), "busy: try later");
    }

    #[test]
    fn test_admin_socket_mode_is_0600() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, _rt, _server) = serve();

        let mode = std::fs::metadata(dir.path().join(SOCKET_NAME))
            .unwrap()
            .permissions()
            .mode();

        assert_eq!(mode & 0o777, 0o600);
    }

    struct Counting(std::sync::atomic::AtomicU32);

    impl Handler for Counting {
        fn handle(
            &self,
            _: u64,
            _: serde_json::Value,
            _: ProgressTx,
        ) -> BoxFuture<'static, Outcome> {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            Box::pin(async move { Ok(serde_json::json!(n)) })
        }
    }

    /// Send one raw request line and return the result line's output.
    fn send_raw(path: &std::path::Path, req: &proto::Request) -> serde_json::Value {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.write_all(&proto::encode_line(req)).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        match proto::decode_line(line.as_bytes()).unwrap() {
            proto::Event::Result { output, .. } => output,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn test_admin_retried_request_id_runs_once() {
        // Arrange
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let path = dir.path().join(SOCKET_NAME);
        let handler = Arc::new(Counting(Default::default()));
        let _server = rt.block_on(async { AdminServer::bind(&path, handler.clone()).unwrap() });
        let req = proto::Request {
            v: proto::PROTO_VERSION,
            id: 42,
            verb: "snap_create".into(),
            args: serde_json::json!({}),
        };

        // Act: the same request twice (a client retry), then a new one.
        let first = send_raw(&path, &req);
        let retry = send_raw(&path, &req);
        let other = send_raw(&path, &proto::Request { id: 43, ..req });

        // Assert
        assert_eq!((first, retry, other), (1.into(), 1.into(), 2.into()));
    }

    #[test]
    fn test_admin_other_protocol_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let path = dir.path().join(SOCKET_NAME);
        let handler = Arc::new(Counting(Default::default()));
        let _server = rt.block_on(async { AdminServer::bind(&path, handler.clone()).unwrap() });
        let req = proto::Request {
            v: 9,
            id: 1,
            verb: "ls".into(),
            args: serde_json::json!({}),
        };

        let out = send_raw(&path, &req);

        assert_eq!(out, serde_json::Value::Null);
        assert_eq!(handler.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    /// Runs until the test lets it go, reporting no progress (as a scrub).
    struct Gated {
        started: std::sync::mpsc::SyncSender<()>,
        release: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    }

    impl Handler for Gated {
        fn handle(
            &self,
            _: u64,
            _: serde_json::Value,
            _: ProgressTx,
        ) -> BoxFuture<'static, Outcome> {
            let _ = self.started.send(());
            let release = self.release.lock().take();
            Box::pin(async move {
                if let Some(r) = release {
                    let _ = r.await;
                }
                Ok(serde_json::json!("finished"))
            })
        }
    }

    /// A server whose one request runs until `go`; `on_start` hears when
    /// it starts.
    struct GatedServer {
        _dir: tempfile::TempDir,
        rt: tokio::runtime::Runtime,
        path: std::path::PathBuf,
        server: AdminServer,
        on_start: std::sync::mpsc::Receiver<()>,
        go: tokio::sync::oneshot::Sender<()>,
    }

    fn serve_gated(keepalive: std::time::Duration) -> GatedServer {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let path = dir.path().join(SOCKET_NAME);
        let (started, on_start) = std::sync::mpsc::sync_channel(1);
        let (go, release) = tokio::sync::oneshot::channel();
        let h = Arc::new(Gated {
            started,
            release: Mutex::new(Some(release)),
        });
        let server =
            rt.block_on(async { AdminServer::bind_with_keepalive(&path, h, keepalive).unwrap() });
        GatedServer {
            _dir: dir,
            rt,
            path,
            server,
            on_start,
            go,
        }
    }

    #[test]
    fn test_admin_request_without_progress_outlives_the_client_idle_timeout() {
        // Arrange: keepalives every 50 ms, a client that gives up after
        // 300 ms without a line, a request that runs for 1 s.
        let g = serve_gated(std::time::Duration::from_millis(50));
        let (path, rt, go) = (g.path, g.rt, g.go);
        let client = AdminClient::probe(&path)
            .unwrap()
            .with_idle_timeout(std::time::Duration::from_millis(300));
        rt.spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let _ = go.send(());
        });
        let mut progress = Vec::new();

        // Act
        let out = client.call("scrub", serde_json::json!({}), &mut |w, d, t| {
            progress.push((w.to_string(), d, t))
        });

        // Assert: answered, and the keepalives were not shown as progress.
        assert_eq!(out.unwrap(), serde_json::json!("finished"));
        assert!(progress.is_empty(), "{progress:?}");
    }

    #[test]
    fn test_admin_close_waits_for_running_requests() {
        // Arrange: a request that runs until let go.
        let g = serve_gated(server::KEEPALIVE);
        let (path, rt, go, on_start, server) = (g.path, g.rt, g.go, g.on_start, g.server);
        let client = AdminClient::probe(&path).unwrap();
        let call = std::thread::spawn(move || {
            client.call("import", serde_json::json!({}), &mut |_, _, _| {})
        });
        on_start.recv().unwrap();

        // Act
        let mut closing = rt.spawn(server.close(std::time::Duration::from_secs(60)));
        let new_client = AdminClient::probe(&path);
        let waited = rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(200), &mut closing)
                .await
                .is_err()
        });

        // Assert: no new requests; close waits for the running one (it
        // cannot end while the request runs).
        assert!(new_client.is_none(), "the socket still takes requests");
        assert!(waited, "close did not wait");
        go.send(()).unwrap();
        rt.block_on(closing).unwrap();
        assert_eq!(call.join().unwrap().unwrap(), serde_json::json!("finished"));
        assert!(!path.exists(), "the socket file is left");
    }

    struct Panics;

    impl Handler for Panics {
        fn handle(
            &self,
            _: u64,
            _: serde_json::Value,
            _: ProgressTx,
        ) -> BoxFuture<'static, Outcome> {
            Box::pin(async { panic!("injected") })
        }
    }

    #[test]
    fn test_admin_handler_that_panics_answers_an_error_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let path = dir.path().join(SOCKET_NAME);
        let _server = rt.block_on(async { AdminServer::bind(&path, Arc::new(Panics)).unwrap() });
        let client = AdminClient::probe(&path).unwrap();

        let first = client.call("ls", serde_json::json!({}), &mut |_, _, _| {});
        let second = client.call("ls", serde_json::json!({}), &mut |_, _, _| {});

        for r in [first, second] {
            assert_eq!(r.unwrap_err().errno(), libc::EIO);
        }
    }

    #[test]
    fn test_admin_request_too_large_is_einval_for_its_client() {
        let (dir, _rt, _server) = serve();
        let client = AdminClient::probe(&dir.path().join(SOCKET_NAME)).unwrap();
        let huge = "x".repeat(proto::MAX_LINE + 1);

        let err = client
            .call("echo", serde_json::json!({ "x": huge }), &mut |_, _, _| {})
            .unwrap_err();

        assert_eq!(err.errno(), libc::EINVAL, "{err}");
    }

    #[test]
    fn test_admin_probe_without_daemon_is_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SOCKET_NAME), b"").unwrap();

        assert!(AdminClient::probe(&dir.path().join(SOCKET_NAME)).is_none());
    }
}
