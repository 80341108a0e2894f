//! Property tests of how PutRecords answers are read: a result per entry, in order, or an error;
//! never a panic, never results that do not line up with the request.

use proptest::prelude::*;

use super::{EntryResult, PutError, read_results, service_error};
use crate::json_text::proptests::{Json, any_json, render};
use crate::sink::proptests::{any_code, error_answer, extras, object, text};

/// How one entry went, as the generated answer says.
#[derive(Debug, Clone)]
enum Outcome {
    /// `None`: the answer names no shard (the member is absent or null).
    Written(Option<String>),
    Failed(String),
}

impl Outcome {
    fn expected(&self) -> EntryResult {
        match self {
            Self::Written(shard) => EntryResult::Written(shard.clone()),
            Self::Failed(code) => EntryResult::Failed { code: code.clone() },
        }
    }
}

const ENTRY_MEMBERS: &[&str] = &["SequenceNumber", "ShardId", "ErrorCode", "ErrorMessage"];
const ANSWER_MEMBERS: &[&str] = &["FailedRecordCount", "Records", "EncryptionType"];

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => prop::option::of(prop_oneof!["shardId-[0-9]{12}", any::<String>()])
            .prop_map(Outcome::Written),
        2 => any_code().prop_map(Outcome::Failed),
    ]
}

/// One entry of the answer: its members as PutRecords writes them (absent ones sometimes
/// written as null), extra members, in any order.
fn entry() -> impl Strategy<Value = (Outcome, Json)> {
    (
        outcome(),
        any::<bool>(),
        "[0-9]{1,56}",
        prop::option::of(any::<String>()),
        extras(ENTRY_MEMBERS),
    )
        .prop_map(|(outcome, nulls, sequence, message, extras)| {
            let mut members = Vec::new();
            match &outcome {
                Outcome::Written(shard) => {
                    members.push(("SequenceNumber", text(&sequence)));
                    match shard {
                        Some(shard) => members.push(("ShardId", text(shard))),
                        None if nulls => members.push(("ShardId", Json::Null)),
                        None => {}
                    }
                    if nulls {
                        members.push(("ErrorCode", Json::Null));
                        members.push(("ErrorMessage", Json::Null));
                    }
                }
                Outcome::Failed(code) => {
                    members.push(("ErrorCode", text(code)));
                    if let Some(message) = &message {
                        members.push(("ErrorMessage", text(message)));
                    }
                    if nulls {
                        members.push(("SequenceNumber", Json::Null));
                        members.push(("ShardId", Json::Null));
                    }
                }
            }
            (outcome, object(members, extras))
        })
}

/// A generated PutRecords answer and what it says entry by entry.
#[derive(Debug, Clone)]
struct Answer {
    outcomes: Vec<Outcome>,
    body: String,
}

/// Answers of up to `max` entries whose `FailedRecordCount` is off by `miscount` (0: right, and
/// then absent sometimes when nothing failed, which PutRecords may do).
fn answer(max: usize, miscount: i64) -> impl Strategy<Value = Answer> {
    (
        prop::collection::vec(entry(), 0..=max),
        any::<bool>(),
        prop::option::of(prop_oneof![Just("NONE"), Just("KMS")]),
        extras(ANSWER_MEMBERS),
        any::<u64>(),
    )
        .prop_map(move |(entries, omit, encryption, extras, seed)| {
            let (outcomes, jsons): (Vec<Outcome>, Vec<Json>) = entries.into_iter().unzip();
            let failed = outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Failed(_)))
                .count() as i64;
            let mut members = vec![("Records", Json::Arr(jsons))];
            if !(omit && failed == 0 && miscount == 0) {
                members.push((
                    "FailedRecordCount",
                    Json::Num((failed + miscount).to_string()),
                ));
            }
            if let Some(encryption) = encryption {
                members.push(("EncryptionType", text(encryption)));
            }
            Answer {
                outcomes,
                body: render(&object(members, extras), seed),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn a_well_formed_answer_gives_each_entry_its_result(answer in answer(20, 0)) {
        let expected: Vec<EntryResult> = answer.outcomes.iter().map(Outcome::expected).collect();
        match read_results(answer.body.as_bytes(), expected.len()) {
            Ok(results) => prop_assert_eq!(results, expected),
            Err(e) => prop_assert!(false, "{e:?} for {}", answer.body),
        }
    }

    #[test]
    fn an_error_answer_gives_its_code_and_message(answer in error_answer(true, false)) {
        match service_error(answer.status, answer.header.as_deref(), answer.body.as_bytes()) {
            PutError::Service { status, code, message } => {
                prop_assert_eq!(status, answer.status);
                prop_assert_eq!(code, answer.code);
                prop_assert_eq!(message, answer.message);
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn an_answer_for_another_number_of_entries_is_an_error(
        answer in answer(10, 0),
        off in 1..4usize,
        fewer in any::<bool>(),
    ) {
        let n = answer.outcomes.len();
        let asked = if fewer && n >= off { n - off } else { n + off };
        prop_assert!(matches!(read_results(answer.body.as_bytes(), asked), Err(PutError::Malformed(_))));
    }

    #[test]
    fn a_wrong_failed_count_is_an_error(
        (miscount, answer) in prop_oneof![-3i64..0, 1i64..4]
            .prop_flat_map(|miscount| (Just(miscount), answer(10, miscount))),
    ) {
        let n = answer.outcomes.len();
        prop_assert!(
            matches!(read_results(answer.body.as_bytes(), n), Err(PutError::Malformed(_))),
            "FailedRecordCount off by {}", miscount
        );
    }

    #[test]
    fn a_damaged_answer_is_an_error_or_lines_up(
        answer in answer(10, 0),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<bool>(),
    ) {
        let mut body = answer.body.clone().into_bytes();
        let at = at.index(body.len());
        if cut {
            body.truncate(at);
        } else {
            body[at] = byte;
        }
        let n = answer.outcomes.len();
        if let Ok(results) = read_results(&body, n) {
            prop_assert_eq!(results.len(), n);
        }
    }
}

proptest! {
    #[test]
    fn any_bytes_are_read_without_panicking(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            any_json().prop_map(|json| render(&json, 0).into_bytes()),
        ],
        count in 0..5usize,
        status in any::<u16>(),
        header in prop::option::of(any::<String>()),
    ) {
        if let Ok(results) = read_results(&body, count) {
            prop_assert_eq!(results.len(), count);
        }
        let is_service = matches!(
            service_error(status, header.as_deref(), &body),
            PutError::Service { status: s, code, .. }
                if s == status && code.as_deref().is_none_or(|c| !c.is_empty())
        );
        prop_assert!(is_service);
    }
}
