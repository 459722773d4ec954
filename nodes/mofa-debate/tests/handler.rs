//! mofa-debate's handler under `DoraNode::init_testing`: the debaters' and the judge's answers
//! are scripted as timed inputs (turn ids are derived from the task id, so they can be
//! addressed). Events are handled in order, so an answer scheduled after its turn's question
//! always finds it pending; only the timeout test depends on the clock, with wide margins.

use std::time::Duration;

use mofa_debate::{ABSENT, Debate, DebateConfig, OnAbsent, judge_id, turn_id};
use mofa_kernel::{Envelope, Kind, Role};
use mofa_tests::harness::{self, Sent, closed, envelope, on, raw};
use serde_json::Value;

const PARTICIPANTS: [&str; 4] = ["alice", "bob", "carol", "judge"];

fn debate(debaters: &[&str], rounds: u32, timeout_ms: u64, on_absent: OnAbsent) -> Debate {
    let cfg = DebateConfig {
        debaters: debaters.iter().map(|d| d.to_string()).collect(),
        rounds,
        turn_timeout: Duration::from_millis(timeout_ms),
        on_absent,
        judge: "judge".into(),
    };
    cfg.validate().unwrap();
    Debate::new(cfg)
}

fn topic(text: &str, session: &str) -> Envelope {
    Envelope::task("source", text).with_session(session)
}

/// What agent `who` answers to its turn in `round` (`round` 0: the judge's request).
fn answer(task: &Envelope, round: u32, who: &str, kind: Kind, text: &str) -> Envelope {
    let mut question = task.reply(Kind::Task, "test-node", Role::User, "");
    question.id = if who == "judge" {
        judge_id(task)
    } else {
        turn_id(task, round, who)
    };
    question.reply(kind, who, Role::Assistant, text)
}

fn said(task: &Envelope, round: u32, who: &str, text: &str) -> Envelope {
    answer(task, round, who, Kind::Result, text)
}

// Events are 100 ms apart or more: dora delivers what piles up on different inputs in any
// order (it balances inputs), and a loaded machine makes things pile up.

/// The questions the moderator sent, in order: (participant, round, content).
fn questions(sent: &[Sent]) -> Vec<(String, u32, String)> {
    sent.iter()
        .filter(|s| PARTICIPANTS.contains(&s.output.as_str()))
        .flat_map(|s| {
            s.envelopes
                .iter()
                .map(|e| (s.output.clone(), e.round, e.content.clone()))
        })
        .collect()
}

fn who_was_asked(sent: &[Sent]) -> Vec<String> {
    questions(sent).into_iter().map(|(w, _, _)| w).collect()
}

/// The questions of one debate in turn order: by round, debaters in speaking order, the judge
/// last (the order of sends on different outputs is not kept by dora's test output).
fn in_turn_order(sent: &[Sent]) -> Vec<(String, u32, String)> {
    let mut qs = questions(sent);
    let seat = |who: &str| {
        PARTICIPANTS
            .iter()
            .position(|p| *p == who)
            .unwrap_or(usize::MAX)
    };
    qs.sort_by_key(|(who, round, _)| {
        let judge = who == "judge";
        (judge, if judge { 0 } else { *round }, seat(who))
    });
    qs
}

/// The debaters asked in `round`, sorted.
fn asked_in_round(sent: &[Sent], round: u32) -> Vec<String> {
    let mut who: Vec<String> = questions(sent)
        .into_iter()
        .filter(|(w, r, _)| *r == round && w != "judge")
        .map(|(w, _, _)| w)
        .collect();
    who.sort();
    who
}

fn payload(e: &Envelope) -> Value {
    e.payload_json().unwrap()
}

