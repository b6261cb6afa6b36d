//! A small guest library: arithmetic, a counter kept across updates (its state, handed to the
//! next version through `pvm_state_save`/`pvm_state_restore`), output through the app's
//! console, an allocation on the app's heap, and a call back into the app. `greet2` is its
//! next version.
#![no_std]

extern crate alloc;

pvm::library!();

include!("common.rs");
