//! Intake: a fetched Kafka record becomes a record in one of its route's lanes.
//!
//! The source hands each fetched record here with its partition's progress and its route. The
//! intake applies the route's record policies (tombstones, headers, oversized records, partition
//! keys), encodes the record in the route's format, and holds it until the end of the poll round,
//! when offsets are registered in fetch order and each lane gets its share in one go.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;
use tracing::info;

use super::decoded::{Outcome, RouteDecoding, SideOut};
use super::offsets::PartitionProgress;
use super::partition_key::{PartitionKeys, Spread};
use super::settings::{Delimiter, HeadersPolicy, RecordFormat, TombstonePolicy};
use super::waiting::{OwnedRecord, Waiting};
use super::{Budget, Fallback, Fetched, Halt, Record, Share, Usage, envelope, lane_of};
use crate::telemetry::metrics::Metrics;

/// What a route does with each record before its lanes take it.
pub struct RouteIntake {
    pub name: Arc<str>,
    pub keys: PartitionKeys,
    /// Set by `partition_key.explicit_hash_key: spread`.
    pub spread: Option<Spread>,
    pub format: RecordFormat,
    pub delimiter: Delimiter,
    /// The destination's record limit.
    pub max_record_bytes: usize,
    /// Kinesis counts the partition key against the record limit; Firehose sends no key.
    pub key_counts: bool,
    /// What the limit is and how to raise it, for the oversized record's reason and fix.
    pub record_limit: (&'static str, &'static str),
    pub on_tombstone: TombstonePolicy,
    pub on_headers: HeadersPolicy,
    pub lanes: Vec<UnboundedSender<Vec<Record>>>,
    /// The route's part of the in-flight bound.
    pub share: Arc<Share>,
    /// Set once a record's headers were left out (logged the first time only).
    pub headers_noted: AtomicBool,
    /// `decode:`: schema-registry values and keys sent as JSON.
    pub decoding: Option<RouteDecoding>,
}

/// A withheld record on its way to the dead-letter topic, with what the writer needs.
pub struct DeadLetterRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub reason: String,
}

/// Writes withheld records to the dead-letter topic. It acknowledges `progress` at the record's
/// offset once the write is confirmed (or halts the pipeline), and releases `size` from the
/// budget either way.
pub trait DeadLetterWriter: Send + Sync {
    fn send(&self, record: DeadLetterRecord, progress: Arc<PartitionProgress>, size: usize);
}

/// Under `records.on_headers: ignore`, one record in this many is looked at for the note.
const HEADER_SAMPLE: i64 = 64;

/// A record a policy withholds from the destination, and why.
struct Withheld {
    action: Fallback,
    /// What is wrong and where: topic, partition, offset (never key or value bytes).
    reason: String,
    /// The config key of the policy.
    setting: &'static str,
    /// How to let it through instead.
    fix: &'static str,
}

pub struct Intake {
    pub routes: Vec<RouteIntake>,
    /// The whole in-flight bound (every route's share counts here too).
    pub budget: Arc<Budget>,
    pub halt: Arc<Halt>,
    pub metrics: Arc<Metrics>,
    pub dead_letters: Option<Box<dyn DeadLetterWriter>>,
    pub on_oversized: Fallback,
    held: Vec<Held>,
    /// Per route: records and bytes held, not yet handed over (not yet in its share).
    held_counts: Vec<(u64, u64)>,
    /// Per route: its share's room when the round started (read once: the lanes update the
    /// share's counters all the time, and reading them per record costs).
    rooms: Vec<Usage>,
    /// What the records taken this round weigh against the budget (handed over or not).
    round_bytes: u64,
    /// A route's share is full with what it holds: the round ends, so a route whose destination
    /// is stuck cannot take more than its share in one round.
    share_reached: bool,
    /// Partitions whose records wait for a schema (few, and only with `decode:`).
    waiting: Vec<Waiting>,
}

/// A record ready for its lane, one that waits for its schema, or one delivered before.
enum Prepared {
    Send(String, Bytes),
    Wait,
    /// The partition's last commit says it was delivered already (see [`Intake::skip_delivered`]).
    Delivered,
}

