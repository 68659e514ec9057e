//! Printing command outputs the way `rbd` does: aligned text tables, or JSON
//! (`--format json`, indented with `--pretty-format`).

use serde::Serialize;

use super::command::{InfoOut, Output, Watcher};
use super::size::format_size;

/// Text or JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Plain,
    Json { pretty: bool },
}

fn to_json<T: Serialize>(v: &T, pretty: bool) -> String {
    let r = if pretty {
        // rbd indents by 4.
        let mut buf = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
        v.serialize(&mut ser)
            .map(|_| String::from_utf8_lossy(&buf).into_owned())
    } else {
        serde_json::to_string(v)
    };
    r.unwrap_or_default()
}

/// Columns padded to their widest cell, two spaces apart, like `rbd ls -l`.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

fn info_text(i: &InfoOut) -> String {
    let mut s = format!(
        "rbd image '{}':\n\tsize {} in {} objects\n\torder {} ({} objects)\n\
         \tsnapshot_count: {}\n\tid: {}\n\tblock_name_prefix: {}\n\tformat: {}\n\
         \tfeatures: {}\n\top_features: \n\tflags: \n\tcreate_timestamp: {}\n\
         \taccess_timestamp: {}\n\tmodify_timestamp: {}\n",
        i.name,
        format_size(i.size),
        i.objects,
        i.order,
        format_size(i.object_size),
        i.snapshot_count,
        i.id,
        i.block_name_prefix,
        i.format,
        i.features.join(", "),
        i.create_timestamp,
        i.access_timestamp,
        i.modify_timestamp,
    );
    if let Some(p) = &i.parent {
        s.push_str(&format!(
            "\tparent: {}/{}@{}\n\toverlap: {}\n",
            p.pool,
            p.image,
            p.snapshot,
            format_size(p.overlap)
        ));
    }
    if let Some(p) = &i.protected {
        let cap = if p == "true" { "True" } else { "False" };
        s.push_str(&format!("\tprotected: {cap}\n"));
    }
    s
}

/// Provisioned size of the heads, and space used by everything listed.
fn du_totals(d: &[super::command::DuRow]) -> (u64, u64) {
    let prov = d
        .iter()
        .filter(|e| e.snapshot.is_none())
        .map(|e| e.provisioned_size)
        .sum();
    (prov, d.iter().map(|e| e.used_size).sum())
}

