//! OSD verbs through the daemon while an image is mounted and written: an
//! OSD taken down and brought back, and one whose directory vanishes and is
//! replaced; the image's content is verified against what was written and
//! deep scrub finds every replica identical.

use std::os::unix::fs::FileExt;

use crate::harness::{World, pattern, wait_until};

const IMAGE: u64 = 16 << 20;
const BLOCK: usize = 64 << 10;

/// Writes 64 KiB blocks over the image, remembering what each holds.
struct Writer {
    file: std::fs::File,
    expect: Vec<u8>,
    round: u64,
}

impl Writer {
    fn new(w: &World) -> Writer {
        let path = w.path("rbd/vol");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(IMAGE).unwrap();
        Writer {
            file,
            expect: vec![0; IMAGE as usize],
            round: 0,
        }
    }

    /// Write `n` blocks at spread offsets and fsync.
    fn write(&mut self, n: usize) {
        for _ in 0..n {
            self.round += 1;
            let blocks = IMAGE as usize / BLOCK;
            let off = (self.round as usize * 37 % blocks) * BLOCK;
            let data = pattern(self.round, BLOCK);
            self.file.write_all_at(&data, off as u64).unwrap();
            self.expect[off..off + BLOCK].copy_from_slice(&data);
        }
        self.file.sync_all().unwrap();
    }

    /// The image as the cluster holds it (exported by the daemon) is what
    /// was written.
    fn verify(&self, w: &World) {
        let out = w.dir.path().join("export");
        let _ = std::fs::remove_file(&out);
        w.cli(&["export", "vol", out.to_str().unwrap()]);
        let got = std::fs::read(&out).unwrap();
        assert!(
            got == self.expect,
            "the exported image differs from what was written"
        );
    }
}

fn osd(w: &World, id: u64) -> serde_json::Value {
    let ls: serde_json::Value =
        serde_json::from_str(&w.cli(&["osd", "ls", "--format", "json"])).unwrap();
    ls.as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == id)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

fn assert_deep_scrub_clean(w: &World) {
    let out = w.cli_output(&["scrub", "--deep"]);
    assert!(
        out.status.success(),
        "deep scrub: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn test_osd_down_and_up_while_mounted_loses_nothing() {
    let w = World::new();
    let mut wr = Writer::new(&w);
    wr.write(40);

    w.cli(&["osd", "down", "2"]);
    wr.write(40);
    let status: serde_json::Value =
        serde_json::from_str(&w.cli(&["status", "--format", "json"])).unwrap();
    w.cli(&["osd", "up", "2"]);
    wr.write(10);

    assert_eq!(status["cluster"]["num_up_osds"], 2, "{status}");
    assert_eq!(status["cluster"]["health"], "HEALTH_WARN", "{status}");
    assert_eq!(osd(&w, 2)["up"], true);
    assert_deep_scrub_clean(&w);
    wr.verify(&w);
    let status: serde_json::Value =
        serde_json::from_str(&w.cli(&["status", "--format", "json"])).unwrap();
    assert_eq!(status["cluster"]["health"], "HEALTH_OK", "{status}");
}

#[test]
fn test_vanished_osd_dir_while_mounted_is_replaced_by_add_and_rm() {
    let w = World::new();
    let mut wr = Writer::new(&w);
    wr.write(40);

    std::fs::remove_dir_all(w.store.join("osd.1")).unwrap();
    wr.write(20);
    wait_until("osd.1 is marked down", || osd(&w, 1)["up"] == false);
    wr.write(20);
    let new = w.dir.path().join("osd.new");
    let added = w.cli(&["osd", "add", "--path", new.to_str().unwrap()]);
    w.cli(&["osd", "out", "1"]);
    w.cli(&["osd", "rm", "1"]);
    wr.write(10);

    assert_eq!(added.trim(), "osd.3");
    assert!(osd(&w, 1).is_null(), "osd.1 is still listed");
    assert_deep_scrub_clean(&w);
    wr.verify(&w);
}
