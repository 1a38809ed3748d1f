//! In-flight coalescing: identical requests running at the same time share one upstream call.
//!
//! The first request for a key leads and computes the answer; the others follow. Non-streaming
//! followers wait for the leader's whole answer. Streaming followers read the leader's stream
//! through a feed: the events so far, then the live ones as they arrive, so a follower that
//! joins mid-stream still gets the full answer. A failure is shared with every follower; only a
//! leader that went away (its client disconnected) lets followers go on their own.
//!
//! The table is split over shard actors that only hold the channels: answers and events travel
//! from the leader to the followers directly, never through a shard's mailbox.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::StreamExt;
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use super::{Cache, CacheKey};
use crate::answer::{Answer, LiveStream};
use crate::completion::{CompletionAccumulator, StreamEvent};
use crate::error::{ErrorKind, GatewayError};
use crate::provider::EventStream;

/// What followers of an in-flight request receive.
pub type Shared = Result<Arc<Answer>, GatewayError>;

const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The caller's role for a key (non-streaming requests).
pub enum Join {
    /// Nobody is computing this answer: you do, then complete the [`Cache::leader`] guard.
    Lead,
    /// Someone is: wait for their answer.
    Follow(oneshot::Receiver<Shared>),
}

/// The caller's role for a key (streaming requests). Streaming and non-streaming requests
/// coalesce separately: a stream is not validated as a whole answer is.
pub enum StreamJoin {
    /// Nobody is streaming this answer: open the stream, then [`StreamLeadership::publish`] it
    /// (or [`StreamLeadership::fail`] if it cannot be opened).
    Lead(StreamLeadership),
    /// Someone is: [`StreamFollower::open`] gives their stream.
    Follow(StreamFollower),
}

/// Who answers a streamed request, known once the leader's stream has its first event.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSource {
    /// The leader's run, which calls the provider and pays.
    pub run_id: Uuid,
    /// Catalog id of the model that answers.
    pub model: String,
    pub provider: String,
    pub provider_model: String,
}

/// A followed stream: who answers, and every event of the answer from the first.
pub struct FollowedStream {
    pub source: StreamSource,
    pub live: LiveStream,
}

/// What a streaming leader publishes: its events so far, and how the stream ended.
#[derive(Default)]
struct Feed {
    source: Option<StreamSource>,
    events: Vec<StreamEvent>,
    /// `Some(Ok)`: ended well; `Some(Err)`: failed (followers get the same error).
    end: Option<Result<(), GatewayError>>,
}

fn abandoned() -> GatewayError {
    GatewayError::new(
        ErrorKind::Cancelled,
        "the identical request this one waited on was cancelled",
    )
}

#[derive(Message)]
#[rtype(result = "Join")]
struct JoinKey(CacheKey);

#[derive(Message)]
#[rtype(result = "Joined")]
struct JoinStream(CacheKey);

enum Joined {
    Lead {
        feed: watch::Sender<Feed>,
        flight: u64,
    },
    Follow(watch::Receiver<Feed>),
}

#[derive(Message)]
#[rtype(result = "()")]
struct Complete(CacheKey, Shared);

/// The stream flight `.1` of this key ended: the next request leads again.
#[derive(Message)]
#[rtype(result = "()")]
struct Land(CacheKey, u64);

/// One shard of the in-flight table.
#[derive(Default)]
pub(super) struct CacheShard {
    answers: HashMap<CacheKey, Vec<oneshot::Sender<Shared>>>,
    streams: HashMap<CacheKey, (u64, watch::Receiver<Feed>)>,
    flights: u64,
}

impl Actor for CacheShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16 * 1024);
    }
}

impl Handler<JoinKey> for CacheShard {
    type Result = MessageResult<JoinKey>;

    fn handle(&mut self, JoinKey(key): JoinKey, _: &mut Self::Context) -> Self::Result {
        match self.answers.get_mut(&key) {
            Some(waiters) => {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                MessageResult(Join::Follow(rx))
            }
            None => {
                self.answers.insert(key, Vec::new());
                MessageResult(Join::Lead)
            }
        }
    }
}

impl Handler<Complete> for CacheShard {
    type Result = ();

    fn handle(&mut self, Complete(key, result): Complete, _: &mut Self::Context) {
        for waiter in self.answers.remove(&key).unwrap_or_default() {
            let _ = waiter.send(result.clone());
        }
    }
}

impl Handler<JoinStream> for CacheShard {
    type Result = MessageResult<JoinStream>;

