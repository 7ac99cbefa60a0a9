//! Server-Sent Events: the incremental parser the relay uses to find event boundaries.

pub mod parser;
