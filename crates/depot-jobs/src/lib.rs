//! depot-jobs
