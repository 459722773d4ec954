//! Awaiting the answer to a request sent on a dora edge, by `reply_to`.
//!
//! A node whose work is a sequence of requests (ask the store, then the model, then a person)
//! writes it as one async function: [`Calls::call`] sends the request and gives a [`Waiter`];
//! the handler hands every answer-bearing input to [`Calls::answer`], which wakes the waiter
//! whose request the answer names. An `error` envelope answering a request is an answer too:
//! the caller tells the two apart by its kind.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::envelope::Envelope;
use crate::node::Ctx;

/// Why no answer came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("no answer to {id} within {} ms", .after.as_millis())]
    Timeout { id: String, after: Duration },
    /// Every waiter is dropped with the node: nothing will answer any more.
    #[error("no answer to {id}: the node is stopping")]
    Closed { id: String },
}

/// The requests a node is waiting on, by request id.
#[derive(Default)]
pub struct Calls {
    pending: Mutex<HashMap<String, oneshot::Sender<Envelope>>>,
}

impl Calls {
    pub fn new() -> Self {
        Calls::default()
    }

    /// Sends `request` on `output` and returns the waiter for its answer (registered before the
    /// send, so an answer cannot overtake it).
    pub fn call(&self, ctx: &Ctx, output: &str, request: Envelope) -> Waiter {
        let waiter = self.expect(&request.id);
        ctx.send_one(output, request);
        waiter
    }

    /// A waiter for the answer to `id`, for a request sent some other way (or before a
    /// restart). A second waiter for the same id replaces the first.
    pub fn expect(&self, id: &str) -> Waiter {
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("calls lock")
            .insert(id.to_owned(), tx);
        Waiter {
            id: id.to_owned(),
            rx,
        }
    }

    /// Hands `msg` to whoever waits for the request it answers. Gives it back when nobody does
    /// (no `reply_to`, an unknown request, or one already answered or given up on).
    pub fn answer(&self, msg: Envelope) -> Option<Envelope> {
        let Some(id) = msg.reply_to.as_deref() else {
            return Some(msg);
        };
        let waiting = self.pending.lock().expect("calls lock").remove(id);
        match waiting {
            Some(tx) => tx.send(msg).err(),
            None => Some(msg),
        }
    }

    /// How many requests still wait for an answer.
    pub fn pending(&self) -> usize {
        let mut pending = self.pending.lock().expect("calls lock");
        pending.retain(|_, tx| !tx.is_closed());
        pending.len()
    }
}

/// The answer to one request, to come.
#[must_use = "a waiter does nothing unless awaited"]
pub struct Waiter {
    id: String,
    rx: oneshot::Receiver<Envelope>,
}

impl Waiter {
    /// The id of the request this waits on.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the answer (an `error` envelope included) for at most `timeout`.
    pub async fn wait(self, timeout: Duration) -> Result<Envelope, CallError> {
        match tokio::time::timeout(timeout, self.rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(CallError::Closed { id: self.id }),
            Err(_) => Err(CallError::Timeout {
                id: self.id,
                after: timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Kind, Role};

    fn request() -> Envelope {
        Envelope::task("me", "question")
    }

    #[tokio::test]
    async fn an_answer_wakes_the_waiter_of_the_request_it_names() {
        let calls = Calls::new();
        let (a, b) = (request(), request());
        let wa = calls.expect(&a.id);
        let wb = calls.expect(&b.id);
        assert_eq!(calls.pending(), 2);
        let to_b = b.reply(Kind::Result, "them", Role::Assistant, "for b");
        assert!(calls.answer(to_b).is_none());
        let got = wb.wait(Duration::from_secs(1)).await.unwrap();
        assert_eq!(got.content, "for b");
        let to_a = a.error_reply("them", "broke", serde_json::json!({}));
        assert!(calls.answer(to_a).is_none());
        assert_eq!(
            wa.wait(Duration::from_secs(1)).await.unwrap().kind,
            Kind::Error
        );
        assert_eq!(calls.pending(), 0);
    }

    #[tokio::test]
    async fn an_answer_nobody_waits_for_is_given_back() {
        let calls = Calls::new();
        let a = request();
        let stray = a.reply(Kind::Result, "them", Role::Assistant, "late");
        assert_eq!(calls.answer(stray.clone()), Some(stray.clone()));
        let no_reply_to = Envelope::task("them", "hello");
        assert_eq!(calls.answer(no_reply_to.clone()), Some(no_reply_to));
        // Answered once: a second answer to the same request is not taken.
        let w = calls.expect(&a.id);
        assert!(calls.answer(stray.clone()).is_none());
        assert_eq!(calls.answer(stray.clone()), Some(stray));
        w.wait(Duration::from_secs(1)).await.unwrap();
    }

    #[tokio::test]
    async fn a_waiter_times_out_and_a_late_answer_is_given_back() {
        let calls = Calls::new();
        let a = request();
        let w = calls.expect(&a.id);
        let err = w.wait(Duration::from_millis(20)).await.unwrap_err();
        assert_eq!(
            err,
            CallError::Timeout {
                id: a.id.clone(),
                after: Duration::from_millis(20)
            }
        );
        let late = a.reply(Kind::Result, "them", Role::Assistant, "late");
        assert_eq!(calls.answer(late.clone()), Some(late));
    }

    #[tokio::test]
    async fn dropping_the_calls_ends_every_wait() {
        let calls = Calls::new();
        let a = request();
        let w = calls.expect(&a.id);
        drop(calls);
        assert_eq!(
            w.wait(Duration::from_secs(5)).await.unwrap_err(),
            CallError::Closed { id: a.id }
        );
    }
}
