//! mofa-consensus: its vote parsing and threshold arithmetic, its handler under
//! `DoraNode::init_testing` (members' answers scripted as timed inputs: their task ids are
//! derived, so they can be addressed), and dataflows/consensus.yml end to end under `dora run`
//! against the mock OpenAI server.

use std::sync::Mutex;
use std::time::Duration;

use dora_node_api::integration_testing::integration_testing_format::{
    IncomingEvent, TimedIncomingEvent,
};
use mofa_consensus::{
    Ballot, Consensus, ConsensusConfig, Phase, Threshold, Vote, member_task_id, parse_vote, tally,
    vote_reason,
};
use mofa_kernel::{Envelope, Kind, Role};
use mofa_tests::dora;
use mofa_tests::harness::{self, closed, envelope, on};
use mofa_tests::mock_llm::{MockLlm, Recorded, Rule, Script};
use serde_json::Value;

// ---------------------------------------------------------------- votes and thresholds

#[test]
fn votes_are_read_from_the_vote_line_else_the_first_number_in_range() {
    assert_eq!(parse_vote("VOTE: 2\nREASON: it is cheaper", 3), Some(2));
    assert_eq!(parse_vote("**Vote:** #3 — bold but sound", 3), Some(3));
    assert_eq!(parse_vote("I vote for proposal 1.", 3), Some(1));
    assert_eq!(parse_vote("vote: 2", 2), Some(2));
    // No vote line: the first integer that names a proposal.
    assert_eq!(parse_vote("Of the 12 ideas, number 2 wins", 3), Some(2));
    assert_eq!(parse_vote("2", 3), Some(2));
    // An explicit vote out of range is invalid, not read as some other number in the text.
    assert_eq!(parse_vote("VOTE: 7\nREASON: see point 1", 3), None);
    assert_eq!(parse_vote("VOTE: 0", 3), None);
    assert_eq!(parse_vote("VOTE: 99999999999999999999999", 3), None);
    // Garbage is an abstention.
    assert_eq!(parse_vote("I cannot decide.", 3), None);
    assert_eq!(parse_vote("", 3), None);
    assert_eq!(parse_vote("Numbers 4 and 5 look fine", 3), None);
    // `vote` inside another word is not a vote line; the echoed form is skipped.
    assert_eq!(parse_vote("I devote 4 minutes; pick 1", 3), Some(1));
    assert_eq!(
        parse_vote("VOTE: <the proposal's number, 1 to 3>\nVOTE: 3", 3),
        Some(3)
    );
    // An echo of the form is no vote (seen from the 135M local model).
    assert_eq!(parse_vote("VOTE: [the proposal's number, 1 to 3]", 3), None);
    assert_eq!(
        parse_vote("The proposal's number, 1 to 3, is best", 3),
        None
    );
    assert_eq!(parse_vote("1 to 3: I pick 2", 3), Some(2));

    assert_eq!(
        vote_reason("VOTE: 2\nREASON: it is cheaper"),
        "it is cheaper"
    );
    assert_eq!(
        vote_reason("Vote: 1\nBecause it works."),
        "Because it works."
    );
}

#[test]
fn thresholds_are_exact_fractions_of_all_members() {
    let two_thirds: Threshold = "2/3".parse().unwrap();
    assert_eq!(two_thirds, Threshold::TWO_THIRDS);
    assert!(two_thirds.reached(2, 3), "2 of 3 is 2/3");
    assert!(!two_thirds.reached(1, 3));
    assert_eq!(two_thirds.needed(3), 2);
    assert_eq!(two_thirds.needed(4), 3);
    assert_eq!(two_thirds.needed(5), 4);
    // 0.67 is a little more than 2/3: 2 of 3 does not reach it.
    let decimal: Threshold = "0.67".parse().unwrap();
    assert!(!decimal.reached(2, 3));
    assert!(decimal.reached(3, 3));
    assert_eq!(decimal.needed(100), 67);
    assert_eq!("0.5".parse::<Threshold>().unwrap().needed(4), 2);
    assert_eq!("4/6".parse::<Threshold>().unwrap(), Threshold::TWO_THIRDS);
    assert_eq!("1".parse::<Threshold>().unwrap().needed(3), 3);
    for bad in ["0", "1.5", "3/2", "2/0", "abc", "", "0.", "-0.5", "2/3/4"] {
        assert!(
            bad.parse::<Threshold>().is_err(),
            "{bad:?} should be refused"
        );
    }
}

fn vote(member: &str, ballot: Ballot) -> Vote {
    Vote {
        member: member.into(),
        ballot,
        reason: String::new(),
        raw: String::new(),
    }
}

