//! depot-os
