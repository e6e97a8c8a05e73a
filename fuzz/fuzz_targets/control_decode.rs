//! The control codec's decoders on arbitrary datagrams: whatever bytes a peer sends, decoding
//! returns a message or a typed error, never a panic, and a decoded message encodes again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_schema::{
    channel::Datagram,
    control::{LoaderMessage, ProcessorMessage},
};

fuzz_target!(|data: &[u8]| {
    let datagram = Datagram {
        bytes: data.to_vec(),
        fds: Vec::new(),
    };
    if let Ok(message) = ProcessorMessage::decode(&datagram) {
        let _ = message.encode();
    }
    if let Ok(message) = LoaderMessage::decode(&datagram) {
        let _ = message.encode();
    }
});