#[test]
fn a_tie_for_the_lead_is_never_a_decision() {
    let split = [
        vote("a", Ballot::For(1)),
        vote("b", Ballot::For(2)),
        vote("c", Ballot::For(3)),
    ];
    // Even a threshold every proposal meets decides nothing when the lead is shared.
    let t = tally(3, &split, 3, "1/3".parse().unwrap());
    assert_eq!((t.tie, t.leader, t.reached), (true, None, false));
    let two_two = [
        vote("a", Ballot::For(1)),
        vote("b", Ballot::For(1)),
        vote("c", Ballot::For(2)),
        vote("d", Ballot::For(2)),
    ];
    let t = tally(2, &two_two, 4, "1/2".parse().unwrap());
    assert_eq!((t.tie, t.reached), (true, false));

    // Abstentions and absences count against the threshold: it is a share of all members.
    let thin = [
        vote("a", Ballot::For(2)),
        vote("b", Ballot::Invalid),
        vote("c", Ballot::Absent),
    ];
    let t = tally(2, &thin, 3, Threshold::TWO_THIRDS);
    assert_eq!(t.counts, [0, 1]);
    assert_eq!(
        (t.leader, t.leader_votes, t.abstained, t.absent),
        (Some(2), 1, 1, 1)
    );
    assert!(!t.reached);
    let two = [
        vote("a", Ballot::For(2)),
        vote("b", Ballot::For(2)),
        vote("c", Ballot::Absent),
    ];
    assert!(tally(2, &two, 3, Threshold::TWO_THIRDS).reached);
}

/// Held while a test changes this process's environment, and while a dataflow runs: the
/// dora CLI and its nodes inherit the environment at spawn.
static ENV: Mutex<()> = Mutex::new(());

#[test]
fn configuration_errors_name_the_variable() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    unsafe {
        std::env::remove_var("MOFA_MEMBERS");
        std::env::remove_var("MOFA_THRESHOLD");
        std::env::remove_var("MOFA_ROUNDS");
    }
    let err = ConsensusConfig::from_env().unwrap_err().to_string();
    assert!(err.starts_with("MOFA_MEMBERS is not set"), "{err}");
    unsafe { std::env::set_var("MOFA_MEMBERS", "alice") };
    let err = ConsensusConfig::from_env().unwrap_err().to_string();
    assert!(
        err.contains("MOFA_MEMBERS") && err.contains("at least 2"),
        "{err}"
    );
    unsafe { std::env::set_var("MOFA_MEMBERS", "alice,bob") };
    unsafe { std::env::set_var("MOFA_THRESHOLD", "1.5") };
    let err = ConsensusConfig::from_env().unwrap_err().to_string();
    assert!(
        err.starts_with("MOFA_THRESHOLD=\"1.5\" is invalid"),
        "{err}"
    );
    unsafe { std::env::set_var("MOFA_THRESHOLD", "0.75") };
    unsafe { std::env::set_var("MOFA_ROUNDS", "0") };
    let err = ConsensusConfig::from_env().unwrap_err().to_string();
    assert!(err.starts_with("MOFA_ROUNDS"), "{err}");
    unsafe { std::env::remove_var("MOFA_ROUNDS") };
    let cfg = ConsensusConfig::from_env().unwrap();
    assert_eq!(cfg.members, ["alice", "bob"]);
    assert_eq!(cfg.threshold, "3/4".parse().unwrap());
    assert_eq!(cfg.rounds, 3);
    unsafe {
        std::env::remove_var("MOFA_MEMBERS");
        std::env::remove_var("MOFA_THRESHOLD");
    }
}

// ---------------------------------------------------------------- the handler

/// The handler under `init_testing`, holding [`ENV`]: the kernel reads its environment
/// (MOFA_STOP_TIMEOUT_MS) as the node starts.
fn run_node(node: Consensus, events: Vec<TimedIncomingEvent>) -> Vec<harness::Sent> {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    harness::run(node, events)
}

fn node(rounds: u32, timeout_ms: u64) -> Consensus {
    Consensus::new(ConsensusConfig {
        members: vec!["a".into(), "b".into(), "c".into()],
        threshold: Threshold::TWO_THIRDS,
        rounds,
        member_timeout: Duration::from_millis(timeout_ms),
    })
}

fn question(text: &str, session: &str) -> Envelope {
    Envelope::task("source", text).with_session(session)
}

/// `member`'s answer (a result, or an error) to its task in that round and phase.
fn answer(
    q: &Envelope,
    round: u32,
    phase: Phase,
    member: &str,
    kind: Kind,
    text: &str,
) -> Envelope {
    let mut e = Envelope::new(kind, member, Role::Assistant, text).with_session(&q.session);
    e.reply_to = Some(member_task_id(q, round, phase, member));
    e
}

fn says(q: &Envelope, round: u32, phase: Phase, member: &str, text: &str) -> Envelope {
    answer(q, round, phase, member, Kind::Result, text)
}

fn payload(e: &Envelope) -> Value {
    e.payload_json().unwrap()
}

