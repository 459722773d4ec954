//! The terminal front end: one question at a time, in the order they came; the answer is a
//! line. A line that is not one of the choices says why and asks again; an empty line takes
//! the default. A question answered meanwhile (by its timeout) is reported when the next line
//! comes and the next question is asked.

use std::io::{self, BufRead, BufReader, IsTerminal, Write};
use std::sync::mpsc;

use crate::{Core, Outcome, Question, match_answer};

/// The prompt loop's result for one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompted {
    /// The person's answer, as the question takes it.
    Answer(String),
    /// The question was answered meanwhile (its default at the timeout, or the node stopping).
    Closed,
    /// The input has ended: nobody is there to answer.
    Eof,
}

/// Stdin and stderr when stdin is a terminal; otherwise the process's terminal (`/dev/tty`),
/// when it has one, since dora starts nodes with stdin on /dev/null; else stdin and stderr.
pub(crate) fn open() -> (Box<dyn BufRead + Send>, Box<dyn Write + Send>) {
    if !io::stdin().is_terminal()
        && let Ok(tty) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
        && let Ok(out) = tty.try_clone()
    {
        return (Box::new(BufReader::new(tty)), Box::new(out));
    }
    (
        Box::new(BufReader::new(io::stdin())),
        Box::new(io::stderr()),
    )
}

/// Writes the question, with its context, choices and default.
pub fn show(q: &Question, out: &mut impl Write) -> io::Result<()> {
    writeln!(out)?;
    writeln!(out, "[mofa-human] question ({}): {}", q.session, q.question)?;
    if let Some(c) = &q.context {
        for line in c.lines() {
            writeln!(out, "  | {line}")?;
        }
    }
    let left_s = ((q.deadline_ms - mofa_kernel::envelope::now_ms()).max(0) + 999) / 1000;
    let choices = if q.choices.is_empty() {
        "any text".to_owned()
    } else {
        q.choices.join(" / ")
    };
    match &q.default {
        Some(d) => writeln!(
            out,
            "  answer: {choices}  (empty line: {d}; {d} in {left_s} s without an answer)"
        )?,
        None => writeln!(out, "  answer: {choices}  ({left_s} s to answer)")?,
    }
    out.flush()
}

/// Asks `q` on `out` and reads lines from `input` until one answers it; `still_open` says
/// whether the question is still waiting (checked after each line).
pub fn ask(
    q: &Question,
    input: &mut impl BufRead,
    out: &mut impl Write,
    still_open: impl Fn() -> bool,
) -> io::Result<Prompted> {
    show(q, out)?;
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            writeln!(out)?;
            return Ok(Prompted::Eof);
        }
        if !still_open() {
            writeln!(
                out,
                "(too late: that question has been answered by its default or closed)"
            )?;
            return Ok(Prompted::Closed);
        }
        let line = line.trim();
        let given = match (&q.default, line.is_empty()) {
            (Some(d), true) => d.as_str(),
            _ => line,
        };
        match match_answer(&q.choices, given) {
            Ok(answer) => return Ok(Prompted::Answer(answer)),
            Err(why) => writeln!(out, "{why}; please answer again")?,
        }
    }
}

/// The terminal thread: asks each question sent on `ids` in turn until the input ends.
pub(crate) fn serve(
    core: &Core,
    ids: mpsc::Receiver<String>,
    mut input: Box<dyn BufRead + Send>,
    mut out: Box<dyn Write + Send>,
) {
    for id in ids {
        let Some(q) = core.question(&id) else {
            continue;
        };
        match ask(&q, &mut input, &mut out, || core.is_pending(&id)) {
            Ok(Prompted::Answer(a)) => {
                let said = match core.answer(&id, &a) {
                    Outcome::Answered(a) => format!("answered: {a}"),
                    Outcome::Refused { reason, .. } => format!("not taken: {reason}"),
                    Outcome::AlreadyAnswered | Outcome::Unknown => {
                        "too late: that question has been answered meanwhile".into()
                    }
                };
                let _ = writeln!(out, "{said}");
            }
            Ok(Prompted::Closed) => {}
            Ok(Prompted::Eof) => {
                tracing::warn!(
                    "the terminal's input has ended: questions will take their defaults at their timeouts"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(
                    "the terminal failed ({e}): questions will take their defaults at their timeouts"
                );
                return;
            }
        }
    }
}
