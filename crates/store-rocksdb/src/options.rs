//! RocksDB options and column families, per the store design notes.

use ferrobus_store::storage::Cf;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, DBRecoveryMode, Env,
    MergeOperands, Options,
};

/// Block cache shared by every column family. Queues read their backlog in key order, once,
/// so a small cache does (measured: draining a 200k backlog at the same rate with 8 MiB as
/// with 32 MiB, and 20+ MiB less RSS).
const BLOCK_CACHE_BYTES: usize = 8 * 1024 * 1024;
/// Memtable size per column family (bodies use it; the others stay small).
const WRITE_BUFFER_BYTES: usize = 16 * 1024 * 1024;
/// Memtables of all column families together (the largest part of the broker's memory).
const TOTAL_WRITE_BUFFER_BYTES: usize = 32 * 1024 * 1024;
/// Bodies at least this large go to blob files and are not rewritten by compaction.
const MIN_BLOB_BYTES: u64 = 8 * 1024;

pub(crate) fn db_options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    // writes skip RocksDB's WAL (the journal is the log: see journal.rs); a database last
    // written by a version that used the WAL still recovers from it
    o.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    // without a WAL, a flush must persist every column family at the same point, so that the
    // flushed state names the last journal record it holds
    // (pipelined writes, which overlap WAL and memtable writes of concurrent writers, are
    // incompatible with it and useless with one writer thread and no WAL)
    o.set_atomic_flush(true);
    o.set_max_background_jobs(2);
    // flushes and compactions yield the CPU to the threads that serve clients: on a small
    // machine a flush otherwise takes a core away from a latency-bound pipeline
    if let Ok(mut env) = Env::new() {
        env.lower_thread_pool_cpu_priority();
        env.lower_high_priority_thread_pool_cpu_priority();
        o.set_env(&env);
    }
    // every column family's memtables together, so memory does not grow with their number
    o.set_db_write_buffer_size(TOTAL_WRITE_BUFFER_BYTES);
    o
}

pub(crate) fn column_families() -> Vec<ColumnFamilyDescriptor> {
    let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    let journal = ColumnFamilyDescriptor::new(crate::journal::CF, Options::default());
    Cf::ALL
        .iter()
        .map(|cf| {
            let mut o = Options::default();
            let mut t = BlockBasedOptions::default();
            t.set_block_cache(&cache);
            t.set_bloom_filter(10.0, false);
            o.set_block_based_table_factory(&t);
            o.set_write_buffer_size(WRITE_BUFFER_BYTES);
            o.set_max_write_buffer_number(2);
            o.set_compression_type(DBCompressionType::Lz4);
            o.set_bottommost_compression_type(DBCompressionType::Zstd);
            match cf {
                Cf::Body => {
                    o.set_enable_blob_files(true);
                    o.set_min_blob_size(MIN_BLOB_BYTES);
                    o.set_enable_blob_gc(true);
                    o.set_blob_compression_type(DBCompressionType::Lz4);
                }
                Cf::Ref | Cf::Sched => {
                    // queues delete from their head: compact files full of tombstones early
                    o.add_compact_on_deletion_collector_factory(128, 64, 0.5);
                }
                Cf::Meta => {
                    o.set_merge_operator_associative("ferrobus_max_u64", max_u64);
                }
                Cf::Dedup | Cf::Session => {}
            }
            ColumnFamilyDescriptor::new(cf.name(), o)
        })
        .chain([journal])
        .collect()
}

/// Merge operator behind `Op::Max`: the largest big-endian u64 seen.
fn max_u64(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let decode = |b: &[u8]| <[u8; 8]>::try_from(b).map(u64::from_be_bytes).unwrap_or(0);
    let mut max = existing.map(decode).unwrap_or(0);
    for op in operands {
        max = max.max(decode(op));
    }
    Some(max.to_be_bytes().to_vec())
}