struct Held {
    route: usize,
    lane: usize,
    record: Record,
    /// The Kafka timestamp, registered with the offset (for the freshness metrics).
    timestamp_ms: Option<i64>,
    /// Delivered before (by the partition's last owner): registered and acknowledged, not sent.
    delivered: bool,
}

impl Intake {
    pub fn new(
        routes: Vec<RouteIntake>,
        budget: Arc<Budget>,
        halt: Arc<Halt>,
        metrics: Arc<Metrics>,
        dead_letters: Option<Box<dyn DeadLetterWriter>>,
        on_oversized: Fallback,
    ) -> Self {
        Self {
            held_counts: vec![(0, 0); routes.len()],
            rooms: vec![Usage::default(); routes.len()],
            routes,
            budget,
            halt,
            metrics,
            dead_letters,
            on_oversized,
            held: Vec::new(),
            round_bytes: 0,
            share_reached: false,
            waiting: Vec::new(),
        }
    }

    /// Starts a poll round: [`Self::round_bytes`] counts from zero.
    pub fn start_round(&mut self) {
        self.round_bytes = 0;
        self.share_reached = false;
        // Handed over at the end of every round; parked records are in the shares by now.
        self.held_counts.fill((0, 0));
        for (room, r) in self.rooms.iter_mut().zip(&self.routes) {
            *room = r.share.room();
        }
    }

    pub fn round_bytes(&self) -> u64 {
        self.round_bytes
    }

    /// A route's share filled up during this round: end it (the route pauses next round).
    pub fn share_reached(&self) -> bool {
        self.share_reached
    }

    /// Takes one fetched record of `route` (its partition's `progress`). False when doka must
    /// stop.
    pub fn take(
        &mut self,
        msg: &impl Fetched,
        progress: Arc<PartitionProgress>,
        route: usize,
    ) -> bool {
        if !self.waiting.is_empty()
            && let Some(at) = self
                .waiting
                .iter()
                .position(|w| Arc::ptr_eq(&w.progress, &progress))
        {
            // Behind a record that waits for its schema: it waits too, in order.
            self.park(at, OwnedRecord::of(msg, progress.topic.clone()));
            return true;
        }
        if progress.was_delivered(msg.offset()) {
            self.skip_delivered(msg, progress, route);
            return true;
        }
        let prepared = self.prepare(msg, route);
        if let Ok(Prepared::Wait) = prepared {
            self.waiting.push(Waiting {
                route,
                progress: progress.clone(),
                records: Default::default(),
            });
            self.park(
                self.waiting.len() - 1,
                OwnedRecord::of(msg, progress.topic.clone()),
            );
            return true;
        }
        self.accept(msg, prepared, progress, route)
    }

    /// Holds a prepared record for its lane, or carries out its fallback. False when doka must
    /// stop.
    fn accept(
        &mut self,
        msg: &impl Fetched,
        prepared: Result<Prepared, Withheld>,
        progress: Arc<PartitionProgress>,
        route: usize,
    ) -> bool {
        match prepared {
            Ok(Prepared::Send(partition_key, data)) => {
                let r = &self.routes[route];
                let lane = lane_of(&partition_key, r.lanes.len());
                let record = Record {
                    partition_key,
                    explicit_hash_key: r.spread.as_ref().map(|s| s.next_hash_key()),
                    data,
                    progress,
                    offset: msg.offset(),
                };
                let size = record.size() as u64;
                self.round_bytes += size;
                let held = &mut self.held_counts[route];
                held.0 += 1;
                held.1 += size;
                let room = self.rooms[route];
                if held.0 >= room.records || held.1 >= room.bytes {
                    self.share_reached = true;
                }
                self.held.push(Held {
                    route,
                    lane,
                    record,
                    timestamp_ms: msg.timestamp().millis(),
                    delivered: false,
                });
                true
            }
            Ok(Prepared::Wait) => unreachable!("a waiting record is parked, not accepted"),
            Ok(Prepared::Delivered) => {
                self.skip_delivered(msg, progress, route);
                true
            }
            Err(withheld) => {
                // Offsets are registered in fetch order: the held records first.
                self.hand_over();
                self.fall_back(msg, withheld, progress)
            }
        }
    }

