//! The bound on `topic` label values of the counters.
//!
//! A route with a `topic_pattern` picks up every new topic that matches, and a counter series
//! lives as long as the process: without a bound, a pattern over topics that come and go (daily
//! topics, one per tenant) grows `/metrics` and the Prometheus database forever. The first
//! [`MAX_TOPIC_LABELS`] topics a process counts keep their own series; records of any topic
//! after them are counted under [`OTHER_TOPICS`], so every total stays exact.
//!
//! Per-partition gauges (offsets, lag) are not capped here: they exist only while the partition
//! is assigned to this member and are removed when it is revoked.

use std::collections::HashSet;
use std::sync::RwLock;

/// Distinct topics with series of their own, per process.
pub const MAX_TOPIC_LABELS: usize = 100;

/// The `topic` label of records of topics beyond [`MAX_TOPIC_LABELS`]. Kafka topic names are
/// made of `[a-zA-Z0-9._-]`, so no real topic can be called this.
pub const OTHER_TOPICS: &str = "(other)";

/// Which topics have their own series. Asked once per run of records of a partition, not per
/// record; a read lock in the common case.
#[derive(Debug, Default)]
pub struct TopicLabels {
    known: RwLock<HashSet<Box<str>>>,
}

impl TopicLabels {
    /// The label value to count `topic` under.
    pub fn label<'a>(&self, topic: &'a str) -> &'a str {
        if self.known.read().unwrap().contains(topic) {
            return topic;
        }
        let mut known = self.known.write().unwrap();
        if known.len() < MAX_TOPIC_LABELS {
            known.insert(topic.into());
            return topic;
        }
        if known.contains(topic) {
            topic
        } else {
            OTHER_TOPICS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_past_the_bound_share_one_label() {
        let labels = TopicLabels::default();
        let names: Vec<String> = (0..MAX_TOPIC_LABELS + 10)
            .map(|i| format!("t{i}"))
            .collect();
        for name in &names[..MAX_TOPIC_LABELS] {
            assert_eq!(labels.label(name), name);
        }
        for name in &names[MAX_TOPIC_LABELS..] {
            assert_eq!(labels.label(name), OTHER_TOPICS);
        }
        // The first ones keep theirs.
        assert_eq!(labels.label("t0"), "t0");
        assert_eq!(labels.label(&names[MAX_TOPIC_LABELS]), OTHER_TOPICS);
    }
}