/// The transcript of a verdict (or failure) payload as (round, debater, content).
fn transcript(p: &Value) -> Vec<(u64, String, String)> {
    p["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["round"].as_u64().unwrap(),
                t["debater"].as_str().unwrap().to_owned(),
                t["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn t(round: u64, who: &str, text: &str) -> (u64, String, String) {
    (round, who.to_owned(), text.to_owned())
}

#[test]
fn debaters_speak_in_turn_each_seeing_the_whole_transcript_then_the_judge_decides() {
    let task = topic("Should cities ban cars?", "s1");
    let sent = harness::run(
        debate(&["alice", "bob", "carol"], 2, 5000, OnAbsent::Skip),
        vec![
            envelope(0.0, "task", &task),
            envelope(
                0.1,
                "alice",
                &said(&task, 1, "alice", "A1 yes, cleaner air"),
            ),
            envelope(0.2, "bob", &said(&task, 1, "bob", "B1 no, deliveries")),
            envelope(
                0.3,
                "carol",
                &said(&task, 1, "carol", "C1 ban downtown only"),
            ),
            envelope(
                0.4,
                "alice",
                &said(&task, 2, "alice", "A2 deliveries by bike"),
            ),
            envelope(
                0.5,
                "bob",
                &said(&task, 2, "bob", "B2 bikes cannot carry fridges"),
            ),
            envelope(
                0.6,
                "carol",
                &said(&task, 2, "carol", "C2 permits for vans"),
            ),
            envelope(
                0.7,
                "judge",
                &said(&task, 0, "judge", "Carol wins: she met both sides."),
            ),
            closed(1.0, "task"),
        ],
    );

    // Strict turn order, one question at a time, then the judge: each question holds every
    // earlier turn and nothing later (checked below).
    let qs = in_turn_order(&sent);
    let who: Vec<&str> = qs.iter().map(|q| q.0.as_str()).collect();
    assert_eq!(
        who,
        ["alice", "bob", "carol", "alice", "bob", "carol", "judge"]
    );
    let rounds: Vec<u32> = qs.iter().map(|q| q.1).collect();
    assert_eq!(rounds, [1, 1, 1, 2, 2, 2, 2]);
    for (i, (who, round, q)) in qs.iter().enumerate() {
        assert!(q.contains("Should cities ban cars?"), "{q}");
        if who != "judge" {
            assert!(
                q.contains(&format!("Round {round} of 2. You speak as {who}.")),
                "{q}"
            );
        }
        // Each question holds every earlier turn, labelled, and nothing later.
        let answers = [
            "[round 1] alice: A1 yes, cleaner air",
            "[round 1] bob: B1 no, deliveries",
            "[round 1] carol: C1 ban downtown only",
            "[round 2] alice: A2 deliveries by bike",
            "[round 2] bob: B2 bikes cannot carry fridges",
            "[round 2] carol: C2 permits for vans",
        ];
        for (j, a) in answers.iter().enumerate() {
            assert_eq!(q.contains(a), j < i, "question {i} and turn {j}:\n{q}");
        }
    }
    assert!(qs[0].2.contains("you speak first"));
    assert!(qs[6].2.contains("give your verdict"));

    // The questions are tasks in the topic's session, with derived ids.
    let to_bob = on(&sent, "bob");
    assert_eq!(to_bob[1].id, turn_id(&task, 2, "bob"));
    assert_eq!(
        (to_bob[1].kind, to_bob[1].session.as_str()),
        (Kind::Task, "s1")
    );

    // Every turn is published as it is recorded.
    let turns = on(&sent, "turn");
    let published: Vec<(u32, &str, &str)> = turns
        .iter()
        .map(|e| (e.round, e.sender.as_str(), e.content.as_str()))
        .collect();
    assert_eq!(published[2], (1, "carol", "C1 ban downtown only"));
    assert_eq!(published.len(), 6);
    assert!(
        turns
            .iter()
            .all(|e| e.reply_to.as_deref() == Some(task.id.as_str()))
    );

    // The verdict answers the topic, with the whole transcript.
    let verdicts = on(&sent, "verdict");
    assert_eq!(verdicts.len(), 1);
    let v = &verdicts[0];
    assert_eq!(
        (v.kind, v.content.as_str(), v.session.as_str()),
        (Kind::Result, "Carol wins: she met both sides.", "s1")
    );
    assert_eq!(v.reply_to.as_deref(), Some(task.id.as_str()));
    let p = payload(v);
    assert_eq!(p["verdict"], "Carol wins: she met both sides.");
    assert_eq!(p["absent"], serde_json::json!([]));
    assert_eq!(
        transcript(&p),
        [
            t(1, "alice", "A1 yes, cleaner air"),
            t(1, "bob", "B1 no, deliveries"),
            t(1, "carol", "C1 ban downtown only"),
            t(2, "alice", "A2 deliveries by bike"),
            t(2, "bob", "B2 bikes cannot carry fridges"),
            t(2, "carol", "C2 permits for vans"),
        ]
    );
    assert!(on(&sent, "error").is_empty(), "{:#?}", on(&sent, "error"));
}

#[test]
fn a_debater_that_answers_with_an_error_is_absent_from_then_on_with_skip() {
    let task = topic("tabs or spaces", "s");
    let sent = harness::run(
        debate(&["alice", "bob", "carol"], 2, 5000, OnAbsent::Skip),
        vec![
            envelope(0.0, "task", &task),
            envelope(0.1, "alice", &said(&task, 1, "alice", "A1")),
            envelope(
                0.2,
                "bob_error",
                &answer(&task, 1, "bob", Kind::Error, "LLM failed: HTTP 500"),
            ),
            envelope(0.3, "carol", &said(&task, 1, "carol", "C1")),
            envelope(0.4, "alice", &said(&task, 2, "alice", "A2")),
            envelope(0.5, "carol", &said(&task, 2, "carol", "C2")),
            envelope(0.6, "judge", &said(&task, 0, "judge", "spaces")),
            closed(1.0, "task"),
        ],
    );
    // Bob is not asked again once absent. (Who was asked in each round: the order of sends
    // on different outputs is not kept by dora's test output.)
    assert_eq!(asked_in_round(&sent, 1), ["alice", "bob", "carol"]);
    assert_eq!(asked_in_round(&sent, 2), ["alice", "carol"]);
    let qs = questions(&sent);
    assert_eq!(qs.last().unwrap().0, "judge");
    let carol_1 = qs.iter().find(|q| q.0 == "carol" && q.1 == 1).unwrap();
    assert!(
        carol_1.2.contains(&format!("[round 1] bob: {ABSENT}")),
        "{}",
        carol_1.2
    );
    let p = payload(&on(&sent, "verdict")[0]);
    assert_eq!(
        transcript(&p),
        [
            t(1, "alice", "A1"),
            t(1, "bob", ABSENT),
            t(1, "carol", "C1"),
            t(2, "alice", "A2"),
            t(2, "bob", ABSENT),
            t(2, "carol", "C2"),
        ]
    );
    let absent = p["absent"].as_array().unwrap();
    assert_eq!(absent.len(), 1);
    assert_eq!(
        (&absent[0]["debater"], &absent[0]["round"]),
        (&"bob".into(), &1.into())
    );
    assert!(absent[0]["reason"].as_str().unwrap().contains("HTTP 500"));
    // The absent turns are published too, marked.
    let turns = on(&sent, "turn");
    assert_eq!(turns.len(), 6);
    let bob_2 = turns
        .iter()
        .find(|t| t.sender == "bob" && t.round == 2)
        .unwrap();
    assert_eq!(payload(bob_2)["absent"], true);
}

#[test]
fn a_closed_input_makes_the_debater_absent_at_once_in_this_and_later_debates() {
    let (first, second) = (topic("first", "s1"), topic("second", "s2"));
    let sent = harness::run(
        // A turn timeout far beyond the test: only the closed input can move the debate on.
        debate(&["alice", "bob", "carol"], 1, 60_000, OnAbsent::Skip),
        vec![
            envelope(0.0, "task", &first),
            envelope(0.1, "alice", &said(&first, 1, "alice", "A1")),
            // Bob's process ends while his turn is open.
            closed(0.2, "bob"),
            closed(0.2, "bob_error"),
            envelope(0.3, "carol", &said(&first, 1, "carol", "C1")),
            envelope(0.4, "judge", &said(&first, 0, "judge", "carol")),
            envelope(0.5, "task", &second),
            envelope(0.6, "alice", &said(&second, 1, "alice", "A1'")),
            envelope(0.7, "carol", &said(&second, 1, "carol", "C1'")),
            envelope(0.8, "judge", &said(&second, 0, "judge", "alice")),
            closed(1.0, "task"),
        ],
    );
    // Bob is asked in the first debate only (counted: the order of sends on different outputs
    // is not kept by dora's test output).
    let asked = who_was_asked(&sent);
    let times = |who: &str| asked.iter().filter(|w| *w == who).count();
    assert_eq!(
        [times("alice"), times("bob"), times("carol"), times("judge")],
        [2, 1, 2, 2],
        "{asked:?}"
    );
    let verdicts = on(&sent, "verdict");
    assert_eq!(verdicts.len(), 2);
    for v in &verdicts {
        let p = payload(v);
        assert_eq!(transcript(&p)[1], t(1, "bob", ABSENT));
        let reason = p["absent"][0]["reason"].as_str().unwrap();
        assert!(reason.contains("input `bob` closed"), "{reason}");
    }
    assert!(on(&sent, "error").is_empty());
}

#[test]
fn with_fail_an_absence_ends_the_debate_in_an_error_naming_the_debater() {
    let (task, later) = (topic("pineapple on pizza", "s"), topic("later", "s2"));
    let sent = harness::run(
        debate(&["alice", "bob", "carol"], 2, 60_000, OnAbsent::Fail),
        vec![
            envelope(0.0, "task", &task),
            envelope(0.1, "alice", &said(&task, 1, "alice", "A1")),
            closed(0.2, "bob"),
            // Whatever comes for the failed debate later is reported, not taken.
            envelope(0.3, "carol", &said(&task, 1, "carol", "C1")),
            // A later debate cannot succeed without bob: it fails before anyone is asked.
            envelope(0.4, "task", &later),
        ],
    );
    let mut asked = who_was_asked(&sent);
    asked.sort();
    assert_eq!(asked, ["alice", "bob"], "nobody else is asked");
    let failed = on(&sent, "verdict");
    assert_eq!(
        failed.len(),
        2,
        "each failure answers its topic on `verdict`"
    );
    assert_eq!(failed[1].reply_to.as_deref(), Some(later.id.as_str()));
    assert!(
        failed[1]
            .content
            .contains("debater `bob` is absent in round 1: its process has ended"),
        "{}",
        failed[1].content
    );
    let f = &failed[0];
    assert_eq!(f.kind, Kind::Error);
    assert_eq!(f.reply_to.as_deref(), Some(task.id.as_str()));
    assert!(
        f.content.contains("debater `bob` is absent in round 1")
            && f.content.contains("input `bob` closed"),
        "{}",
        f.content
    );
    let p = payload(f);
    assert_eq!(p["debater"], "bob");
    assert_eq!(transcript(&p), [t(1, "alice", "A1")]);
    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert_eq!(errors[0].id, f.id, "the same failure on `error`");
    assert!(errors[1].content.contains("no such turn is pending"));
    assert_eq!(errors[2].id, failed[1].id);
    assert!(on(&sent, "turn").len() == 1);
}

#[test]
fn a_debater_that_does_not_answer_in_time_is_absent_and_its_late_answer_an_error() {
    let task = topic("is a hot dog a sandwich", "s");
    let sent = harness::run(
        debate(&["alice", "bob"], 1, 300, OnAbsent::Skip),
        vec![
            envelope(0.0, "task", &task),
            envelope(0.02, "alice", &said(&task, 1, "alice", "A1")),
            // Bob's turn opens at ~0.02 and times out at ~0.32; the judge is asked then and
            // would time out at ~0.62.
            envelope(0.42, "bob", &said(&task, 1, "bob", "B1, too late")),
            envelope(0.47, "judge", &said(&task, 0, "judge", "alice")),
            closed(0.55, "task"),
        ],
    );
    let asked: Vec<String> = in_turn_order(&sent).into_iter().map(|q| q.0).collect();
    assert_eq!(asked, ["alice", "bob", "judge"]);
    let p = payload(&on(&sent, "verdict")[0]);
    assert_eq!(transcript(&p), [t(1, "alice", "A1"), t(1, "bob", ABSENT)]);
    assert_eq!(p["absent"][0]["reason"], "no answer within 300 ms");
    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].content.contains("`bob` answered"),
        "{}",
        errors[0].content
    );
}

