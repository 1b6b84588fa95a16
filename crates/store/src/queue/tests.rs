//! The store test suite against the in-memory storage.

mod memory {
    crate::store_suite!(std::sync::Arc::new(crate::storage::MemoryStorage::new()));
}

mod topics_in_memory {
    crate::topic_suite!(std::sync::Arc::new(crate::storage::MemoryStorage::new()));
}

mod dead_forward_in_memory {
    crate::dead_forward_suite!(std::sync::Arc::new(crate::storage::MemoryStorage::new()));
}

mod sessions_in_memory {
    crate::session_suite!(std::sync::Arc::new(crate::storage::MemoryStorage::new()));
}