    /// Adds a record to a waiting partition's queue, counted in its route's share and in the
    /// round (a round of parked records ends at the share, as one of records for the lanes does).
    fn park(&mut self, at: usize, record: OwnedRecord) {
        let waiting = &mut self.waiting[at];
        let route = waiting.route;
        let r = &self.routes[route];
        let size = record.size();
        r.share.take(1, size);
        if let Some(decoding) = &r.decoding {
            decoding.waiting.inc();
        }
        waiting.records.push_back(record);
        self.round_bytes += size;
        let held = &mut self.held_counts[route];
        held.0 += 1;
        held.1 += size;
        let room = self.rooms[route];
        if held.0 >= room.records || held.1 >= room.bytes || r.share.full() {
            self.share_reached = true;
        }
    }

    /// Takes the waiting records whose schemas are known now, in order; drops those of revoked
    /// partitions (their new owner reads them from the committed offset, which never passed
    /// them). Call at the start of a round. False when doka must stop.
    pub fn retry_waiting(&mut self) -> bool {
        let mut at = 0;
        while at < self.waiting.len() {
            if self.waiting[at].progress.is_revoked() {
                let waiting = self.waiting.remove(at);
                self.release_waiting(&waiting);
                continue;
            }
            loop {
                let Some(record) = self.waiting[at].records.pop_front() else {
                    self.waiting.remove(at);
                    break;
                };
                let (route, progress) = (self.waiting[at].route, self.waiting[at].progress.clone());
                let prepared = if progress.was_delivered(record.offset()) {
                    Ok(Prepared::Delivered)
                } else {
                    self.prepare(&record, route)
                };
                if let Ok(Prepared::Wait) = prepared {
                    self.waiting[at].records.push_front(record);
                    at += 1;
                    break;
                }
                let r = &self.routes[route];
                r.share.release(1, record.size());
                if let Some(decoding) = &r.decoding {
                    decoding.waiting.dec();
                }
                if !self.accept(&record, prepared, progress, route) {
                    return false;
                }
            }
        }
        true
    }

    /// Lets go of every waiting record (shutdown): they stay uncommitted and are read again.
    pub fn forget_waiting(&mut self) {
        for waiting in std::mem::take(&mut self.waiting) {
            self.release_waiting(&waiting);
        }
    }

    fn release_waiting(&self, waiting: &Waiting) {
        let r = &self.routes[waiting.route];
        let bytes = waiting.records.iter().map(OwnedRecord::size).sum();
        r.share.release(waiting.records.len() as u64, bytes);
        if let Some(decoding) = &r.decoding {
            decoding.waiting.sub(waiting.records.len() as i64);
        }
    }