#[test]
fn a_failing_judge_or_a_debate_without_speakers_fails_in_either_mode() {
    let (judged, silent, unjudged) = (topic("one", "s1"), topic("two", "s2"), topic("3", "s3"));
    let sent = harness::run(
        debate(&["alice", "bob"], 1, 60_000, OnAbsent::Skip),
        vec![
            envelope(0.0, "task", &judged),
            envelope(0.1, "alice", &said(&judged, 1, "alice", "A1")),
            envelope(0.2, "bob", &said(&judged, 1, "bob", "B1")),
            envelope(
                0.3,
                "judge_error",
                &answer(&judged, 0, "judge", Kind::Error, "LLM failed: timeout"),
            ),
            envelope(0.4, "task", &silent),
            envelope(
                0.5,
                "alice_error",
                &answer(&silent, 1, "alice", Kind::Error, "boom"),
            ),
            envelope(
                0.6,
                "bob_error",
                &answer(&silent, 1, "bob", Kind::Error, "boom"),
            ),
            // Without a judge no debate can end well: the next fails before anyone is asked.
            closed(0.7, "judge"),
            envelope(0.8, "task", &unjudged),
            closed(1.0, "task"),
        ],
    );
    let outcomes = on(&sent, "verdict");
    assert_eq!(outcomes.len(), 3);
    assert!(
        outcomes[2]
            .content
            .contains("the judge `judge` cannot give a verdict: its process has ended"),
        "{}",
        outcomes[2].content
    );
    assert!(outcomes.iter().all(|o| o.kind == Kind::Error));
    assert!(
        outcomes[0]
            .content
            .contains("the judge `judge` gave no verdict: it answered with an error: LLM failed"),
        "{}",
        outcomes[0].content
    );
    assert_eq!(transcript(&payload(&outcomes[0])).len(), 2);
    assert!(
        outcomes[1].content.contains("every debater was absent"),
        "{}",
        outcomes[1].content
    );
    let mut asked = who_was_asked(&sent);
    asked.sort();
    assert_eq!(
        asked,
        ["alice", "alice", "bob", "bob", "judge"],
        "no judge for a debate without speakers"
    );
}

