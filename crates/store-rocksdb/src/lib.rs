//! RocksDB storage for the Ferrobus entity store (work in progress).
pub use rocksdb;