#[test]
fn proposals_then_votes_then_a_decision_answering_the_question() {
    let q = question("Which tree to plant?", "s1");
    let p = Phase::Propose;
    let v = Phase::Vote;
    let sent = run_node(
        node(3, 5000),
        vec![
            envelope(0.0, "task", &q),
            envelope(0.02, "a", &says(&q, 1, p, "a", "Oak")),
            envelope(0.03, "c", &says(&q, 1, p, "c", "Pine")),
            envelope(0.04, "b", &says(&q, 1, p, "b", "Willow\nnear water")),
            envelope(0.06, "a", &says(&q, 1, v, "a", "VOTE: 2\nREASON: water")),
            envelope(0.07, "b", &says(&q, 1, v, "b", "VOTE: 2\nREASON: mine")),
            envelope(0.08, "c", &says(&q, 1, v, "c", "VOTE: 3\nREASON: hardy")),
            closed(0.1, "task"),
        ],
    );
    // Each member got one task per phase, on its own output, in the question's session.
    for m in ["a", "b", "c"] {
        let tasks = on(&sent, m);
        assert_eq!(tasks.len(), 2, "{m}: {tasks:#?}");
        assert_eq!(tasks[0].id, member_task_id(&q, 1, p, m));
        assert_eq!(tasks[1].id, member_task_id(&q, 1, v, m));
        for t in &tasks {
            assert_eq!((t.kind, t.session.as_str(), t.round), (Kind::Task, "s1", 1));
            assert!(t.content.contains("Question: Which tree to plant?"));
            assert!(t.content.contains(&format!("You are member {m};")));
        }
        assert!(
            tasks[0]
                .content
                .contains("Consensus round 1 of 3, propose phase.")
        );
        let ballot = &tasks[1].content;
        assert!(ballot.contains("Consensus round 1 of 3, vote phase."));
        // Numbered in member order, whatever the order the proposals came in.
        assert!(
            ballot.contains("1. a: Oak\n2. b: Willow\n   near water\n3. c: Pine"),
            "{ballot}"
        );
        assert!(ballot.contains("VOTE: <the proposal's number, 1 to 3>"));
        assert!(ballot.contains("at least 2 of the 3"));
    }

    let decisions = on(&sent, "decision");
    assert_eq!(decisions.len(), 1, "{sent:#?}");
    let d = &decisions[0];
    assert_eq!(
        (d.kind, d.content.as_str()),
        (Kind::Result, "Willow\nnear water")
    );
    assert_eq!(d.reply_to.as_deref(), Some(q.id.as_str()));
    assert_eq!(d.session, "s1");
    let pl = payload(d);
    assert_eq!(pl["consensus"], true);
    assert_eq!(pl["needed"], 2);
    assert_eq!(pl["threshold_fraction"], "2/3");
    assert_eq!(pl["winner"]["member"], "b");
    assert_eq!(pl["winner"]["proposal"], 2);
    assert_eq!(pl["winner"]["votes"], 2);
    let rounds = pl["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 1);
    assert_eq!(rounds[0]["votes"][0]["vote"], 2);
    assert_eq!(rounds[0]["votes"][0]["reason"], "water");
    assert_eq!(rounds[0]["votes"][2]["vote"], 3);
    assert_eq!(rounds[0]["tally"]["counts"][1]["votes"], 2);

    // The votes and the tally were published as the round ended.
    let votes = on(&sent, "votes");
    assert_eq!(votes.len(), 3);
    assert!(votes.iter().all(|e| e.kind == Kind::Vote && e.round == 1));
    let voters: Vec<&str> = votes.iter().map(|e| e.sender.as_str()).collect();
    assert_eq!(voters, ["a", "b", "c"]);
    assert_eq!(payload(&votes[2])["vote"], 3);
    let tallies = on(&sent, "tally");
    assert_eq!(tallies.len(), 1);
    assert!(
        tallies[0].content.starts_with(
            "Round 1 tally: proposal 1 (a) 0 votes, proposal 2 (b) 2 votes, proposal 3 (c) 1 vote;"
        ),
        "{}",
        tallies[0].content
    );
    assert!(on(&sent, "error").is_empty(), "{sent:#?}");
}

#[test]
fn a_split_round_goes_on_showing_the_tally_and_the_last_round_says_no_consensus() {
    let q = question("Name the river", "s1");
    let (p, v) = (Phase::Propose, Phase::Vote);
    let mut events = vec![envelope(0.0, "task", &q)];
    let mut t = 0.01;
    for round in 1..=2 {
        for (m, text) in [("a", "Alpha"), ("b", "Beta"), ("c", "Gamma")] {
            events.push(envelope(
                t,
                m,
                &says(&q, round, p, m, &format!("{text}{round}")),
            ));
            t += 0.01;
        }
        // Round 1: out of range, garbage and a valid vote; round 2: one each.
        let ballots = if round == 1 {
            ["VOTE: 7", "no idea, sorry", "VOTE: 1"]
        } else {
            ["VOTE: 1", "VOTE: 2", "VOTE: 3"]
        };
        for (m, b) in ["a", "b", "c"].into_iter().zip(ballots) {
            events.push(envelope(t, m, &says(&q, round, v, m, b)));
            t += 0.01;
        }
    }
    events.push(closed(t + 0.05, "task"));
    let sent = run_node(node(2, 5000), events);

    // Round 2's proposal prompt shows round 1's proposals and tally.
    let second = &on(&sent, "a")[2];
    assert_eq!(second.id, member_task_id(&q, 2, p, "a"));
    assert!(
        second
            .content
            .contains("Consensus round 2 of 2, propose phase.")
    );
    assert!(
        second
            .content
            .contains("1. a: Alpha1\n2. b: Beta1\n3. c: Gamma1")
    );
    assert!(
        second.content.contains(
            "Round 1 tally: proposal 1 (a) 1 vote, proposal 2 (b) 0 votes, proposal 3 (c) 0 votes; \
             2 abstained, 0 absent; 2 of 3 votes needed: not reached."
        ),
        "{}",
        second.content
    );

    let decisions = on(&sent, "decision");
    assert_eq!(decisions.len(), 1);
    let d = &decisions[0];
    assert!(
        d.content.starts_with("No consensus after 2 rounds"),
        "{}",
        d.content
    );
    assert!(d.content.contains("Round 1 tally:") && d.content.contains("Round 2 tally:"));
    let pl = payload(d);
    assert_eq!(pl["consensus"], false);
    assert_eq!(pl["winner"], Value::Null);
    let rounds = pl["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    // Invalid votes are abstentions with the raw text kept.
    let r1 = &rounds[0];
    assert_eq!(r1["votes"][0]["vote"], Value::Null);
    assert_eq!(r1["votes"][0]["status"], "invalid");
    assert_eq!(r1["votes"][0]["raw"], "VOTE: 7");
    assert_eq!(r1["votes"][1]["raw"], "no idea, sorry");
    assert_eq!(r1["votes"][2]["vote"], 1);
    assert_eq!(r1["tally"]["abstained"], 2);
    assert_eq!(r1["tally"]["leader"], 1);
    assert_eq!(r1["tally"]["reached"], false);
    assert_eq!(rounds[1]["tally"]["tie"], true);
    assert_eq!(on(&sent, "tally").len(), 2);
    assert_eq!(on(&sent, "votes").len(), 6);
}

#[test]
fn a_failed_or_silent_member_is_absent_and_the_others_still_decide() {
    let q = question("Pick a colour", "s1");
    let (p, v) = (Phase::Propose, Phase::Vote);
    let sent = run_node(
        node(3, 300),
        vec![
            envelope(0.0, "task", &q),
            envelope(0.01, "a", &says(&q, 1, p, "a", "Red")),
            envelope(0.02, "b", &says(&q, 1, p, "b", "Blue")),
            // c's agent failed: its error output says so.
            envelope(
                0.03,
                "c_error",
                &answer(&q, 1, p, "c", Kind::Error, "LLM failed: HTTP 500"),
            ),
            envelope(0.05, "a", &says(&q, 1, v, "a", "VOTE: 2")),
            envelope(0.06, "b", &says(&q, 1, v, "b", "VOTE: 2")),
            // c never votes: the phase ends at the 300 ms timeout.
            closed(1.0, "task"),
        ],
    );
    // c was still asked to vote: a failure counts for one phase, not for good.
    assert_eq!(on(&sent, "c").len(), 2);
    assert!(
        on(&sent, "c")[1]
            .content
            .contains("1. a: Red\n2. b: Blue\n\n")
    );
    let decisions = on(&sent, "decision");
    assert_eq!(decisions.len(), 1, "{sent:#?}");
    assert_eq!(decisions[0].content, "Blue");
    let pl = payload(&decisions[0]);
    assert_eq!(pl["consensus"], true, "2 of all 3 members is 2/3");
    let r = &pl["rounds"][0];
    assert_eq!(r["proposals"].as_array().unwrap().len(), 2);
    assert_eq!(r["absent"][0]["member"], "c");
    assert_eq!(r["absent"][0]["phase"], "propose");
    assert_eq!(r["absent"][0]["why"], "error: LLM failed: HTTP 500");
    assert_eq!(r["absent"][1]["phase"], "vote");
    assert_eq!(r["absent"][1]["why"], "no answer within 300 ms");
    assert_eq!(r["votes"][2]["status"], "absent");
    assert_eq!(r["tally"]["absent"], 1);
    assert!(on(&sent, "error").is_empty(), "{sent:#?}");
}

#[test]
fn a_member_whose_input_closes_is_absent_at_once_and_not_asked_again() {
    let q = question("Pick a number", "s1");
    let (p, v) = (Phase::Propose, Phase::Vote);
    let sent = run_node(
        // A timeout far past the test: only the closed input can end c's phases.
        node(3, 60_000),
        vec![
            envelope(0.0, "task", &q),
            envelope(0.01, "a", &says(&q, 1, p, "a", "Seven")),
            envelope(0.02, "b", &says(&q, 1, p, "b", "Three")),
            closed(0.03, "c"),
            envelope(0.05, "a", &says(&q, 1, v, "a", "VOTE: 1")),
            envelope(0.06, "b", &says(&q, 1, v, "b", "vote: 2")),
            envelope(0.08, "a", &says(&q, 2, p, "a", "Seven")),
            envelope(0.09, "b", &says(&q, 2, p, "b", "Seven too")),
            envelope(0.11, "a", &says(&q, 2, v, "a", "VOTE: 1")),
            envelope(0.12, "b", &says(&q, 2, v, "b", "VOTE: 1")),
            closed(0.2, "task"),
        ],
    );
    assert_eq!(on(&sent, "c").len(), 1, "c is not asked once it is gone");
    let decisions = on(&sent, "decision");
    assert_eq!(decisions.len(), 1, "{sent:#?}");
    assert_eq!(decisions[0].content, "Seven");
    let pl = payload(&decisions[0]);
    assert_eq!(pl["winner"]["round"], 2);
    let r2 = &pl["rounds"][1];
    assert_eq!(r2["absent"][0]["why"], "gone: its process has exited");
    assert_eq!(r2["absent"][1]["why"], "gone: its process has exited");
    assert_eq!(r2["tally"]["needed"], 2);
}

#[test]
fn bad_input_becomes_an_error_and_the_node_goes_on_with_concurrent_sessions() {
    let q1 = question("First question", "s1");
    let q2 = question("Second question", "s2");
    let (p, v) = (Phase::Propose, Phase::Vote);
    let mut stray = says(&q1, 1, p, "a", "who asked?");
    stray.reply_to = Some("not-a-task-of-ours".into());
    let mut not_a_question = question("an error", "s3");
    not_a_question.kind = Kind::Error;
    let mut events = vec![
        envelope(0.0, "task", &question("   ", "s0")),
        envelope(0.01, "task", &not_a_question),
        envelope(0.02, "task", &q1),
        envelope(0.03, "task", &q2),
        envelope(0.04, "a", &stray),
        // b answers a's task: the reply_to is known, but not from b.
        envelope(0.05, "b", &says(&q1, 1, p, "a", "impostor")),
        envelope(0.06, "mallory", &says(&q1, 1, p, "a", "hi")),
    ];
    let mut t = 0.1;
    // The two sessions' answers interleave.
    for (phase, texts) in [(p, ["x", "y", "z"]), (v, ["VOTE: 3", "VOTE: 3", "VOTE: 1"])] {
        for (m, text) in ["a", "b", "c"].into_iter().zip(texts) {
            for q in [&q1, &q2] {
                let text = format!("{text}{}", if phase == p { q.session.as_str() } else { "" });
                events.push(envelope(t, m, &says(q, 1, phase, m, &text)));
                t += 0.01;
            }
        }
    }
    // A late answer to a phase that is over.
    events.push(envelope(t, "a", &says(&q1, 1, p, "a", "late")));
    events.push(closed(t + 0.05, "task"));
    let sent = run_node(node(3, 5000), events);

    let errors = on(&sent, "error");
    let messages: Vec<&str> = errors.iter().map(|e| e.content.as_str()).collect();
    assert_eq!(errors.len(), 6, "{messages:#?}");
    assert_eq!(messages[0], "empty question");
    assert_eq!(messages[1], "a `error` envelope is not a question");
    assert!(
        messages[2].contains("\"not-a-task-of-ours\""),
        "{}",
        messages[2]
    );
    assert!(
        messages[3].contains("no phase waits for from b"),
        "{}",
        messages[3]
    );
    assert!(
        messages[4].starts_with("unexpected input `mallory`"),
        "{}",
        messages[4]
    );
    assert!(messages[5].contains("already over"), "{}", messages[5]);
    assert!(errors.iter().all(|e| e.kind == Kind::Error));

    let mut decided: Vec<(String, String)> = on(&sent, "decision")
        .iter()
        .map(|d| (d.session.clone(), d.content.clone()))
        .collect();
    decided.sort();
    assert_eq!(
        decided,
        [("s1".into(), "zs1".into()), ("s2".into(), "zs2".into())]
    );
}

#[test]
fn a_second_question_in_a_busy_session_waits_its_turn() {
    let q1 = question("One", "s");
    let q2 = question("Two", "s");
    let (p, v) = (Phase::Propose, Phase::Vote);
    let mut events = vec![envelope(0.0, "task", &q1), envelope(0.01, "task", &q2)];
    let mut t = 0.02;
    for q in [&q1, &q2] {
        for m in ["a", "b", "c"] {
            events.push(envelope(
                t,
                m,
                &says(q, 1, p, m, &format!("{m}-{}", q.content)),
            ));
            t += 0.01;
        }
        for m in ["a", "b", "c"] {
            events.push(envelope(t, m, &says(q, 1, v, m, "VOTE: 1")));
            t += 0.01;
        }
    }
    events.push(closed(t + 0.05, "task"));
    let sent = run_node(node(3, 5000), events);
    let decisions: Vec<String> = on(&sent, "decision")
        .iter()
        .map(|d| d.content.clone())
        .collect();
    assert_eq!(decisions, ["a-One", "a-Two"]);
    let tasks_a = on(&sent, "a");
    assert_eq!(tasks_a.len(), 4);
    assert!(tasks_a[2].content.contains("Question: Two"));
}

// ---------------------------------------------------------------- end to end

const MEMBERS: [&str; 3] = ["pragmatist", "skeptic", "visionary"];

fn member_of(r: &Recorded) -> &'static str {
    let system = r.system();
    MEMBERS
        .into_iter()
        .find(|m| system.starts_with(&format!("You are the {m} ")))
        .unwrap_or_else(|| panic!("no member's system prompt: {system}"))
}

/// The round and phase a member's request is for, from the header the node writes.
fn round_and_phase(r: &Recorded) -> (u32, &'static str) {
    let prompt = r.prompt();
    let (_, rest) = prompt
        .split_once("Consensus round ")
        .unwrap_or_else(|| panic!("no consensus header: {prompt}"));
    let round = rest.split(' ').next().unwrap().parse().unwrap();
    let phase = if rest.contains(", vote phase.") {
        "vote"
    } else {
        "propose"
    };
    (round, phase)
}

/// A rule for one member in one round and phase, keyed on the header its task starts with.
fn at(round: u32, rounds: u32, phase: &str, member: &str, reply: &str) -> Rule {
    Rule {
        matches: format!("round {round} of {rounds}, {phase} phase. You are member {member};"),
        content: Some(reply.into()),
        ..Default::default()
    }
}

/// Runs consensus.yml with `env` and a sink file; asserts the run ended by itself, well within
/// the limit; returns the sink's lines.
fn run_consensus(env: &[(&str, String)]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink.jsonl");
    let mut env = env.to_vec();
    env.push(("MOFA_OUT", sink.display().to_string()));
    env.push(("MOFA_SESSION", "s-panel".into()));
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let started = std::time::Instant::now();
    let limit = Duration::from_secs(120);
    let run = dora::run("consensus.yml", &env, limit);
    assert!(
        run.status.is_some_and(|s| s.success()),
        "dora run failed:\n{}",
        run.log
    );
    assert!(
        started.elapsed() < limit,
        "the graph should end by itself, not at --stop-after:\n{}",
        run.log
    );
    dora::sink_lines(&sink)
}

fn lines_on<'a>(lines: &'a [Value], input: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["input"] == input).collect()
}

