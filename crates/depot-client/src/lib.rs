//! depot-client
