//! The stub's servers over real HTTP: each test binds 127.0.0.1:0, spawns a router and calls it
//! with reqwest.

mod helpers;
mod llm;
mod tools;
