//! Crash tests of the journal: a child process (this test binary, running the ignored
//! `crash_child` test) writes, reports what it has had acknowledged and is killed with
//! SIGKILL; the parent reopens the directory and checks that everything acknowledged is there,
//! replayed from the journal, and that nothing else is.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use ferrobus_store::storage::{Batch, Cf, Storage};

use crate::journal::{self, read_record};
use crate::tests::close;
use crate::{RocksOptions, RocksStorage};

const CHILD: &str = "FERROBUS_JOURNAL_CRASH_CHILD";

/// One run of writes: batches `from..to`, values marked with `tag`.
#[derive(Clone, Copy)]
struct Phase {
    from: u32,
    to: u32,
    tag: u8,
    /// Every fifth batch is lazy (nobody waits for it; the next synced one covers it).
    lazy: bool,
}

impl Phase {
    fn new(from: u32, to: u32, tag: u8, lazy: bool) -> Self {
        Phase {
            from,
            to,
            tag,
            lazy,
        }
    }
}

fn key(i: u32) -> Vec<u8> {
    i.to_be_bytes().to_vec()
}

fn value(i: u32, tag: u8) -> Bytes {
    let mut v = vec![tag; 3000];
    v[..4].copy_from_slice(&i.to_be_bytes());
    Bytes::from(v)
}

/// Batch `i` puts key `i`; every third also deletes the key before it; each raises a mark.
fn batch(i: u32, tag: u8, lazy: bool) -> Batch {
    let mut b = Batch {
        lazy,
        ..Batch::default()
    };
    b.put(Cf::Ref, key(i), value(i, tag));
    if i % 3 == 2 {
        b.delete(Cf::Ref, key(i - 1));
    }
    b.max(Cf::Meta, b"N".to_vec(), u64::from(i));
    b
}

fn run(s: &RocksStorage, p: Phase) {
    for i in p.from..p.to {
        // the last batch is always synced: it covers the lazy ones before it
        if p.lazy && i % 5 == 4 && i + 1 < p.to {
            s.write(batch(i, p.tag, true), Box::new(|_| {}));
        } else {
            ferrobus_store::testing::write_and_wait(s, batch(i, p.tag, false)).unwrap();
        }
    }
}

fn expected(phases: &[Phase]) -> Vec<(Vec<u8>, Bytes)> {
    let mut m = BTreeMap::new();
    for p in phases {
        for i in p.from..p.to {
            m.insert(key(i), value(i, p.tag));
            if i % 3 == 2 {
                m.remove(&key(i - 1));
            }
        }
    }
    m.into_iter().collect()
}

fn opts(segment: u64) -> RocksOptions {
    RocksOptions {
        journal_segment_bytes: Some(segment),
        ..Default::default()
    }
}

fn open(dir: &Path, segment: u64) -> RocksStorage {
    RocksStorage::open(dir, opts(segment)).unwrap()
}

fn check(s: &RocksStorage, phases: &[Phase]) {
    let got = s.scan(Cf::Ref, &[0], &[0xff; 5]).unwrap();
    let want = expected(phases);
    assert_eq!(got.len(), want.len(), "keys after recovery");
    assert!(got == want, "values after recovery differ");
    let n = s.get_many(Cf::Meta, &[b"N".to_vec()]).unwrap();
    assert_eq!(
        n[0].as_deref()
            .and_then(ferrobus_store::storage::decode_max),
        phases.last().map(|p| u64::from(p.to - 1))
    );
}

