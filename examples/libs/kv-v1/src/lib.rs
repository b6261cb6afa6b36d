//! libkv 1.0.0: the key-value server's request handler (PING, SET, GET, DEL, EXISTS, COUNT).
#![no_std]

pvm::library!();
kv_store::exports!(false);
