//! The SPM mailbox parser (`depot_storage::mailbox::format`: VDSM's
//! 64-byte messages and 4 KiB host mailboxes, written by other hosts).
//!
//! Checked beyond "does not panic": a message that parses writes back to
//! bytes that parse to itself (and answer themselves); a mailbox that
//! passes its checksum writes back to the same messages with a valid
//! checksum; every slot of a mailbox parses or is an error.
#![no_main]

use depot_storage::mailbox::format::{
    event_id, Mailbox, Message, MAILBOX_SIZE, MESSAGES_PER_MAILBOX, MESSAGE_SIZE,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // One message, from any bytes (of any length).
    if let Ok(m) = Message::parse(data) {
        if let Message::Extend(e) = m {
            let bytes = e.to_bytes();
            assert_eq!(Message::parse(&bytes), Ok(m));
            assert!(e.is_answered_by(&bytes));
            assert!(e.is_answered_by(data.try_into().unwrap()));
        }
    }
    let _ = event_id(data);
    // A mailbox: the input repeated to 4 KiB, so short inputs reach every
    // slot; with its own checksum, and with a correct one.
    if data.is_empty() {
        return;
    }
    let raw: Vec<u8> = data.iter().copied().cycle().take(MAILBOX_SIZE).collect();
    let unchecked = Mailbox::parse_unchecked(&raw).expect("4 KiB always parses unchecked");
    if let Ok(mb) = Mailbox::parse_checked(&raw) {
        assert_eq!(mb, unchecked);
    }
    let fixed = unchecked.to_bytes();
    let mb = Mailbox::parse_checked(&fixed).expect("what depot writes, it reads");
    assert_eq!(mb, unchecked);
    assert_eq!(mb.to_bytes(), fixed);
    for i in 0..MESSAGES_PER_MAILBOX {
        let slot = mb.slot(i);
        assert_eq!(&slot[..], &raw[i * MESSAGE_SIZE..(i + 1) * MESSAGE_SIZE]);
        if let Ok(Message::Extend(e)) = mb.message(i) {
            assert_eq!(Message::parse(&e.to_bytes()), Ok(Message::Extend(e)));
        }
    }
    assert_eq!(mb.is_empty(), (0..MESSAGES_PER_MAILBOX).all(|i| raw[i * MESSAGE_SIZE] == 0));
});