/// Runs `p` in a child process on `dir` and kills it once everything is acknowledged.
fn crash_after(dir: &Path, segment: u64, p: Phase) {
    let spec = format!(
        "{};{};{};{};{};{}",
        dir.display(),
        p.from,
        p.to,
        p.tag,
        segment,
        u8::from(p.lazy)
    );
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "journal_tests::crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, spec)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut acknowledged = false;
    for line in out.lines() {
        // the test harness may print its own words on the same line
        if line.unwrap().contains("ACKNOWLEDGED") {
            acknowledged = true;
            break;
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(acknowledged, "the child stopped early: {status}");
}

#[test]
#[ignore = "the child process of the crash tests"]
fn crash_child() {
    let spec = std::env::var(CHILD).expect("run by the crash tests");
    let f: Vec<&str> = spec.split(';').collect();
    let p = Phase {
        from: f[1].parse().unwrap(),
        to: f[2].parse().unwrap(),
        tag: f[3].parse().unwrap(),
        lazy: f[5] == "1",
    };
    let s = open(Path::new(f[0]), f[4].parse().unwrap());
    run(&s, p);
    println!("ACKNOWLEDGED");
    // wait to be killed, the storage open
    std::thread::sleep(Duration::from_secs(120));
    unreachable!("the parent kills this process");
}

fn fresh(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrobus-journal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_killed_process_loses_nothing_acknowledged_across_recycled_segments() {
    let dir = fresh("recycle");
    // 64 KiB segments hold 16 one-block records: 300 batches fill ~19 of them
    let segment = 64 * 1024;
    let first = Phase::new(0, 300, 1, true);
    crash_after(&dir, segment, first);
    let s = open(&dir, segment);
    // Usually the last records are replayed from the journal; when the retirer's flush (after
    // the last full segment) ran after the last write, RocksDB already holds them all and
    // nothing needs replaying. Either way nothing acknowledged may be missing (`check`).
    let replayed = s.recovered.records;
    assert_eq!(s.recovered.discarded, 0);
    check(&s, &[first]);
    // recycled, not one file per segment filled
    assert!(segments(&dir).len() <= 4, "{:?}", segments(&dir));
    close(s);

    // a second life on the recovered journal, killed again
    let second = Phase::new(300, 600, 2, true);
    crash_after(&dir, segment, second);
    let s = open(&dir, segment);
    assert!(
        replayed + s.recovered.records > 0,
        "neither crash left anything to replay: the replay path was not exercised"
    );
    check(&s, &[first, second]);
    close(s);

    // a clean close flushes: nothing left to replay
    let s = open(&dir, segment);
    assert_eq!(s.recovered.records, 0);
    check(&s, &[first, second]);
    close(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_torn_record_ends_the_replay_and_stale_records_never_come_back() {
    let dir = fresh("torn");
    let segment = journal::SEGMENT_BYTES.max;
    let first = Phase::new(0, 10, 1, false);
    crash_after(&dir, segment, first);
    // one record per batch, seq 1..=10, all in one segment: tear the one of batch 8
    let segs = segments(&dir);
    let (file, offset) = segs
        .iter()
        .find_map(|p| {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .unwrap();
            let size = f.metadata().unwrap().len();
            let mut offset = 0;
            while let Some(r) = read_record(&f, size, offset) {
                if r.seq == 9 {
                    return Some((f, offset));
                }
                offset += r.total;
            }
            None
        })
        .expect("record 9 on disk");
    use std::os::unix::fs::FileExt;
    file.write_all_at(b"torn", offset + 100).unwrap();
    file.sync_all().unwrap();
    drop(file);

    let s = open(&dir, segment);
    assert_eq!(s.recovered.records, 8);
    let survived = Phase { to: 8, ..first };
    check(&s, &[survived]);
    close(s);

    // the record after the torn one is still on disk, valid, with sequence number 10: writes
    // after the recovery must never let it back in
    let second = Phase::new(8, 20, 2, false);
    crash_after(&dir, segment, second);
    let s = open(&dir, segment);
    assert!(s.recovered.records > 0);
    check(&s, &[survived, second]);
    close(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn segments_start_small_and_grow_while_they_fill_fast() {
    let dir = fresh("grow");
    let s = RocksStorage::open(&dir, RocksOptions::default()).unwrap();
    let sizes = |dir: &Path| -> Vec<u64> {
        segments(dir)
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .collect()
    };
    assert!(
        sizes(&dir).iter().all(|n| *n == journal::SEGMENT_BYTES.min),
        "{:?}",
        sizes(&dir)
    );
    // ~24 MiB of records in well under two seconds per segment
    for i in 0..8000 {
        s.write(batch(i, 1, true), Box::new(|_| {}));
    }
    ferrobus_store::testing::barrier(&s);
    let grown = sizes(&dir);
    assert!(
        grown.iter().any(|n| *n > journal::SEGMENT_BYTES.min),
        "{grown:?}"
    );
    assert!(grown.len() <= 6, "{grown:?}");
    close(s);
    // a restart keeps the grown size
    let s = RocksStorage::open(&dir, RocksOptions::default()).unwrap();
    assert!(sizes(&dir).iter().any(|n| *n > journal::SEGMENT_BYTES.min));
    close(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_group_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = fresh("large");
    let segment = 64 * 1024;
    let big = Bytes::from(vec![9u8; 300 * 1024]);
    {
        let s = open(&dir, segment);
        let mut b = Batch::default();
        b.put(Cf::Body, b"big".to_vec(), big.clone());
        ferrobus_store::testing::write_and_wait(&s, b).unwrap();
        // it is being written to: not recycled yet
        assert!(
            segments(&dir)
                .iter()
                .any(|p| std::fs::metadata(p).unwrap().len() > segment),
            "no segment large enough for the big group"
        );
        // the next groups go to ordinary segments again
        run(&s, Phase::new(0, 40, 1, false));
        close(s);
    }
    let s = open(&dir, segment);
    assert_eq!(
        s.get_many(Cf::Body, &[b"big".to_vec()]).unwrap()[0].as_ref(),
        Some(&big)
    );
    check(&s, &[Phase::new(0, 40, 1, false)]);
    // the one-off segment is not kept for reuse
    assert!(segments(&dir)
        .iter()
        .all(|p| std::fs::metadata(p).unwrap().len() == segment));
    close(s);
    let _ = std::fs::remove_dir_all(&dir);
}
