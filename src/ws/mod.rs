//! WebSocket (RFC 6455) protocol logic without I/O: the upgrade handshake,
//! a frame decoder that turns client bytes into events, and frame encoding.

pub mod decoder;
pub mod encode;
pub mod handshake;
pub mod origin;

pub use decoder::{Decoder, Event, Flow, Violation};
pub use encode::{close_frame, data_frame, FrameBuilder};
pub use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
