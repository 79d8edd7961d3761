//! Client bytes → a connection's session (every dialect), fed in arbitrary
//! chunks, with the gateway answering what the session asks at once or
//! later: no panic, answers awaited never exceed the in-flight limit (plus
//! the one that stopped input), held input always resumes, and the send
//! queue stays within its budget plus the Close.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringcast::session::{Answer, Context, Effect, Kind, Session};

const BUDGET: usize = 4096;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let kind = match data[0] % 4 {
        0 => Kind::Echo,
        1 => Kind::RoadRunner,
        2 => Kind::Proxy("c".into()),
        _ => Kind::WebRocket,
    };
    let pause_at = 1 + (data[0] as usize >> 2) % 4;
    let chunk = 1 + data[1] as usize;
    let answer_late = data[2] & 1 == 1;
    let mut session = Session::new(kind, pause_at, 0);
    let mut json = simd_json::Buffers::default();
    let mut effects = Vec::new();
    let mut awaited: Vec<Effect> = Vec::new();
    for piece in data[3..].chunks(chunk) {
        let mut buf = piece.to_vec();
        let mut cx = Context::new(512, BUDGET, &mut json);
        session.on_bytes(&mut buf, &mut cx, &mut effects);
        for _ in 0..=data.len() {
            for effect in effects.drain(..) {
                match effect {
                    Effect::Closing | Effect::SlowConsumer | Effect::ProtocolError => {}
                    asked => awaited.push(asked),
                }
            }
            assert!(awaited.len() <= pause_at, "{} answers awaited, limit {pause_at}", awaited.len());
            assert_eq!(session.in_flight(), awaited.len());
            // Late answers wait for the next chunk, unless input is held.
            if answer_late && !session.is_held() {
                break;
            }
            for asked in awaited.drain(..) {
                match asked {
                    Effect::Join { topics, .. } => {
                        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
                        session.join_answered(topics.len() % 2 == 0, &names, BUDGET, &mut effects);
                    }
                    Effect::Leave { topics, .. } => {
                        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
                        session.leave_answered(true, &names, BUDGET, &mut effects);
                    }
                    Effect::Forward { body, .. } => {
                        let answer = if body.len() % 3 == 0 {
                            Answer::Failed { close: body.len() % 2 == 0 }
                        } else {
                            Answer::Reply(Bytes::from(body.to_vec()))
                        };
                        session.forward_answered(answer, BUDGET, &mut effects);
                    }
                    _ => session.answered(),
                }
            }
            if !session.can_resume() {
                break;
            }
            let mut cx = Context::new(512, BUDGET, &mut json);
            session.resume(&mut cx, &mut effects);
        }
        assert!(!session.can_resume() || session.is_held() || answer_late, "held input never resumed");
        assert!(session.queue.queued_bytes() <= BUDGET + 512, "queue {} over budget", session.queue.queued_bytes());
    }
});