fn line_payload(l: &Value) -> Value {
    serde_json::from_str(l["payload"].as_str().unwrap()).unwrap()
}

/// Every request of a phase ended before any of the next phase began.
fn assert_phases_in_order(reqs: &[Recorded]) {
    let key = |r: &Recorded| {
        let (round, phase) = round_and_phase(r);
        round * 2 + u32::from(phase == "vote")
    };
    for a in reqs {
        for b in reqs {
            if key(a) < key(b) {
                assert!(
                    a.end_us <= b.start_us,
                    "{:?} overlaps the later {:?}",
                    round_and_phase(a),
                    round_and_phase(b)
                );
            }
        }
    }
}

#[test]
fn the_panel_disagrees_in_round_1_and_agrees_in_round_2() {
    let mut rules = vec![
        at(1, 3, "propose", "pragmatist", "Plant oaks along the river."),
        at(
            1,
            3,
            "propose",
            "skeptic",
            "Plant willows, tested on one bank first.",
        ),
        at(1, 3, "propose", "visionary", "Plant a food forest."),
        // Round 1: each votes for its own proposal.
        at(
            1,
            3,
            "vote",
            "pragmatist",
            "VOTE: 1\nREASON: oaks are cheap.",
        ),
        at(1, 3, "vote", "skeptic", "VOTE: 2\nREASON: evidence first."),
        at(1, 3, "vote", "visionary", "VOTE: 3\nREASON: think big."),
        at(2, 3, "propose", "pragmatist", "Plant oaks, in phases."),
        at(
            2,
            3,
            "propose",
            "skeptic",
            "Plant native willows on a trial bank, then widen.",
        ),
        at(
            2,
            3,
            "propose",
            "visionary",
            "Plant a food forest, trial first.",
        ),
        // Round 2: two of three for the skeptic's, in the forms models really use.
        at(
            2,
            3,
            "vote",
            "pragmatist",
            "**Vote:** #2 — the trial keeps costs down.",
        ),
        at(
            2,
            3,
            "vote",
            "skeptic",
            "VOTE: 2\nREASON: still evidence first.",
        ),
        at(2, 3, "vote", "visionary", "I stay with 3, the boldest."),
    ];
    // Anything unscripted would be a bug: make it visible.
    rules.push(Rule {
        content: Some("UNSCRIPTED".into()),
        ..Default::default()
    });
    let mock = MockLlm::start(Script { rules });
    let lines = run_consensus(&[
        ("OPENAI_BASE_URL", mock.base_url()),
        ("MOFA_TASK", "How should we green the riverbank?".into()),
    ]);

    // Exactly 3 proposal and 3 vote requests per round, one per member, phase after phase.
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 12, "{reqs:#?}");
    for round in 1..=2 {
        for phase in ["propose", "vote"] {
            let mut who: Vec<&str> = reqs
                .iter()
                .filter(|r| round_and_phase(r) == (round, phase))
                .map(member_of)
                .collect();
            who.sort();
            assert_eq!(who, MEMBERS, "round {round} {phase}");
        }
    }
    assert_phases_in_order(&reqs);
    // Members keep no memory: each request is the persona and the node's one task.
    assert!(
        reqs.iter()
            .all(|r| r.body["messages"].as_array().unwrap().len() == 2)
    );
    // Round 2's proposal prompts show round 1's proposals and tally.
    for r in reqs.iter().filter(|r| round_and_phase(r) == (2, "propose")) {
        let prompt = r.prompt();
        assert!(prompt.contains("2. skeptic: Plant willows, tested on one bank first."));
        assert!(
            prompt.contains(
                "Round 1 tally: proposal 1 (pragmatist) 1 vote, proposal 2 (skeptic) 1 vote, \
                 proposal 3 (visionary) 1 vote; 0 abstained, 0 absent; 2 of 3 votes needed: \
                 not reached: a tie for the lead."
            ),
            "{prompt}"
        );
    }
    for r in reqs.iter().filter(|r| round_and_phase(r) == (2, "vote")) {
        assert!(r.prompt().contains(
            "1. pragmatist: Plant oaks, in phases.\n2. skeptic: Plant native willows on a trial \
             bank, then widen.\n3. visionary: Plant a food forest, trial first."
        ));
    }

    // The decision: the skeptic's round-2 proposal, with the whole vote record.
    let decisions = lines_on(&lines, "result");
    assert_eq!(decisions.len(), 1, "{lines:#?}");
    let d = decisions[0];
    assert_eq!(d["kind"], "result");
    assert_eq!(d["sender"], "consensus");
    assert_eq!(d["session"], "s-panel");
    assert!(d["reply_to"].is_string());
    assert_eq!(d["round"], 2);
    assert_eq!(
        d["content"],
        "Plant native willows on a trial bank, then widen."
    );
    let pl = line_payload(d);
    assert_eq!(pl["consensus"], true);
    assert_eq!(pl["winner"]["member"], "skeptic");
    assert_eq!(pl["winner"]["round"], 2);
    assert_eq!(pl["winner"]["votes"], 2);
    let rounds = pl["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    assert_eq!(rounds[0]["tally"]["tie"], true);
    let votes_of = |r: &Value| -> Vec<(String, Value)> {
        r["votes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["member"].as_str().unwrap().to_owned(), v["vote"].clone()))
            .collect()
    };
    assert_eq!(
        votes_of(&rounds[0]),
        [
            ("pragmatist".into(), 1.into()),
            ("skeptic".into(), 2.into()),
            ("visionary".into(), 3.into())
        ]
    );
    assert_eq!(
        votes_of(&rounds[1]),
        [
            ("pragmatist".into(), 2.into()),
            ("skeptic".into(), 2.into()),
            ("visionary".into(), 3.into())
        ]
    );
    assert_eq!(rounds[1]["votes"][1]["reason"], "still evidence first.");

    // Observers saw each round's tally and votes as they happened, before the decision.
    let tallies = lines_on(&lines, "tally");
    assert_eq!(tallies.len(), 2);
    assert_eq!(tallies[1]["round"], 2);
    assert_eq!(line_payload(tallies[1])["tally"]["reached"], true);
    let votes = lines_on(&lines, "votes");
    assert_eq!(votes.len(), 6);
    assert!(votes.iter().all(|v| v["kind"] == "vote"));
    assert!(lines.iter().all(|l| l["kind"] != "error"), "{lines:#?}");
}

#[test]
fn a_panel_that_never_agrees_ends_with_no_consensus_and_every_tally() {
    // Each member keeps its own proposal and always votes for it.
    let mut rules = Vec::new();
    for (i, m) in MEMBERS.iter().enumerate() {
        rules.push(Rule {
            matches: format!("propose phase. You are member {m};"),
            content: Some(format!("The {m}'s way.")),
            ..Default::default()
        });
        rules.push(Rule {
            matches: format!("vote phase. You are member {m};"),
            content: Some(format!("VOTE: {}\nREASON: mine is best.", i + 1)),
            ..Default::default()
        });
    }
    let mock = MockLlm::start(Script { rules });
    let lines = run_consensus(&[
        ("OPENAI_BASE_URL", mock.base_url()),
        ("MOFA_TASK", "Tabs or spaces?".into()),
        ("MOFA_ROUNDS", "2".into()),
    ]);
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 12, "2 rounds of 3 proposals and 3 votes");
    assert_phases_in_order(&reqs);
    assert!(reqs.iter().all(|r| round_and_phase(r).0 <= 2));

    let decisions = lines_on(&lines, "result");
    assert_eq!(decisions.len(), 1, "{lines:#?}");
    let content = decisions[0]["content"].as_str().unwrap();
    assert!(
        content.starts_with("No consensus after 2 rounds"),
        "{content}"
    );
    for round in 1..=2 {
        assert!(
            content.contains(&format!(
                "Round {round} tally: proposal 1 (pragmatist) 1 vote, proposal 2 (skeptic) 1 vote, \
                 proposal 3 (visionary) 1 vote;"
            )),
            "{content}"
        );
    }
    let pl = line_payload(decisions[0]);
    assert_eq!(pl["consensus"], false);
    assert_eq!(pl["winner"], Value::Null);
    let rounds = pl["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    for r in rounds {
        assert_eq!(r["tally"]["tie"], true);
        assert_eq!(r["tally"]["leader_votes"], 1);
        assert_eq!(r["proposals"].as_array().unwrap().len(), 3);
    }
    assert_eq!(lines_on(&lines, "tally").len(), 2);
}