    /// The partition key and encoded data of a record that may be sent, that it waits for its
    /// schema, or why it may not be sent.
    fn prepare(&self, msg: &impl Fetched, route: usize) -> Result<Prepared, Withheld> {
        let r = &self.routes[route];
        let at = || {
            format!(
                "record {}[{}] offset {}",
                msg.topic(),
                msg.partition(),
                msg.offset()
            )
        };
        let value = msg.value();
        if value.is_none_or(<[u8]>::is_empty)
            && let Some(action) = r.on_tombstone.fallback()
        {
            return Err(Withheld {
                action,
                reason: format!("{} is a tombstone (no value)", at()),
                setting: "records.on_tombstone",
                fix: "Set records.on_tombstone to send_empty (an empty record) or skip",
            });
        }
        if r.format == RecordFormat::Raw {
            self.check_headers(msg, r, &at)?;
        }
        let (key_out, value_out) = match r.decoding.as_ref().map(|d| d.decode(msg)) {
            None => (SideOut::Plain, SideOut::Plain),
            Some(Outcome::Ready { key, value }) => (key, value),
            Some(Outcome::Wait) => return Ok(Prepared::Wait),
            Some(Outcome::Withhold {
                action,
                reason,
                setting,
            }) => {
                return Err(Withheld {
                    action,
                    reason: format!("{} (route `{}`): {reason}", at(), r.name),
                    setting,
                    fix: "Set it to pass_through to send such records as their bytes, or fix \
                          the producer or the registry",
                });
            }
        };
        let value = value_out.bytes(value);
        // The key rules read the Kafka key's bytes (a decoded key keeps its records' order by
        // them) and, for `field`, the value as sent (decoded JSON included).
        let partition_key = r
            .keys
            .key_for(msg.key(), value, msg.topic(), msg.partition())
            .map_err(|withheld| Withheld {
                action: withheld.action,
                reason: format!("{} has {}", at(), withheld.problem),
                setting: withheld.setting,
                fix: "Set the policy to hash (the key's MD5 becomes the partition key)",
            })?;
        let data = encode(msg, r.format, r.delimiter, &key_out, &value_out);
        let size = data.len() + if r.key_counts { partition_key.len() } else { 0 };
        if size > r.max_record_bytes {
            let (limit, fix) = r.record_limit;
            return Err(Withheld {
                action: self.on_oversized,
                reason: format!(
                    "{} is {size} bytes (route `{}`, {limit} of {} bytes",
                    at(),
                    r.name,
                    r.max_record_bytes
                ),
                setting: "dead_letter.on_oversized",
                fix,
            });
        }
        Ok(Prepared::Send(partition_key, data))
    }

    /// `records.on_headers` for a raw record (an envelope carries the headers).
    fn check_headers(
        &self,
        msg: &impl Fetched,
        r: &RouteIntake,
        at: &impl Fn() -> String,
    ) -> Result<(), Withheld> {
        // librdkafka parses (and allocates for) headers on each call. Under `ignore` they only
        // feed a one-time note, so a sample of records is enough for it.
        let look = r.on_headers.fallback().is_some()
            || (msg.offset() % HEADER_SAMPLE == 0
                && !r.headers_noted.load(AtomicOrdering::Relaxed));
        if !look || msg.headers().is_empty() {
            return Ok(());
        }
        match r.on_headers.fallback() {
            Some(action) => Err(Withheld {
                action,
                reason: format!("{} has headers, which a raw record cannot carry", at()),
                setting: "records.on_headers",
                fix: "Set records.on_headers to ignore to send key and value without them, or \
                      records.format to envelope to carry them",
            }),
            None => {
                if !r.headers_noted.swap(true, AtomicOrdering::Relaxed) {
                    info!(
                        route = %r.name,
                        "{} has headers: they are not sent, a raw record has none \
                         (records.on_headers is ignore, records.format raw; said once)",
                        at()
                    );
                }
                Ok(())
            }
        }
    }

    /// A record the partition's last commit says was delivered (or dead-lettered) already, by a
    /// member that crashed before its commit point passed it: registered and acknowledged at
    /// once, not sent again.
    ///
    /// Held like a record for a lane (offsets are registered in fetch order, with the held
    /// records) and acknowledged when handed over; it takes no room in the route's share.
    fn skip_delivered(
        &mut self,
        msg: &impl Fetched,
        progress: Arc<PartitionProgress>,
        route: usize,
    ) {
        self.held.push(Held {
            route,
            lane: 0,
            record: Record {
                partition_key: String::new(),
                explicit_hash_key: None,
                data: Bytes::new(),
                progress,
                offset: msg.offset(),
            },
            timestamp_ms: msg.timestamp().millis(),
            delivered: true,
        });
    }

