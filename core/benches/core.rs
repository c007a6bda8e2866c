//! Benchmarks for the lifecycle core (filled in below).
fn main() {}
