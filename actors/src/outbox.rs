//! Hand-over of messages to an actor on another thread, in batches.
//!
//! Sending each message through the actor's mailbox wakes the actor's thread once per request
//! when it sleeps: a system call on the sender's side, a context switch on the receiver's. On a
//! busy gateway that cost more than the work the messages carry. An outbox queues the messages
//! instead and tells the actor only when the queue goes from empty to non-empty; the actor takes
//! the whole batch a moment later ([`BATCH_WINDOW`]), so it wakes a few hundred times a second
//! whatever the request rate, and never when there is nothing to do.
//!
//! Order is kept: the actor sees the messages in the order they were pushed.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actix::{Actor, AsyncContext, Context, Message};

/// How long an actor told of a new batch waits before taking it, to let more gather.
pub const BATCH_WINDOW: Duration = Duration::from_millis(2);

/// Tells an actor that its outbox has messages. `now`: take them at once rather than after
/// [`BATCH_WINDOW`] (a message that should act without delay, such as a failure for a circuit
/// breaker).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Pending {
    pub now: bool,
}

/// An actor that takes its outbox in batches.
pub trait Drains: Actor<Context = Context<Self>> {
    /// Takes and applies everything queued, oldest first.
    fn drain(&mut self, ctx: &mut Context<Self>);
    /// The actor's flag: a drain is scheduled.
    fn drain_scheduled(&mut self) -> &mut bool;
    /// Whether its outbox holds messages.
    fn has_queued(&self) -> bool;
    /// How long it lets a batch gather after the first message ([`BATCH_WINDOW`] unless the
    /// actor's messages can wait longer).
    fn batch_window(&self) -> Duration {
        BATCH_WINDOW
    }
}

/// For the actor's `started`: after a restart, which drops the timers of the previous run of
/// the actor, nothing is scheduled; what was queued meanwhile is taken at once.
pub fn on_started<A: Drains>(actor: &mut A, ctx: &mut Context<A>) {
    *actor.drain_scheduled() = false;
    if actor.has_queued() {
        actor.drain(ctx);
    }
}

/// What an actor does when told of [`Pending`] messages: drains at once when asked to, else
/// once, its [`Drains::batch_window`] later, for everything that arrives meanwhile.
pub fn on_pending<A: Drains>(actor: &mut A, pending: Pending, ctx: &mut Context<A>) {
    if pending.now {
        actor.drain(ctx);
    } else if !*actor.drain_scheduled() {
        *actor.drain_scheduled() = true;
        ctx.run_later(actor.batch_window(), |actor, ctx| {
            *actor.drain_scheduled() = false;
            actor.drain(ctx);
        });
    }
}

/// A queue of messages for one actor.
pub struct Outbox<T> {
    queue: Mutex<Vec<T>>,
    /// Messages kept at most; beyond it a push is refused (`None` for no bound).
    bound: Option<usize>,
    /// A batch worth taking at once, before its window ends (`None`: the window decides).
    full_batch: Option<usize>,
}

/// What [`Outbox::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The queue was empty: tell the actor (send it [`Pending`]).
    First,
    /// The actor has been told already.
    Queued,
    /// The queue now holds a full batch ([`Outbox::with_full_batch`]): tell the actor to take
    /// it now (send it [`Pending`] with `now`).
    FullBatch,
    /// The queue is full; the message was dropped.
    Full,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Outbox::new()
    }
}

impl<T> Outbox<T> {
    /// An unbounded outbox, for messages that must never be lost.
    pub fn new() -> Self {
        Outbox {
            queue: Mutex::new(Vec::new()),
            bound: None,
            full_batch: None,
        }
    }

    /// Says when `size` messages are queued ([`Pushed::FullBatch`]), so that a busy actor takes
    /// batches of about that size rather than all that gathers in its window.
    pub fn with_full_batch(mut self, size: usize) -> Self {
        self.full_batch = Some(size.max(2));
        self
    }

    /// An outbox that drops messages beyond `bound` (samples, when the actor cannot keep up).
    pub fn bounded(bound: usize) -> Self {
        Outbox {
            queue: Mutex::new(Vec::new()),
            bound: Some(bound),
            full_batch: None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        // A panic while holding the lock leaves a valid Vec: keep using it.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn push(&self, item: T) -> Pushed {
        let mut queue = self.lock();
        if self.bound.is_some_and(|bound| queue.len() >= bound) {
            return Pushed::Full;
        }
        queue.push(item);
        match queue.len() {
            1 => Pushed::First,
            n if Some(n) == self.full_batch => Pushed::FullBatch,
            _ => Pushed::Queued,
        }
    }

    /// Everything queued, oldest first; the queue is left empty.
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.lock())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_only_on_the_first_message_of_a_batch_and_keeps_order() {
        let outbox = Outbox::new();
        assert_eq!(outbox.push(1), Pushed::First);
        assert_eq!(outbox.push(2), Pushed::Queued);
        assert_eq!(outbox.push(3), Pushed::Queued);
        assert_eq!(outbox.take(), vec![1, 2, 3]);
        assert!(outbox.is_empty());
        // After a take, the next message starts a new batch.
        assert_eq!(outbox.push(4), Pushed::First);
        assert_eq!(outbox.len(), 1);
    }

    #[test]
    fn a_full_batch_is_told_once() {
        let outbox = Outbox::new().with_full_batch(3);
        assert_eq!(outbox.push(1), Pushed::First);
        assert_eq!(outbox.push(2), Pushed::Queued);
        assert_eq!(outbox.push(3), Pushed::FullBatch);
        // Not taken yet: nothing more to say until the next batch.
        assert_eq!(outbox.push(4), Pushed::Queued);
        assert_eq!(outbox.take().len(), 4);
        assert_eq!(outbox.push(5), Pushed::First);
        assert_eq!(outbox.push(6), Pushed::Queued);
        assert_eq!(outbox.push(7), Pushed::FullBatch);
    }

    #[test]
    fn a_bounded_outbox_drops_what_does_not_fit() {
        let outbox = Outbox::bounded(2);
        assert_eq!(outbox.push('a'), Pushed::First);
        assert_eq!(outbox.push('b'), Pushed::Queued);
        assert_eq!(outbox.push('c'), Pushed::Full);
        assert_eq!(outbox.take(), vec!['a', 'b']);
        assert_eq!(outbox.push('d'), Pushed::First);
    }
}
