//! depot-api
