//! ELF shared-object loading, relocation, binding and hot-swap for live pVMs.
//!
//! Placeholder crate: runtime linking arrives with its own issue. It compiles today so that the
//! workspace has its final shape.