/// The text to print on stdout for `out` (empty for nothing).
pub fn render(out: &Output, style: Style) -> String {
    if let Style::Json { pretty } = style {
        #[derive(Serialize)]
        struct Images<'a> {
            images: &'a [super::command::DuRow],
            // With more than one row, as the text's `<TOTAL>` line.
            #[serde(skip_serializing_if = "Option::is_none")]
            total_provisioned_size: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            total_used_size: Option<u64>,
        }
        #[derive(Serialize)]
        struct Child<'a> {
            pool: &'a str,
            pool_namespace: &'a str,
            image: &'a str,
        }
        // Typed values, not `serde_json::Value`, so fields keep rbd's order.
        let text = match out {
            Output::Nothing => return String::new(),
            Output::Pools(p) => to_json(p, pretty),
            Output::Names(n) => to_json(n, pretty),
            Output::Long(r) => to_json(r, pretty),
            Output::Info(i) => to_json(i, pretty),
            Output::Snaps(s) => to_json(s, pretty),
            Output::Children(c) => {
                let kids: Vec<Child<'_>> = c
                    .iter()
                    .map(|c| {
                        let (pool, image) = c.split_once('/').unwrap_or(("", c));
                        Child {
                            pool,
                            pool_namespace: "",
                            image,
                        }
                    })
                    .collect();
                to_json(&kids, pretty)
            }
            Output::Du(d) => {
                let (prov, used) = du_totals(d);
                let many = d.len() > 1;
                let images = Images {
                    images: d,
                    total_provisioned_size: many.then_some(prov),
                    total_used_size: many.then_some(used),
                };
                to_json(&images, pretty)
            }
            Output::Status(s) => to_json(s, pretty),
            Output::Osds(o) => to_json(o, pretty),
            Output::Pgs(p) => to_json(p, pretty),
            Output::Scrub(r) => to_json(r, pretty),
        };
        return text + "\n";
    }
    match out {
        Output::Nothing => String::new(),
        Output::Pools(p) => p.iter().map(|p| format!("{}\n", p.name)).collect(),
        Output::Names(n) | Output::Children(n) => n.iter().map(|n| format!("{n}\n")).collect(),
        Output::Long(rows) => {
            if rows.is_empty() {
                return String::new();
            }
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let name = match &r.snapshot {
                        Some(s) => format!("{}@{s}", r.image),
                        None => r.image.clone(),
                    };
                    let parent = r
                        .parent
                        .as_ref()
                        .map(|p| format!("{}/{}@{}", p.pool, p.image, p.snapshot))
                        .unwrap_or_default();
                    let prot = match r.protected.as_deref() {
                        Some("true") => "yes".to_string(),
                        _ => String::new(),
                    };
                    vec![
                        name,
                        format_size(r.size),
                        parent,
                        r.format.to_string(),
                        prot,
                        String::new(),
                    ]
                })
                .collect();
            table(&["NAME", "SIZE", "PARENT", "FMT", "PROT", "LOCK"], &cells)
        }
        Output::Info(i) => info_text(i),
        Output::Snaps(s) => {
            if s.is_empty() {
                return String::new();
            }
            let cells: Vec<Vec<String>> = s
                .iter()
                .map(|s| {
                    let prot = if s.protected == "true" { "yes" } else { "" };
                    vec![
                        s.id.to_string(),
                        s.name.clone(),
                        format_size(s.size),
                        prot.to_string(),
                        s.timestamp.clone(),
                    ]
                })
                .collect();
            table(
                &["SNAPID", "NAME", "SIZE", "PROTECTED", "TIMESTAMP"],
                &cells,
            )
        }
        Output::Du(d) => {
            let mut cells: Vec<Vec<String>> = d
                .iter()
                .map(|e| {
                    let name = match &e.snapshot {
                        Some(s) => format!("{}@{s}", e.name),
                        None => e.name.clone(),
                    };
                    vec![
                        name,
                        format_size(e.provisioned_size),
                        format_size(e.used_size),
                    ]
                })
                .collect();
            if d.len() > 1 {
                let (prov, used) = du_totals(d);
                cells.push(vec!["<TOTAL>".into(), format_size(prov), format_size(used)]);
            }
            table(&["NAME", "PROVISIONED", "USED"], &cells)
        }
        Output::Osds(rows) => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|o| {
                    vec![
                        format!("osd.{}", o.id),
                        match (o.up, o.lost) {
                            (true, _) => "up",
                            (false, false) => "down",
                            (false, true) => "down (lost)",
                        }
                        .into(),
                        if o.in_ { "in" } else { "out" }.into(),
                        o.path.clone(),
                    ]
                })
                .collect();
            table(&["ID", "STATUS", "IN", "PATH"], &cells)
        }
        Output::Pgs(pgs) => {
            let list = |v: &[u32]| {
                let ids: Vec<String> = v.iter().map(u32::to_string).collect();
                format!("[{}]", ids.join(","))
            };
            let cells: Vec<Vec<String>> = pgs
                .iter()
                .map(|p| {
                    vec![
                        p.pgid.clone(),
                        p.objects.to_string(),
                        p.degraded_objects.to_string(),
                        p.state.clone(),
                        p.last_update.clone(),
                        list(&p.up),
                        list(&p.acting),
                    ]
                })
                .collect();
            table(
                &[
                    "PG", "OBJECTS", "DEGRADED", "STATE", "VERSION", "UP", "ACTING",
                ],
                &cells,
            )
        }
        Output::Scrub(r) => {
            let mut t = String::new();
            for i in &r.inconsistencies {
                let snap = if i.snap == crate::rados::SNAP_HEAD {
                    "head".to_string()
                } else {
                    format!("clone {:x}", i.snap)
                };
                t.push_str(&format!(
                    "pg {} object {} ({snap}): {}{}\n",
                    i.pgid,
                    i.object,
                    i.errors.join("; "),
                    if i.repaired { " [repaired]" } else { "" }
                ));
            }
            t.push_str(&format!(
                "{}scrubbed {} pgs, {} objects: {} inconsistent, {} repaired\n",
                if r.deep { "deep-" } else { "" },
                r.pgs_scrubbed,
                r.objects_scrubbed,
                r.inconsistencies.len(),
                r.inconsistencies.len() - r.unrepaired()
            ));
            for p in &r.pgs_skipped {
                t.push_str(&format!(
                    "pg {} not scrubbed: {}; scrub again once it is active\n",
                    p.pgid, p.state
                ));
            }
            t
        }
        Output::Status(s) => {
            let mut t = format!("store: {}\n", s.store);
            match (s.daemon_pid, &s.mountpoint) {
                (Some(pid), Some(m)) => t.push_str(&format!("mounted: {m} (daemon pid {pid})\n")),
                (Some(pid), None) => t.push_str(&format!("daemon pid {pid}\n")),
                _ => t.push_str("mounted: no\n"),
            }
            for p in &s.pools {
                t.push_str(&format!(
                    "pool {} id {} size {} min_size {} pg_num {}\n",
                    p.name, p.id, p.size, p.min_size, p.pg_num
                ));
            }
            if let Some(i) = &s.image {
                t.push_str(&format!("image {i}\n"));
            }
            match s.watchers.as_deref() {
                None => {}
                Some([]) => t.push_str("Watchers: none\n"),
                Some(ws) => {
                    t.push_str("Watchers:\n");
                    for w in ws {
                        t.push_str(&format!("\twatcher={}\n", watcher_line(w)));
                    }
                }
            }
            if let Some(f) = &s.flatten {
                t.push_str(&format!("flatten: {f}\n"));
            }
            if let Some(c) = &s.cluster {
                t.push('\n');
                t.push_str(&c.to_string());
            }
            t
        }
    }
}

