//! One STOMP connection's state, without I/O: frames in, [`Action`]s out.
//! The transport ([`super::serve`]) reads, writes, runs the calls and
//! keeps time; this decides what each frame means, as VDSM's
//! `StompAdapterImpl` does for the engine, with these differences:
//!
//! - every ERROR ends the connection (STOMP 1.2 says so; VDSM goes on);
//! - responses go only to the subscriptions of the connection that sent
//!   the request (VDSM's broker hands them to every connection subscribed
//!   to the destination; the engine has one connection per host, so it
//!   sees no difference, and no client reads another's answers);
//! - depot relays nothing between clients: a SEND to anything but the
//!   request queues gets VDSM's "Subscription not available".

use depot_stomp::{Command, Frame};
use std::time::Duration;

/// Where requests go (VDSM's `request_queues`); `<queue>.<anything>` too.
pub const REQUEST_QUEUES: [&str; 2] = ["jms.topic.vdsm_requests", "jms.topic.vdsm_irs_requests"];
/// Where responses go when a request names no `reply-to`.
pub const RESPONSE_DESTINATION: &str = "jms.topic.vdsm_responses";
/// Where events go (VDSM's `event_queue`).
pub const EVENT_DESTINATION: &str = "jms.queue.events";
/// VDSM's flow id header.
pub const FLOW_ID_HEADER: &str = "ovirtCorrelationId";
/// The shortest heart-beat interval either side gets, VDSM's.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(1000);

/// What the session asks the transport to do.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Send this frame.
    Send(Frame),
    /// The client is connected: send the CONNECTED frame, then keep the
    /// heart-beats.
    Connected { frame: Frame, heartbeat: Heartbeat },
    /// Hand this JSON-RPC message to the JSON-RPC layer; its answer goes to
    /// `reply_to`.
    Call {
        body: Vec<u8>,
        reply_to: String,
        flow_id: Option<String>,
    },
    /// The client subscribed to the events.
    WantsEvents,
    /// The client said goodbye: answer its calls in flight, send a RECEIPT
    /// when it asked for one, close.
    Disconnect { receipt: Option<String> },
    /// Send ERROR with this message and close.
    Fail {
        message: String,
        receipt: Option<String>,
    },
}

/// The heart-beats agreed in CONNECT/CONNECTED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The server sends something at least this often.
    pub send_every: Option<Duration>,
    /// The client promised to send something at least this often.
    pub expect_every: Option<Duration>,
}

/// The client's `heart-beat: cx,cy` (it can send every cx ms, wants to
/// receive every cy ms) and the server's answer `sx,sy`. As VDSM does, the
/// server sends at the client's pace and asks for the client's own, each
/// at least [`MIN_HEARTBEAT`]; 0 (or no header) means none that way. The
/// answer is what the specification's negotiation then yields on both
/// sides: max(sx, cy) = sx and max(cx, sy) = sy.
pub fn negotiate(header: Option<&str>) -> Result<(Heartbeat, String), String> {
    let bad = || format!("invalid heart-beat header {header:?}: expected two numbers of ms, cx,cy");
    let (cx, cy) = match header {
        None => (0, 0),
        Some(h) => {
            let (a, b) = h.split_once(',').ok_or_else(bad)?;
            let num = |s: &str| {
                let s = s.trim();
                if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                s.parse::<u64>().map_err(|_| bad())
            };
            (num(a)?, num(b)?)
        }
    };
    let min = MIN_HEARTBEAT.as_millis() as u64;
    let at_least = |v: u64| if v == 0 { 0 } else { v.max(min) };
    let (sx, sy) = (at_least(cy), at_least(cx));
    let every = |v: u64| (v > 0).then(|| Duration::from_millis(v));
    Ok((
        Heartbeat {
            send_every: every(sx),
            expect_every: every(sy),
        },
        format!("{sx},{sy}"),
    ))
}

