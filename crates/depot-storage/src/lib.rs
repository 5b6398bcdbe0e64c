//! depot-storage