    fn handle(&mut self, JoinStream(key): JoinStream, _: &mut Self::Context) -> Self::Result {
        if let Some((_, feed)) = self.streams.get(&key) {
            return MessageResult(Joined::Follow(feed.clone()));
        }
        self.flights += 1;
        let (tx, rx) = watch::channel(Feed::default());
        self.streams.insert(key, (self.flights, rx));
        MessageResult(Joined::Lead {
            feed: tx,
            flight: self.flights,
        })
    }
}

impl Handler<Land> for CacheShard {
    type Result = ();

    fn handle(&mut self, Land(key, flight): Land, _: &mut Self::Context) {
        if self.streams.get(&key).is_some_and(|(f, _)| *f == flight) {
            self.streams.remove(&key);
        }
    }
}

impl Cache {
    fn shard(&self, key: &CacheKey) -> &Addr<CacheShard> {
        &self.shards[key.shard(self.shards.len())]
    }

    /// Joins the in-flight table for `key` (non-streaming requests).
    pub async fn join(&self, key: CacheKey) -> Result<Join, GatewayError> {
        self.shard(&key)
            .send(JoinKey(key))
            .timeout(SEND_TIMEOUT)
            .await
            .map_err(|e| GatewayError::internal(format!("cache actor did not answer: {e}")))
    }

    /// A guard for the leader of `key`: complete it, or dropping it tells the followers to go
    /// on their own.
    pub fn leader(&self, key: CacheKey) -> Leadership {
        Leadership {
            cache: self.clone(),
            key,
            done: false,
        }
    }

    /// Joins the in-flight table for `key` (streaming requests).
    pub async fn join_stream(&self, key: CacheKey) -> Result<StreamJoin, GatewayError> {
        let joined = self
            .shard(&key)
            .send(JoinStream(key))
            .timeout(SEND_TIMEOUT)
            .await
            .map_err(|e| GatewayError::internal(format!("cache actor did not answer: {e}")))?;
        Ok(match joined {
            Joined::Lead { feed, flight } => StreamJoin::Lead(StreamLeadership {
                cache: self.clone(),
                key,
                flight,
                feed,
                ended: false,
            }),
            Joined::Follow(feed) => StreamJoin::Follow(StreamFollower { feed }),
        })
    }
}

/// Held by the request computing a shared answer.
pub struct Leadership {
    cache: Cache,
    key: CacheKey,
    done: bool,
}

impl Leadership {
    /// Hands the result to every follower, success or failure alike.
    pub fn complete(mut self, result: Shared) {
        self.done = true;
        self.cache
            .shard(&self.key)
            .do_send(Complete(self.key, result));
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if !self.done {
            self.cache
                .shard(&self.key)
                .do_send(Complete(self.key, Err(abandoned())));
        }
    }
}

/// Held by the request streaming a shared answer. Dropped before the stream ends (the
/// leader's client went away), it ends the followers' streams with a `cancelled` error.
pub struct StreamLeadership {
    cache: Cache,
    key: CacheKey,
    flight: u64,
    feed: watch::Sender<Feed>,
    ended: bool,
}

impl StreamLeadership {
    /// The stream could not be opened: every follower gets `error`.
    pub fn fail(mut self, error: GatewayError) {
        self.end(Err(error));
    }

    /// Publishes the leader's opened stream to its followers. Returns the same stream for the
    /// leader's own client; every event it yields is fanned out as it passes. With `store`,
    /// a stream that ends well is also stored (pass it only for answers that need no
    /// validation, or that the caller has validated).
    pub fn publish(self, source: StreamSource, live: LiveStream, store: bool) -> LiveStream {
        self.feed.send_modify(|feed| {
            feed.source = Some(source.clone());
            feed.events.push(live.first.clone());
        });
        let accumulated = store.then(|| {
            let mut acc = CompletionAccumulator::default();
            acc.push(&live.first);
            acc
        });
        let tee = Tee {
            leadership: self,
            source,
            rest: live.rest,
            accumulated,
            done: false,
        };
        LiveStream {
            first: live.first,
            rest: futures::stream::unfold(tee, Tee::next).boxed(),
            model: live.model,
        }
    }

    fn end(&mut self, result: Result<(), GatewayError>) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.feed.send_modify(|feed| feed.end = Some(result));
        self.cache
            .shard(&self.key)
            .do_send(Land(self.key, self.flight));
    }
}

impl Drop for StreamLeadership {
    fn drop(&mut self) {
        self.end(Err(abandoned()));
    }
}

