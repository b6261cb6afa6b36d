//! Shared-memory channel structures used by both pVM guests and monitors (no_std).
//!
//! Placeholder crate: the lock-free rings for pipes and message queues arrive with the IPC
//! issue. It compiles today so that the workspace has its final shape.
#![no_std]
