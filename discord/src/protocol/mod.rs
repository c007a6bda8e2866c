//! The Discord gateway v10 protocol, sans-IO.

pub mod opcode;

pub use opcode::{CLOSE_RULES, CloseCode, OpCode};