pub fn is_request_queue(destination: &str) -> bool {
    REQUEST_QUEUES.iter().any(|q| {
        destination == *q
            || destination
                .strip_prefix(q)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// An ERROR frame: `message` in the header (the engine's client reads it
/// there) and in the body (VDSM's clients read it there).
pub fn error_frame(message: &str, receipt: Option<&str>) -> Frame {
    let mut f = Frame::new(Command::Error).with("message", message);
    if let Some(r) = receipt {
        f = f.with("receipt-id", r);
    }
    f.with("content-type", "text/plain")
        .with_body(message.as_bytes())
}

#[derive(Debug)]
struct Subscription {
    id: String,
    destination: String,
}

pub struct Session {
    connected: bool,
    subs: Vec<Subscription>,
    max_subscriptions: usize,
    next_message_id: u64,
    /// The `server` header of CONNECTED.
    server: String,
}

impl Session {
    pub fn new(max_subscriptions: usize, server: impl Into<String>) -> Session {
        Session {
            connected: false,
            subs: Vec::new(),
            max_subscriptions,
            next_message_id: 0,
            server: server.into(),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// What one frame from the client means.
    pub fn handle(&mut self, frame: Frame) -> Vec<Action> {
        let receipt = frame.get("receipt").map(str::to_owned);
        let fail = |message: String| {
            vec![Action::Fail {
                message,
                receipt: receipt.clone(),
            }]
        };
        let mut actions = match frame.command {
            Command::Connect | Command::Stomp => return self.connect(&frame, receipt),
            // The engine's client may send its SUBSCRIBEs before its
            // CONNECT (its outbox is a stack), and VDSM takes them.
            Command::Subscribe => match self.subscribe(&frame) {
                Ok(a) => a,
                Err(m) => return fail(m),
            },
            Command::Unsubscribe => match frame.get("id") {
                Some(id) => {
                    // An unknown id is ignored, as VDSM does.
                    self.subs.retain(|s| s.id != id);
                    Vec::new()
                }
                None => return fail("Missing id header".into()),
            },
            c if !self.connected => {
                return fail(format!("expected a CONNECT frame first, not {c}"));
            }
            Command::Send => match self.send(frame) {
                Ok(a) => a,
                Err(m) => return fail(m),
            },
            Command::Disconnect => return vec![Action::Disconnect { receipt }],
            c @ (Command::Ack
            | Command::Nack
            | Command::Begin
            | Command::Commit
            | Command::Abort) => {
                return fail(format!(
                    "{c} is not supported: depot delivers with ack:auto and has no transactions"
                ))
            }
            c @ (Command::Connected | Command::Message | Command::Receipt | Command::Error) => {
                return fail(format!("{c} is a server frame"))
            }
        };
        if let Some(r) = receipt {
            actions.push(Action::Send(
                Frame::new(Command::Receipt).with("receipt-id", r),
            ));
        }
        actions
    }

    fn connect(&mut self, frame: &Frame, receipt: Option<String>) -> Vec<Action> {
        let fail = |message: String| {
            vec![Action::Fail {
                message,
                receipt: receipt.clone(),
            }]
        };
        if self.connected {
            return fail("already connected".into());
        }
        let speaks_12 = frame
            .get("accept-version")
            .is_some_and(|v| v.split(',').any(|v| v.trim() == "1.2"));
        if !speaks_12 {
            return fail(format!(
                "Version unsupported: depot speaks STOMP 1.2 only (accept-version: {})",
                frame.get("accept-version").unwrap_or("none")
            ));
        }
        let (heartbeat, answer) = match negotiate(frame.get("heart-beat")) {
            Ok(h) => h,
            Err(m) => return fail(m),
        };
        self.connected = true;
        let frame = Frame::new(Command::Connected)
            .with("version", "1.2")
            .with("heart-beat", answer)
            .with("server", self.server.clone());
        vec![Action::Connected { frame, heartbeat }]
    }

    fn subscribe(&mut self, frame: &Frame) -> Result<Vec<Action>, String> {
        let (Some(destination), Some(id)) = (frame.get("destination"), frame.get("id")) else {
            return Err("Missing destination or subscription id header".into());
        };
        if self.subs.iter().any(|s| s.id == id) {
            return Err("Subscription id already exists".into());
        }
        match frame.get("ack") {
            None | Some("auto") => {}
            Some(other) => {
                return Err(format!(
                    "ack mode {other:?} is not supported: depot delivers with ack:auto"
                ))
            }
        }
        if self.subs.len() == self.max_subscriptions {
            return Err(format!(
                "more than {} subscriptions on one connection (limits.stomp_max_subscriptions)",
                self.max_subscriptions
            ));
        }
        self.subs.push(Subscription {
            id: id.to_owned(),
            destination: destination.to_owned(),
        });
        Ok(if destination == EVENT_DESTINATION {
            vec![Action::WantsEvents]
        } else {
            Vec::new()
        })
    }

    fn send(&mut self, frame: Frame) -> Result<Vec<Action>, String> {
        let Some(destination) = frame.get("destination") else {
            return Err("Missing destination header".into());
        };
        if !is_request_queue(destination) {
            return Err("Subscription not available".into());
        }
        let reply_to = frame
            .get("reply-to")
            .unwrap_or(RESPONSE_DESTINATION)
            .to_owned();
        let flow_id = frame
            .get(FLOW_ID_HEADER)
            .map(|f| f.chars().take(128).collect());
        Ok(vec![Action::Call {
            body: frame.body,
            reply_to,
            flow_id,
        }])
    }

    /// MESSAGE frames carrying `body` to every subscription of this
    /// connection to `destination` (none when nobody subscribed).
    pub fn messages_to(&mut self, destination: &str, body: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        for s in self.subs.iter().filter(|s| s.destination == destination) {
            self.next_message_id += 1;
            out.push(
                Frame::new(Command::Message)
                    .with("destination", destination)
                    .with("content-type", "application/json")
                    .with("subscription", s.id.clone())
                    .with("message-id", self.next_message_id.to_string())
                    .with_body(body),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(command: Command, headers: &[(&str, &str)]) -> Frame {
        headers
            .iter()
            .fold(Frame::new(command), |f, (n, v)| f.with(*n, *v))
    }

    fn connected() -> Session {
        let mut s = Session::new(3, "depot/test");
        let a = s.handle(frame(
            Command::Connect,
            &[("accept-version", "1.0,1.1,1.2"), ("heart-beat", "0,24000")],
        ));
        assert!(matches!(a[..], [Action::Connected { .. }]), "{a:?}");
        s
    }

    fn failed(a: &[Action]) -> &str {
        match a {
            [Action::Fail { message, .. }] => message,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn heartbeats_as_vdsm_negotiates_them() {
        // The engine: it sends none and wants one every 24 s.
        let (h, answer) = negotiate(Some("0,24000")).unwrap();
        assert_eq!(answer, "24000,0");
        assert_eq!(h.send_every, Some(Duration::from_secs(24)));
        assert_eq!(h.expect_every, None);
        // Too often is raised to 1 s, both ways.
        let (h, answer) = negotiate(Some("10,200")).unwrap();
        assert_eq!(answer, "1000,1000");
        assert_eq!(h.expect_every, Some(MIN_HEARTBEAT));
        assert_eq!(negotiate(None).unwrap().1, "0,0");
        for bad in ["", "1", "a,b", "-1,0", "1,2,3", "99999999999,1"] {
            assert!(negotiate(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn connect_needs_1_2_once() {
        let mut s = Session::new(3, "depot/test");
        let m =
            failed(&s.handle(frame(Command::Connect, &[("accept-version", "1.0,1.1")]))).to_owned();
        assert!(m.starts_with("Version unsupported"), "{m}");
        let mut s = Session::new(3, "depot/test");
        failed(&s.handle(frame(Command::Stomp, &[])));
        let mut s = connected();
        assert_eq!(
            failed(&s.handle(frame(Command::Connect, &[("accept-version", "1.2")]))),
            "already connected"
        );
        let a = Session::new(1, "x").handle(frame(Command::Connect, &[("accept-version", "1.2")]));
        let [Action::Connected { frame, heartbeat }] = &a[..] else {
            panic!("{a:?}")
        };
        assert_eq!(frame.get("version"), Some("1.2"));
        assert_eq!(frame.get("heart-beat"), Some("0,0"));
        assert_eq!(heartbeat.send_every, None);
    }

    #[test]
    fn only_subscriptions_come_before_connect() {
        let mut s = Session::new(3, "x");
        assert_eq!(
            s.handle(frame(
                Command::Subscribe,
                &[("destination", EVENT_DESTINATION), ("id", "e")]
            )),
            vec![Action::WantsEvents]
        );
        let m = failed(&s.handle(frame(Command::Send, &[("destination", REQUEST_QUEUES[0])])))
            .to_owned();
        assert!(m.contains("CONNECT"), "{m}");
    }

    #[test]
    fn requests_go_to_the_jsonrpc_layer_and_answers_to_reply_to() {
        let mut s = connected();
        s.handle(frame(
            Command::Subscribe,
            &[("destination", "my.replies"), ("id", "r"), ("ack", "auto")],
        ));
        s.handle(frame(
            Command::Subscribe,
            &[("destination", RESPONSE_DESTINATION), ("id", "d")],
        ));
        let f = frame(
            Command::Send,
            &[
                ("destination", "jms.topic.vdsm_irs_requests.x"),
                ("reply-to", "my.replies"),
                (FLOW_ID_HEADER, "flow:1"),
                ("receipt", "7"),
            ],
        )
        .with_body(&b"{}"[..]);
        assert_eq!(
            s.handle(f),
            vec![
                Action::Call {
                    body: b"{}".to_vec(),
                    reply_to: "my.replies".into(),
                    flow_id: Some("flow:1".into())
                },
                Action::Send(Frame::new(Command::Receipt).with("receipt-id", "7")),
            ]
        );
        let m = s.messages_to("my.replies", b"{\"id\":1}");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].get("subscription"), Some("r"));
        assert_eq!(m[0].get("destination"), Some("my.replies"));
        assert_eq!(m[0].body, b"{\"id\":1}");
        let again = s.messages_to("my.replies", b"x");
        assert_ne!(again[0].get("message-id"), m[0].get("message-id"));
        // No reply-to: VDSM's default destination.
        let a = s.handle(frame(Command::Send, &[("destination", REQUEST_QUEUES[0])]));
        assert!(
            matches!(&a[..], [Action::Call { reply_to, .. }] if reply_to == RESPONSE_DESTINATION)
        );
        assert!(s.messages_to("nobody", b"x").is_empty());
    }

    #[test]
    fn refusals() {
        let mut s = connected();
        assert_eq!(
            failed(&s.handle(frame(Command::Send, &[("destination", "jms.topic.other")]))),
            "Subscription not available"
        );
        assert_eq!(
            failed(&s.handle(frame(
                Command::Send,
                &[("destination", "jms.topic.vdsm_requestsX")]
            ))),
            "Subscription not available"
        );
        failed(&s.handle(frame(Command::Send, &[])));
        failed(&s.handle(frame(Command::Subscribe, &[("id", "1")])));
        failed(&s.handle(frame(
            Command::Subscribe,
            &[("destination", "d"), ("id", "1"), ("ack", "client")],
        )));
        failed(&s.handle(frame(Command::Ack, &[("id", "1")])));
        failed(&s.handle(frame(Command::Message, &[])));
        failed(&s.handle(frame(Command::Unsubscribe, &[])));
        // Ids are unique; the count is limited.
        assert!(s
            .handle(frame(
                Command::Subscribe,
                &[("destination", "d"), ("id", "1")]
            ))
            .is_empty());
        assert_eq!(
            failed(&s.handle(frame(
                Command::Subscribe,
                &[("destination", "d"), ("id", "1")]
            ))),
            "Subscription id already exists"
        );
        s.handle(frame(
            Command::Subscribe,
            &[("destination", "d"), ("id", "2")],
        ));
        s.handle(frame(
            Command::Subscribe,
            &[("destination", "d"), ("id", "3")],
        ));
        assert!(failed(&s.handle(frame(
            Command::Subscribe,
            &[("destination", "d"), ("id", "4")]
        )))
        .contains("stomp_max_subscriptions"));
        // Unsubscribing makes room; an unknown id is ignored.
        assert!(s
            .handle(frame(Command::Unsubscribe, &[("id", "2")]))
            .is_empty());
        assert!(s
            .handle(frame(Command::Unsubscribe, &[("id", "nope")]))
            .is_empty());
        assert!(s
            .handle(frame(
                Command::Subscribe,
                &[("destination", "d"), ("id", "4")]
            ))
            .is_empty());
        assert_eq!(s.messages_to("d", b"x").len(), 3);
        // A failure carries the frame's receipt.
        let a = s.handle(frame(Command::Begin, &[("receipt", "9")]));
        assert!(matches!(&a[..], [Action::Fail { receipt: Some(r), .. }] if r == "9"));
    }

    #[test]
    fn disconnect_with_receipt() {
        let mut s = connected();
        assert_eq!(
            s.handle(frame(Command::Disconnect, &[("receipt", "bye")])),
            vec![Action::Disconnect {
                receipt: Some("bye".into())
            }]
        );
    }

    #[test]
    fn error_frames_carry_the_message_twice() {
        let f = error_frame("bad: thing", Some("r1"));
        assert_eq!(f.command, Command::Error);
        assert_eq!(f.get("message"), Some("bad: thing"));
        assert_eq!(f.get("receipt-id"), Some("r1"));
        assert_eq!(f.body, b"bad: thing");
    }
}