#[test]
fn a_failing_member_is_absent_and_two_of_three_still_decide() {
    let mock = MockLlm::start(Script {
        rules: vec![
            // The visionary's every LLM call fails; a 400 is not retried.
            Rule {
                matches: "You are the visionary ".into(),
                status: Some(400),
                ..Default::default()
            },
            Rule {
                matches: "vote phase.".into(),
                content: Some("VOTE: 1\nREASON: first is fine.".into()),
                ..Default::default()
            },
        ],
    });
    let lines = run_consensus(&[
        ("OPENAI_BASE_URL", mock.base_url()),
        ("MOFA_TASK", "Lunch?".into()),
    ]);
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 6, "3 proposal and 3 vote requests, one round");
    let decisions = lines_on(&lines, "result");
    assert_eq!(decisions.len(), 1, "{lines:#?}");
    let pl = line_payload(decisions[0]);
    assert_eq!(pl["consensus"], true);
    assert_eq!(pl["winner"]["member"], "pragmatist");
    let r = &pl["rounds"][0];
    let absent: Vec<(&str, &str)> = r["absent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["member"].as_str().unwrap(), a["phase"].as_str().unwrap()))
        .collect();
    assert_eq!(absent, [("visionary", "propose"), ("visionary", "vote")]);
    assert!(
        r["absent"][0]["why"].as_str().unwrap().contains("HTTP 400"),
        "{r}"
    );
    // The member's errors reached the sink too.
    assert_eq!(lines_on(&lines, "visionary_error").len(), 2, "{lines:#?}");
}