/// One watcher of `status IMAGE`: what holds the file open, the file, how.
fn watcher_line(w: &Watcher) -> String {
    let access = if w.writable {
        "read-write"
    } else {
        "read-only"
    };
    let process = match (w.process.as_str(), w.running) {
        ("", _) => format!("pid {}", w.pid),
        (name, true) => format!("pid {} ({name})", w.pid),
        (name, false) => format!("pid {} ({name}, exited)", w.pid),
    };
    match &w.loop_device {
        Some(dev) => format!("{dev} {} {access}, set up by {process}", w.file),
        None => format!("{process} {} {access}", w.file),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::command::{DuRow, LsRow};

    #[test]
    fn test_render_du_json_has_rbd_shape() {
        let out = Output::Du(vec![DuRow {
            name: "child".into(),
            id: "abc".into(),
            snapshot: None,
            snapshot_id: None,
            provisioned_size: 1 << 30,
            used_size: 4 << 20,
        }]);

        let text = render(&out, Style::Json { pretty: false });

        assert_eq!(
            text,
            "{\"images\":[{\"name\":\"child\",\"id\":\"abc\",\
             \"provisioned_size\":1073741824,\"used_size\":4194304}]}\n"
        );
    }

    #[test]
    fn test_render_ls_long_aligns_columns() {
        let out = Output::Long(vec![LsRow {
            image: "parent".into(),
            snapshot: Some("s1".into()),
            size: 1 << 30,
            parent: None,
            format: 2,
            protected: Some("true".into()),
        }]);

        let text = render(&out, Style::Plain);

        assert_eq!(
            text,
            "NAME       SIZE   PARENT  FMT  PROT  LOCK\nparent@s1  1 GiB          2    yes\n"
        );
    }
}