#[test]
fn bad_input_becomes_an_error_and_the_debate_goes_on() {
    let task = topic("real topic", "s");
    let stray = topic("x", "nowhere");
    let sent = harness::run(
        debate(&["alice", "bob"], 1, 5000, OnAbsent::Skip),
        vec![
            raw(
                0.0,
                "task",
                serde_json::json!([1.5]),
                Some(serde_json::json!("Float64")),
            ),
            envelope(
                0.05,
                "task",
                &Envelope::new(Kind::Token, "llm", Role::Assistant, "tok"),
            ),
            envelope(0.1, "task", &topic("   ", "s0")),
            envelope(0.15, "task", &task),
            // An answer to nothing, a result on the wrong debater's input, a stranger.
            envelope(0.2, "alice", &said(&stray, 1, "alice", "?")),
            envelope(
                0.25,
                "bob",
                &said(&task, 1, "alice", "not bob's turn to take"),
            ),
            envelope(0.3, "zed", &said(&task, 1, "zed", "hi")),
            envelope(0.35, "alice", &said(&task, 1, "alice", "A1")),
            envelope(0.45, "bob", &said(&task, 1, "bob", "B1")),
            envelope(0.55, "judge", &said(&task, 0, "judge", "bob")),
            closed(1.0, "task"),
        ],
    );
    let errors: Vec<String> = on(&sent, "error").into_iter().map(|e| e.content).collect();
    assert_eq!(errors.len(), 6, "{errors:#?}");
    assert!(errors[0].contains("malformed message on input `task`"));
    assert!(errors[1].contains("a `token` envelope is not a debate topic"));
    assert!(errors[2].contains("empty debate topic"));
    assert!(errors[3].contains("no such turn is pending"));
    assert!(errors[4].contains("no such turn is pending"));
    assert!(errors[5].contains("unexpected input `zed`"));
    let v = &on(&sent, "verdict")[0];
    assert_eq!(v.content, "bob");
    assert_eq!(
        transcript(&payload(v)),
        [t(1, "alice", "A1"), t(1, "bob", "B1")]
    );
}