#[test]
fn questions_still_open_at_stop_are_answered_with_an_error() {
    let q1 = question("Open", "s");
    let q2 = question("Queued", "s");
    let events = vec![
        envelope(0.0, "task", &q1),
        envelope(0.01, "task", &q2),
        envelope(0.02, "a", &says(&q1, 1, Phase::Propose, "a", "Mine")),
        TimedIncomingEvent {
            time_offset_secs: 0.05,
            event: IncomingEvent::Stop,
        },
    ];
    let sent = {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        // The phase's 60 s watch is in-flight work: stop waits for it this long, then cancels.
        unsafe { std::env::set_var("MOFA_STOP_TIMEOUT_MS", "100") };
        let sent = harness::run(node(3, 60_000), events);
        unsafe { std::env::remove_var("MOFA_STOP_TIMEOUT_MS") };
        sent
    };
    assert!(on(&sent, "decision").is_empty());
    let errors = on(&sent, "error");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(errors[0].reply_to.as_deref(), Some(q1.id.as_str()));
    assert_eq!(
        errors[0].content,
        "stopped in round 1 (propose phase) before a decision"
    );
    assert_eq!(errors[1].reply_to.as_deref(), Some(q2.id.as_str()));
    assert_eq!(errors[1].content, "stopped before this question's turn");
}