    /// Carries out the fallback of a withheld record. False when doka must stop.
    fn fall_back(
        &mut self,
        msg: &impl Fetched,
        withheld: Withheld,
        progress: Arc<PartitionProgress>,
    ) -> bool {
        let Withheld {
            action,
            reason,
            setting,
            fix,
        } = withheld;
        if action == Fallback::Stop {
            self.halt.halt(format!(
                "{reason}. {setting} is stop: doka stops rather than drop it and commits nothing \
                 from this offset on. {fix}"
            ));
            return false;
        }
        let offset = msg.offset();
        if !progress.register_at(offset, msg.timestamp().millis()) {
            self.metrics.refetched.inc();
            return true;
        }
        self.metrics.consumed(msg.topic()).inc();
        match (action, &self.dead_letters) {
            (Fallback::DeadLetter, Some(dead_letters)) => {
                let value = msg.value().unwrap_or_default().to_vec();
                let key = msg.key().map(<[u8]>::to_vec);
                let size = value.len() + key.as_ref().map_or(0, Vec::len);
                self.budget.take(1, size as u64);
                let headers = msg
                    .headers()
                    .into_iter()
                    .map(|h| (h.key.into_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect();
                dead_letters.send(
                    DeadLetterRecord {
                        topic: msg.topic().to_owned(),
                        partition: msg.partition(),
                        offset,
                        key,
                        value,
                        headers,
                        reason,
                    },
                    progress,
                    size,
                );
            }
            (Fallback::DeadLetter, None) => {
                // Config validation requires dead_letter.topic for every dead_letter policy.
                self.halt.halt(format!(
                    "{reason}. {setting} is dead_letter but no dead-letter topic is set"
                ));
                return false;
            }
            (Fallback::Stop, _) => unreachable!("a stop returned above"),
            (Fallback::Skip, _) => {
                self.metrics.skipped(msg.topic()).inc();
                info!("{reason}: not sent ({setting} is skip); counted as skipped");
                progress.ack(offset);
            }
        }
        true
    }

    /// Registers the held records' offsets (in fetch order) and sends each lane its share.
    ///
    /// Handing records over one at a time woke a lane's task per record, and that wake-up (and
    /// the lock traffic around it) was what held throughput down (docs/PERFORMANCE.md). Offsets
    /// are registered only here, so a partition revoked meanwhile (its callback runs inside
    /// `poll`) neither waits for records held here nor commits past them.
    pub fn hand_over(&mut self) {
        if self.held.is_empty() {
            return;
        }
        self.held_counts.fill((0, 0));
        let mut per_lane: Vec<Vec<Vec<Record>>> = self
            .routes
            .iter()
            .map(|r| (0..r.lanes.len()).map(|_| Vec::new()).collect())
            .collect();
        let mut taken: Vec<(u64, u64)> = vec![(0, 0); self.routes.len()];
        let mut held = self.held.drain(..).peekable();
        while let Some(first) = held.next() {
            // A run of records of one partition: registered under one lock.
            let progress = first.record.progress.clone();
            let mut run = vec![first];
            while let Some(next) = held.next_if(|h| Arc::ptr_eq(&h.record.progress, &progress)) {
                run.push(next);
            }
            if progress.is_revoked() {
                self.metrics.not_ours.inc_by(run.len() as u64);
                continue;
            }
            let mut new = Vec::with_capacity(run.len());
            let records = run.iter().map(|h| (h.record.offset, h.timestamp_ms));
            progress.register_all(records, |is_new| new.push(is_new));
            let mut consumed = 0;
            for (h, is_new) in run.into_iter().zip(new) {
                if !is_new {
                    self.metrics.refetched.inc();
                    continue;
                }
                consumed += 1;
                if h.delivered {
                    progress.ack(h.record.offset);
                    self.metrics.skipped_as_delivered(&progress.topic).inc();
                    continue;
                }
                let t = &mut taken[h.route];
                t.0 += 1;
                t.1 += h.record.size() as u64;
                per_lane[h.route][h.lane].push(h.record);
            }
            self.metrics.consumed(&progress.topic).inc_by(consumed);
        }
        drop(held);
        for (route, lanes) in per_lane.into_iter().enumerate() {
            let r = &self.routes[route];
            let (records, bytes) = taken[route];
            r.share.take(records, bytes);
            for (lane, chunk) in lanes.into_iter().enumerate() {
                if chunk.is_empty() {
                    continue;
                }
                if let Err(returned) = r.lanes[lane].send(chunk) {
                    // The lane stopped (halt): the records stay undelivered and uncommitted.
                    let returned = returned.0;
                    let bytes = returned.iter().map(|r| r.size() as u64).sum();
                    r.share.release(returned.len() as u64, bytes);
                }
            }
        }
    }

    /// Drops the lane senders: each lane ends once its queue is delivered.
    pub fn close_lanes(&mut self) {
        for r in &mut self.routes {
            r.lanes.clear();
        }
    }
}

/// The record's data as the route sends it: the value (decoded or not), or the envelope.
fn encode(
    msg: &impl Fetched,
    format: RecordFormat,
    delimiter: Delimiter,
    key: &SideOut,
    value: &SideOut,
) -> Bytes {
    let newline = delimiter == Delimiter::Newline;
    match format {
        RecordFormat::Raw => {
            let value = value.bytes(msg.value()).unwrap_or_default();
            if !newline {
                return Bytes::copy_from_slice(value);
            }
            let mut data = Vec::with_capacity(value.len() + 1);
            data.extend_from_slice(value);
            data.push(b'\n');
            data.into()
        }
        RecordFormat::Envelope => {
            let value_len = value.bytes(msg.value()).map_or(0, <[u8]>::len);
            let mut data = Vec::with_capacity(256 + value_len + msg.key().map_or(0, <[u8]>::len));
            envelope::encode_with(
                msg,
                key.envelope(msg.key()),
                value.envelope(msg.value()),
                &mut data,
            );
            if newline {
                data.push(b'\n');
            }
            data.into()
        }
    }
}

/// Which route a topic belongs to: its name in a route's `topics`, or a match of a route's
/// `topic_pattern`. Two patterns matching one topic cannot be told at load time, so that is
/// refused here, when the topic is assigned.
pub struct TopicRoutes {
    routes: Vec<TopicRoute>,
}

/// The topics of one route.
pub struct TopicRoute {
    pub name: String,
    pub topics: Vec<String>,
    /// `topic_pattern` as written, and as the whole-name regex it stands for.
    pub pattern: Option<(String, regex::Regex)>,
    /// The destination's name, for the log.
    pub destination: String,
}

impl TopicRoutes {
    /// Route `i` of `routes` is route `i` everywhere else.
    pub fn new(routes: Vec<TopicRoute>) -> Self {
        Self { routes }
    }

    pub fn name(&self, route: usize) -> &str {
        &self.routes[route].name
    }

    /// Why `topic` cannot be delivered: two routes read it. `None` for one route or none.
    pub fn overlap(&self, topic: &str) -> Option<String> {
        self.route_of(topic)
            .err()
            .filter(|_| self.routes.iter().any(|r| r.pattern.is_some()))
            .filter(|problem| problem.contains(" and route "))
    }

    /// The index of the route that reads `topic`. Err: no route or two of them (a message for
    /// the halt, naming both).
    pub fn route_of(&self, topic: &str) -> Result<usize, String> {
        let matching: Vec<usize> = self
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.topics.iter().any(|t| t == topic)
                    || r.pattern.as_ref().is_some_and(|(_, re)| re.is_match(topic))
            })
            .map(|(i, _)| i)
            .collect();
        match matching[..] {
            [route] => Ok(route),
            [] => Err(format!(
                "topic `{topic}` was assigned but no route reads it (librdkafka's regex matched \
                 it, the route's topic_pattern does not): write the pattern so that both agree"
            )),
            [a, b, ..] => Err(format!(
                "topic `{topic}` matches route `{}` and route `{}`: a topic belongs to one route; \
                 narrow their topic_pattern",
                self.routes[a].name, self.routes[b].name
            )),
        }
    }

    /// Says in the log where a topic's records go, the first time it is assigned.
    pub fn announce(&self, topic: &str, route: usize) {
        let r = &self.routes[route];
        match &r.pattern {
            Some((pattern, _)) if !r.topics.iter().any(|t| t == topic) => info!(
                route = %r.name,
                "topic `{topic}` matches topic_pattern `{pattern}`: delivering it to `{}`",
                r.destination
            ),
            _ => info!(route = %r.name, "topic `{topic}`: delivering it to `{}`", r.destination),
        }
    }
}