#[test]
fn sessions_debate_concurrently_and_a_second_topic_in_a_session_waits_its_turn() {
    let (a, b, a2) = (topic("A", "sa"), topic("B", "sb"), topic("A2", "sa"));
    let sent = harness::run(
        debate(&["alice", "bob"], 1, 5000, OnAbsent::Skip),
        vec![
            envelope(0.0, "task", &a),
            envelope(0.0, "task", &b),
            envelope(0.0, "task", &a2),
            // Interleaved answers: b's debate finishes first.
            envelope(0.1, "alice", &said(&b, 1, "alice", "b-alice")),
            envelope(0.15, "alice", &said(&a, 1, "alice", "a-alice")),
            envelope(0.2, "bob", &said(&b, 1, "bob", "b-bob")),
            envelope(0.25, "judge", &said(&b, 0, "judge", "verdict b")),
            envelope(0.3, "bob", &said(&a, 1, "bob", "a-bob")),
            envelope(0.35, "judge", &said(&a, 0, "judge", "verdict a")),
            envelope(0.4, "alice", &said(&a2, 1, "alice", "a2-alice")),
            envelope(0.45, "bob", &said(&a2, 1, "bob", "a2-bob")),
            envelope(0.5, "judge", &said(&a2, 0, "judge", "verdict a2")),
            closed(1.0, "task"),
        ],
    );
    let verdicts = on(&sent, "verdict");
    let got: Vec<(&str, &str)> = verdicts
        .iter()
        .map(|v| (v.session.as_str(), v.content.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("sb", "verdict b"),
            ("sa", "verdict a"),
            ("sa", "verdict a2")
        ]
    );
    assert_eq!(
        transcript(&payload(&verdicts[1])),
        [t(1, "alice", "a-alice"), t(1, "bob", "a-bob")]
    );
    assert_eq!(
        transcript(&payload(&verdicts[2])),
        [t(1, "alice", "a2-alice"), t(1, "bob", "a2-bob")]
    );
    // The queued topic was not started before its session's debate ended.
    let alice_qs: Vec<String> = on(&sent, "alice").into_iter().map(|e| e.id).collect();
    assert_eq!(
        alice_qs,
        [
            turn_id(&a, 1, "alice"),
            turn_id(&b, 1, "alice"),
            turn_id(&a2, 1, "alice")
        ]
    );
    assert!(on(&sent, "error").is_empty());
}