/// The leader's stream, fanned out as it is read.
struct Tee {
    leadership: StreamLeadership,
    source: StreamSource,
    rest: EventStream,
    accumulated: Option<CompletionAccumulator>,
    done: bool,
}

impl Tee {
    async fn next(mut self) -> Option<(Result<StreamEvent, GatewayError>, Tee)> {
        if self.done {
            return None;
        }
        match self.rest.next().await {
            Some(Ok(event)) => {
                if let Some(acc) = self.accumulated.as_mut() {
                    acc.push(&event);
                }
                self.leadership
                    .feed
                    .send_modify(|feed| feed.events.push(event.clone()));
                Some((Ok(event), self))
            }
            Some(Err(error)) => {
                self.done = true;
                self.leadership.end(Err(error.clone()));
                Some((Err(error), self))
            }
            None => {
                if let Some(acc) = self.accumulated.take() {
                    let key = self.leadership.key;
                    self.leadership
                        .cache
                        .store_streamed(key, &self.source, acc.finish());
                }
                self.leadership.end(Ok(()));
                None
            }
        }
    }
}

/// A place in a streaming leader's audience.
pub struct StreamFollower {
    feed: watch::Receiver<Feed>,
}

impl StreamFollower {
    /// Waits until the leader's stream has its first event, then follows it from the start.
    /// An error is the leader's: shared as is, or `cancelled` if the leader went away before
    /// its stream opened (then the caller goes on its own).
    pub async fn open(mut self) -> Result<FollowedStream, GatewayError> {
        loop {
            {
                let feed = self.feed.borrow_and_update();
                if let (Some(source), Some(first)) = (&feed.source, feed.events.first()) {
                    let source = source.clone();
                    let first = first.clone();
                    drop(feed);
                    let follow = Follow {
                        feed: self.feed,
                        next: 1,
                        pending: VecDeque::new(),
                        done: false,
                    };
                    let live = LiveStream {
                        first,
                        rest: futures::stream::unfold(follow, Follow::next).boxed(),
                        model: source.model.clone(),
                    };
                    return Ok(FollowedStream { source, live });
                }
                match &feed.end {
                    Some(Err(error)) => return Err(error.clone()),
                    Some(Ok(())) => return Err(abandoned()),
                    None => {}
                }
            }
            if self.feed.changed().await.is_err() {
                return Err(abandoned());
            }
        }
    }
}

