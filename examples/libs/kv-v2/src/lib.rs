//! libkv 2.0.0: version 1's commands, and INCR and STATS; adopts version 1's store when it
//! replaces it (`pvmctl lib update`).
#![no_std]

pvm::library!();
kv_store::exports!(true);