#[test]
fn the_moderator_ends_once_task_is_closed_and_the_last_debate_is_over() {
    let task = topic("end", "s");
    let sent = harness::run(
        debate(&["alice", "bob"], 1, 5000, OnAbsent::Skip),
        vec![
            envelope(0.0, "task", &task),
            closed(0.05, "task"),
            envelope(0.1, "alice", &said(&task, 1, "alice", "A1")),
            envelope(0.2, "bob", &said(&task, 1, "bob", "B1")),
            envelope(0.3, "judge", &said(&task, 0, "judge", "done")),
            // Were the node still running, this stray answer would be an error.
            envelope(2.5, "alice", &said(&task, 9, "alice", "stray")),
        ],
    );
    assert_eq!(on(&sent, "verdict")[0].content, "done");
    assert!(on(&sent, "error").is_empty(), "the node had ended");
}

#[test]
fn a_debate_cut_short_by_stop_is_answered_with_an_error() {
    let (open, queued) = (topic("open", "s"), topic("queued", "s"));
    // The events end (as on a dora stop) while the debate waits for bob.
    let sent = harness::run(
        debate(&["alice", "bob"], 1, 60_000, OnAbsent::Skip),
        vec![
            envelope(0.0, "task", &open),
            envelope(0.0, "task", &queued),
            envelope(0.1, "alice", &said(&open, 1, "alice", "A1")),
        ],
    );
    let outcomes = on(&sent, "verdict");
    assert_eq!(outcomes.len(), 2, "{outcomes:#?}");
    assert!(outcomes.iter().all(|o| o.kind == Kind::Error));
    assert_eq!(outcomes[0].reply_to.as_deref(), Some(open.id.as_str()));
    assert!(
        outcomes[0]
            .content
            .contains("stopped before the debate ended")
    );
    assert_eq!(transcript(&payload(&outcomes[0])), [t(1, "alice", "A1")]);
    assert_eq!(outcomes[1].reply_to.as_deref(), Some(queued.id.as_str()));
}

#[test]
fn with_fail_a_debater_that_ends_after_its_last_turn_is_not_absent() {
    let task = topic("short debate", "s");
    let sent = harness::run(
        debate(&["alice", "bob", "carol"], 1, 60_000, OnAbsent::Fail),
        vec![
            envelope(0.0, "task", &task),
            envelope(0.1, "alice", &said(&task, 1, "alice", "A1")),
            envelope(0.2, "bob", &said(&task, 1, "bob", "B1")),
            // Bob has spoken his only turn; his process ending costs the debate nothing.
            closed(0.25, "bob"),
            envelope(0.3, "carol", &said(&task, 1, "carol", "C1")),
            envelope(0.4, "judge", &said(&task, 0, "judge", "carol")),
            closed(1.0, "task"),
        ],
    );
    let v = &on(&sent, "verdict")[0];
    assert_eq!((v.kind, v.content.as_str()), (Kind::Result, "carol"));
    assert_eq!(transcript(&payload(v)).len(), 3);
    assert!(on(&sent, "error").is_empty());
}