/// A follower's read position in the feed.
struct Follow {
    feed: watch::Receiver<Feed>,
    /// Index of the next event to take from the feed.
    next: usize,
    /// Taken from the feed, not yet yielded.
    pending: VecDeque<StreamEvent>,
    done: bool,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<StreamEvent, GatewayError>, Follow)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.done {
                return None;
            }
            let end = {
                let feed = self.feed.borrow_and_update();
                let new = feed.events.get(self.next..).unwrap_or_default();
                self.pending.extend(new.iter().cloned());
                self.next = feed.events.len();
                feed.end.clone()
            };
            if !self.pending.is_empty() {
                continue;
            }
            match end {
                Some(Ok(())) => return None,
                Some(Err(error)) => {
                    self.done = true;
                    return Some((Err(error), self));
                }
                None => {
                    if self.feed.changed().await.is_err() {
                        self.done = true;
                        return Some((Err(abandoned()), self));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::completion::{FinishReason, Usage};

    fn text(t: &str) -> StreamEvent {
        StreamEvent::Content {
            index: 0,
            text: t.into(),
        }
    }

    fn source() -> StreamSource {
        StreamSource {
            run_id: Uuid::now_v7(),
            model: "m".into(),
            provider: "p".into(),
            provider_model: "pm".into(),
        }
    }

    async fn drain(live: LiveStream) -> (Vec<StreamEvent>, Option<GatewayError>) {
        let mut events = vec![live.first];
        let mut rest = live.rest;
        while let Some(item) = rest.next().await {
            match item {
                Ok(event) => events.push(event),
                Err(e) => return (events, Some(e)),
            }
        }
        (events, None)
    }

    #[actix_rt::test]
    async fn second_joiner_follows_and_gets_the_leaders_answer() {
        let cache = Cache::start(2);
        let key = CacheKey([7; 32]);
        assert!(matches!(cache.join(key).await.unwrap(), Join::Lead));
        let Join::Follow(rx) = cache.join(key).await.unwrap() else {
            panic!("expected to follow")
        };
        drop(cache.leader(key));
        let got = rx.await.unwrap();
        assert_eq!(got.unwrap_err().kind, ErrorKind::Cancelled);
        // The key is free again.
        assert!(matches!(cache.join(key).await.unwrap(), Join::Lead));
    }

    #[actix_rt::test]
    async fn stream_followers_get_every_event_whenever_they_join() {
        let cache = Cache::start(2);
        let key = CacheKey([9; 32]);
        let StreamJoin::Lead(leadership) = cache.join_stream(key).await.unwrap() else {
            panic!("expected to lead")
        };
        // A follower that joins before the stream opens.
        let StreamJoin::Follow(early) = cache.join_stream(key).await.unwrap() else {
            panic!("expected to follow")
        };
        let early = actix_rt::spawn(async move { drain(early.open().await.unwrap().live).await });

        let (tx, rx) = futures::channel::mpsc::unbounded();
        let src = source();
        let mut leader = leadership.publish(
            src.clone(),
            LiveStream {
                first: text("a"),
                rest: rx.map(Ok).boxed(),
                model: "m".into(),
            },
            false,
        );
        let mut seen = vec![leader.first.clone()];
        tx.unbounded_send(text("b")).unwrap();
        seen.push(leader.rest.next().await.unwrap().unwrap());

        // A follower that joins mid-stream gets the events so far, then the live ones.
        let StreamJoin::Follow(late) = cache.join_stream(key).await.unwrap() else {
            panic!("expected to follow")
        };
        let followed = late.open().await.unwrap();
        assert_eq!(followed.source, src);
        let late = actix_rt::spawn(drain(followed.live));

        let tail = [
            text("c"),
            StreamEvent::Finish {
                index: 0,
                reason: FinishReason::Stop,
            },
            StreamEvent::Usage(Usage {
                prompt_tokens: 1,
                completion_tokens: 3,
                ..Usage::default()
            }),
        ];
        for event in &tail {
            tx.unbounded_send(event.clone()).unwrap();
        }
        drop(tx);
        while let Some(event) = leader.rest.next().await {
            seen.push(event.unwrap());
        }
        let mut expected = vec![text("a"), text("b")];
        expected.extend(tail);
        assert_eq!(seen, expected);
        for follower in [early.await.unwrap(), late.await.unwrap()] {
            assert_eq!(follower.0, expected);
            assert!(follower.1.is_none());
        }

        // The flight has landed: the next request leads.
        cache.settle_shard(key).await;
        assert!(matches!(
            cache.join_stream(key).await.unwrap(),
            StreamJoin::Lead(_)
        ));
    }

    #[actix_rt::test]
    async fn a_stream_failure_is_shared_and_a_vanished_leader_cancels() {
        let cache = Cache::start(1);
        let key = CacheKey([3; 32]);
        let StreamJoin::Lead(leadership) = cache.join_stream(key).await.unwrap() else {
            panic!("expected to lead")
        };
        let StreamJoin::Follow(follower) = cache.join_stream(key).await.unwrap() else {
            panic!("expected to follow")
        };
        leadership.fail(GatewayError::new(ErrorKind::RateLimited, "slow down"));
        let error = follower.open().await.err().unwrap();
        assert_eq!(error.kind, ErrorKind::RateLimited);

        // A leader whose client leaves mid-stream ends its followers' streams with an error.
        cache.settle_shard(key).await;
        let StreamJoin::Lead(leadership) = cache.join_stream(key).await.unwrap() else {
            panic!("expected to lead")
        };
        let StreamJoin::Follow(follower) = cache.join_stream(key).await.unwrap() else {
            panic!("expected to follow")
        };
        let (_tx, rx) = futures::channel::mpsc::unbounded::<StreamEvent>();
        let leader = leadership.publish(
            source(),
            LiveStream {
                first: text("a"),
                rest: rx.map(Ok).boxed(),
                model: "m".into(),
            },
            false,
        );
        let followed = follower.open().await.unwrap();
        drop(leader);
        let (events, error) = drain(followed.live).await;
        assert_eq!(events, vec![text("a")]);
        assert_eq!(error.unwrap().kind, ErrorKind::Cancelled);
    }

    impl Cache {
        /// Waits until the shard of `key` has handled everything sent to it so far.
        async fn settle_shard(&self, key: CacheKey) {
            let mut other = key.0;
            other[31] ^= 0xff;
            let other = CacheKey(other);
            if let Join::Lead = self.join(other).await.unwrap() {
                self.leader(other).complete(Err(abandoned()));
            }
        }
    }
}
