//! Schemas by id or version: fetched once, kept up to a bound, the least recently used dropped
//! first. The consumer thread looks schemas up without waiting; a schema not yet known is fetched
//! by one background task per id, retried with backoff until the registry answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Schema;
use super::wire::SchemaRef;

/// What the cache knows of a schema.
#[derive(Clone)]
pub enum Lookup {
    Ready(Arc<Schema>),
    /// Being fetched: the record waits.
    Fetching,
    /// The registry does not know it, or it cannot be used: the record cannot decode.
    Gone(Arc<str>),
}

enum Slot {
    Fetching,
    Ready { schema: Arc<Schema>, used: u64 },
    Gone { reason: Arc<str>, until: Instant },
}

/// A schema the registry did not know is asked for again after this long (a registry restored
/// from a backup may know it then); records meanwhile follow their policy at once.
const FORGET_GONE_AFTER: Duration = Duration::from_secs(60);

pub struct SchemaCache {
    slots: Mutex<Slots>,
    max: usize,
}

struct Slots {
    map: HashMap<SchemaRef, Slot>,
    /// Counts lookups: a slot's `used` says how recently it served one.
    tick: u64,
    ready: usize,
}

impl SchemaCache {
    pub fn new(max: usize) -> Self {
        Self {
            slots: Mutex::new(Slots {
                map: HashMap::new(),
                tick: 0,
                ready: 0,
            }),
            max: max.max(1),
        }
    }

    /// The schema, or that it is being fetched. True in the second place when the caller must
    /// start the fetch (the first to ask).
    pub fn lookup(&self, schema: SchemaRef) -> (Lookup, bool) {
        let mut slots = self.slots.lock().unwrap();
        slots.tick += 1;
        let tick = slots.tick;
        match slots.map.get_mut(&schema) {
            Some(Slot::Ready { schema, used }) => {
                *used = tick;
                (Lookup::Ready(schema.clone()), false)
            }
            Some(Slot::Fetching) => (Lookup::Fetching, false),
            Some(Slot::Gone { reason, until }) if Instant::now() < *until => {
                (Lookup::Gone(reason.clone()), false)
            }
            _ => {
                slots.map.insert(schema, Slot::Fetching);
                (Lookup::Fetching, true)
            }
        }
    }

    /// The fetch ended with a usable schema. Returns the schemas held now.
    pub fn ready(&self, schema_ref: SchemaRef, schema: Arc<Schema>) -> usize {
        let mut slots = self.slots.lock().unwrap();
        if slots.ready >= self.max {
            let oldest = slots
                .map
                .iter()
                .filter_map(|(r, slot)| match slot {
                    Slot::Ready { used, .. } => Some((*used, *r)),
                    _ => None,
                })
                .min();
            if let Some((_, r)) = oldest {
                slots.map.remove(&r);
                slots.ready -= 1;
            }
        }
        let used = slots.tick;
        slots.map.insert(schema_ref, Slot::Ready { schema, used });
        slots.ready += 1;
        slots.ready
    }

    /// The fetch ended: the schema cannot be had. Such slots are bounded like schemas: records
    /// naming ids at random must not grow the cache.
    pub fn gone(&self, schema_ref: SchemaRef, reason: String) {
        let mut slots = self.slots.lock().unwrap();
        let now = Instant::now();
        let gone = |slot: &Slot| matches!(slot, Slot::Gone { .. });
        if slots.map.values().filter(|s| gone(s)).count() >= self.max {
            slots
                .map
                .retain(|_, slot| !matches!(slot, Slot::Gone { until, .. } if *until <= now));
            let oldest = slots
                .map
                .iter()
                .filter_map(|(r, slot)| match slot {
                    Slot::Gone { until, .. } => Some((*until, *r)),
                    _ => None,
                })
                .min();
            if slots.map.values().filter(|s| gone(s)).count() >= self.max
                && let Some((_, r)) = oldest
            {
                slots.map.remove(&r);
            }
        }
        slots.map.insert(
            schema_ref,
            Slot::Gone {
                reason: reason.into(),
                until: Instant::now() + FORGET_GONE_AFTER,
            },
        );
    }

    pub fn capacity(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Schema;

    #[test]
    fn fetches_once_and_drops_the_least_recently_used() {
        let cache = SchemaCache::new(2);
        let (a, b, c) = (
            SchemaRef::Confluent(1),
            SchemaRef::Confluent(2),
            SchemaRef::Confluent(3),
        );
        assert!(matches!(cache.lookup(a), (Lookup::Fetching, true)));
        assert!(matches!(cache.lookup(a), (Lookup::Fetching, false)));
        assert_eq!(cache.ready(a, Arc::new(Schema::json_for_tests())), 1);
        assert!(matches!(cache.lookup(b), (Lookup::Fetching, true)));
        assert_eq!(cache.ready(b, Arc::new(Schema::json_for_tests())), 2);
        assert!(matches!(cache.lookup(a), (Lookup::Ready(_), false))); // a used after b
        assert!(matches!(cache.lookup(c), (Lookup::Fetching, true)));
        assert_eq!(cache.ready(c, Arc::new(Schema::json_for_tests())), 2);
        assert!(matches!(cache.lookup(a), (Lookup::Ready(_), _)));
        assert!(
            matches!(cache.lookup(b), (Lookup::Fetching, true)),
            "b went"
        );

        cache.gone(b, "404".into());
        assert!(matches!(cache.lookup(b), (Lookup::Gone(r), false) if &*r == "404"));
        // Unknown ids are bounded too: the oldest goes.
        let d = SchemaRef::Confluent(4);
        cache.lookup(d);
        cache.gone(d, "404".into());
        let e = SchemaRef::Confluent(5);
        cache.lookup(e);
        cache.gone(e, "404".into());
        assert!(
            matches!(cache.lookup(b), (Lookup::Fetching, true)),
            "b's slot went"
        );
        assert!(matches!(cache.lookup(e), (Lookup::Gone(_), false)));
    }
}
