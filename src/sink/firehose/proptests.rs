//! Property tests of the Firehose sink against generated PutRecordBatch answers, through the
//! SDK client it uses (a fake HTTP connector answers): each record gets its own request's result,
//! whatever the spelling of the answer; an answer that does not line up is an error; an error
//! answer fails exactly its own request's records; nothing panics.

use std::collections::VecDeque;
use std::mem::discriminant;
use std::sync::{Arc, Mutex};

use aws_credential_types::Credentials;
use aws_sdk_firehose::config::{BehaviorVersion, Region};
use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, SharedHttpConnector, http_client_fn,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::retry::RetryConfig;
use bytes::Bytes;
use proptest::prelude::*;

use super::{FirehoseSink, MAX_BATCH_BYTES, THROTTLED_CODE, split};
use crate::json_text::proptests::{Json, any_json, render};
use crate::sink::proptests::{ErrorAnswer, any_code, error_answer, extras, object, text};
use crate::sink::{Entry, EntryFailure, RequestError, Sink, by_code};

/// One HTTP answer: status, `x-amzn-ErrorType` header, body.
type Reply = (u16, Option<String>, Vec<u8>);

/// Answers requests in turn from its queue, and keeps their bodies.
#[derive(Debug, Clone, Default)]
struct Fake {
    replies: Arc<Mutex<VecDeque<Reply>>>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl HttpConnector for Fake {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let body = request.body().bytes().expect("an in-memory body").to_vec();
        self.requests.lock().unwrap().push(body);
        let (status, error_type, body) = self
            .replies
            .lock()
            .unwrap()
            .pop_front()
            .expect("no more requests than answers");
        let mut response = http::Response::builder()
            .status(status)
            .header("content-type", "application/x-amz-json-1.1");
        if let Some(error_type) = error_type {
            response = response.header("x-amzn-ErrorType", error_type);
        }
        let response = response.body(SdkBody::from(body)).expect("a response");
        HttpConnectorFuture::ready(Ok(HttpResponse::try_from(response).expect("a response")))
    }
}

/// Runs `entries` through a sink of `max_entries` per request whose requests get `replies` in
/// turn. Returns the outcome and the request bodies.
fn put(
    entries: &[Bytes],
    max_entries: usize,
    replies: Vec<Reply>,
) -> (Result<Vec<EntryFailure>, RequestError>, Vec<Vec<u8>>) {
    let fake = Fake::default();
    fake.replies.lock().unwrap().extend(replies);
    let connector = fake.clone();
    let config = aws_sdk_firehose::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "proptest"))
        .retry_config(RetryConfig::disabled())
        .http_client(http_client_fn(move |_, _| {
            SharedHttpConnector::new(connector.clone())
        }))
        .build();
    let sink = FirehoseSink::new(
        aws_sdk_firehose::Client::from_conf(config),
        "stream".into(),
        "delivery stream `stream`".into(),
        max_entries,
        MAX_BATCH_BYTES,
    );
    let entries: Vec<Entry<'_>> = entries
        .iter()
        .map(|data| Entry {
            partition_key: "",
            explicit_hash_key: None,
            data,
        })
        .collect();
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(sink.put(&entries));
    assert!(
        fake.replies.lock().unwrap().is_empty(),
        "every answer asked for"
    );
    let requests = std::mem::take(&mut *fake.requests.lock().unwrap());
    (outcome, requests)
}

/// The data of the records of a PutRecordBatch request.
fn records_sent(request: &[u8]) -> Vec<Vec<u8>> {
    let request: serde_json::Value = serde_json::from_slice(request).expect("a JSON request");
    assert_eq!(request["DeliveryStreamName"], "stream");
    request["Records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            base64_simd::STANDARD
                .decode_to_vec(r["Data"].as_str().expect("data"))
                .expect("base64")
        })
        .collect()
}

const ENTRY_MEMBERS: &[&str] = &["RecordId", "ErrorCode", "ErrorMessage"];
const ANSWER_MEMBERS: &[&str] = &["FailedPutCount", "Encrypted", "RequestResponses"];

/// A generated PutRecordBatch answer: for each record its failure code, if it failed.
#[derive(Debug, Clone)]
struct Answer {
    failures: Vec<Option<String>>,
    body: String,
}

/// One entry of the answer: a record id, or an error code and maybe a message; extra members,
/// any order.
fn entry() -> impl Strategy<Value = (Option<String>, Json)> {
    let failure = prop_oneof![
        3 => Just(None),
        1 => Just(Some(THROTTLED_CODE.to_owned())),
        2 => any_code().prop_map(Some),
    ];
    (
        failure,
        "[A-Za-z0-9+/]{1,40}",
        prop::option::of(any::<String>()),
        extras(ENTRY_MEMBERS),
    )
        .prop_map(|(failure, id, message, extras)| {
            let mut members = Vec::new();
            match &failure {
                None => members.push(("RecordId", text(&id))),
                Some(code) => {
                    members.push(("ErrorCode", text(code)));
                    if let Some(message) = &message {
                        members.push(("ErrorMessage", text(message)));
                    }
                }
            }
            (failure, object(members, extras))
        })
}

/// An answer for `count` records whose `FailedPutCount` is off by `miscount`.
fn answer(count: usize, miscount: i32) -> impl Strategy<Value = Answer> {
    (
        prop::collection::vec(entry(), count),
        any::<Option<bool>>(),
        extras(ANSWER_MEMBERS),
        any::<u64>(),
    )
        .prop_map(move |(entries, encrypted, extras, seed)| {
            let (failures, jsons): (Vec<Option<String>>, Vec<Json>) = entries.into_iter().unzip();
            let failed = failures.iter().flatten().count() as i32;
            let mut members = vec![
                ("RequestResponses", Json::Arr(jsons)),
                ("FailedPutCount", Json::Num((failed + miscount).to_string())),
            ];
            if let Some(encrypted) = encrypted {
                members.push(("Encrypted", Json::Bool(encrypted)));
            }
            Answer {
                failures,
                body: render(&object(members, extras), seed),
            }
        })
}

/// What the sink must make of an error answer (the variant; the detail is left empty). The SDK
/// reads the code from the header, else the body's `code`, else its `__type` (not `Code`, and
/// only a member name written without escapes); without one the error is not a service error,
/// which the sink counts as transient whatever the status.
fn expected_error(answer: &ErrorAnswer) -> RequestError {
    let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_default();
    let seen = answer.header.is_some() || body.get("code").or(body.get("__type")).is_some();
    let code = answer.code.as_deref().filter(|_| seen);
    let configuration = RequestError::Configuration(String::new());
    match code {
        None => RequestError::Transient(String::new()),
        Some(THROTTLED_CODE) => RequestError::Throttled(String::new()),
        Some(
            "ResourceNotFoundException"
            | "InvalidKMSResourceException"
            | "InvalidSourceException"
            | "InvalidArgumentException"
            | "AccessDeniedException"
            | "AccessDenied",
        ) => configuration,
        Some(code) => by_code(Some(code), answer.status, String::new()),
    }
}

/// Header values must be visible ASCII.
fn sendable(answer: &ErrorAnswer) -> bool {
    answer
        .header
        .as_deref()
        .is_none_or(|h| h.bytes().all(|b| (0x20..0x7f).contains(&b)))
}

fn data() -> impl Strategy<Value = Vec<Bytes>> {
    prop::collection::vec(
        prop::collection::vec(any::<u8>(), 0..20).prop_map(Bytes::from),
        0..25,
    )
}

/// How one request is answered.
#[derive(Debug, Clone)]
enum Answered {
    Batch(Answer),
    Error(ErrorAnswer),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Records split over requests of `max_entries`; each request answered with a batch answer
    /// or an error. Each record's failure is its own entry's, or its request's error.
    #[test]
    fn each_record_gets_its_own_result(
        (records, max_entries, answers) in (data(), 1..8usize).prop_flat_map(|(records, max)| {
            let answers: Vec<_> = records
                .chunks(max)
                .map(|chunk| {
                    prop_oneof![
                        4 => answer(chunk.len(), 0).prop_map(Answered::Batch),
                        1 => error_answer(false, true)
                            .prop_filter("a sendable header", sendable)
                            .prop_map(Answered::Error),
                    ]
                })
                .collect();
            (Just(records), Just(max), answers)
        }),
    ) {
        let replies = answers
            .iter()
            .map(|a| match a {
                Answered::Batch(a) => (200, None, a.body.clone().into_bytes()),
                Answered::Error(e) => (e.status, e.header.clone(), e.body.clone().into_bytes()),
            })
            .collect();
        let (outcome, requests) = put(&records, max_entries, replies);
        let sent: Vec<Vec<u8>> = requests.iter().flat_map(|r| records_sent(r)).collect();
        let expected_sent: Vec<Vec<u8>> = records.iter().map(|r| r.to_vec()).collect();
        prop_assert_eq!(sent, expected_sent, "every record sent once, in order");
        let errors: Vec<RequestError> = answers
            .iter()
            .filter_map(|a| match a {
                Answered::Error(e) => Some(expected_error(e)),
                Answered::Batch(_) => None,
            })
            .collect();
        if !answers.is_empty() && errors.len() == answers.len() {
            match outcome {
                Err(e) => prop_assert_eq!(discriminant(&e), discriminant(&errors[0]), "{}", e),
                Ok(f) => prop_assert!(false, "every request failed, yet {f:?}"),
            }
            return Ok(());
        }
        let failures = match outcome {
            Ok(failures) => failures,
            Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
        };
        // (index, code if the entry's own, throttled) for each record that failed.
        let mut expected: Vec<(usize, Option<&str>, bool)> = Vec::new();
        for (k, answered) in answers.iter().enumerate() {
            let start = k * max_entries;
            match answered {
                Answered::Batch(a) => {
                    for (j, failure) in a.failures.iter().enumerate() {
                        if let Some(code) = failure {
                            expected.push((start + j, Some(code), code == THROTTLED_CODE));
                        }
                    }
                }
                Answered::Error(e) => {
                    let throttled = matches!(expected_error(e), RequestError::Throttled(_));
                    let members = records[start..].len().min(max_entries);
                    expected.extend((start..start + members).map(|i| (i, None, throttled)));
                }
            }
        }
        let got: Vec<(usize, bool)> = failures.iter().map(|f| (f.index, f.throttled)).collect();
        let want: Vec<(usize, bool)> = expected.iter().map(|&(i, _, t)| (i, t)).collect();
        prop_assert_eq!(got, want, "(index, throttled) of the failed records");
        for (failure, (_, code, _)) in failures.iter().zip(&expected) {
            if let Some(code) = code {
                prop_assert_eq!(&failure.code, code);
            }
        }
    }

    #[test]
    fn any_answer_is_read_without_panicking(
        records in data().prop_filter("records", |r| !r.is_empty()),
        status in prop_oneof![Just(200u16), 200..600u16],
        header in prop::option::of("[ -~]{0,40}"),
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            any_json().prop_map(|json| render(&json, 1).into_bytes()),
        ],
    ) {
        let (outcome, _) = put(&records, 500, vec![(status, header, body)]);
        if let Ok(failures) = outcome {
            prop_assert!((200..300).contains(&status));
            prop_assert!(failures.windows(2).all(|w| w[0].index < w[1].index));
            prop_assert!(failures.iter().all(|f| f.index < records.len()));
        }
    }
}

proptest! {
    // Each case builds a client and a runtime: a few dozen cases tell enough.
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn an_answer_for_another_number_of_records_is_an_error(
        (records, answer) in (data(), 1..4usize, any::<bool>())
            .prop_filter("records", |(records, _, _)| !records.is_empty())
            .prop_flat_map(|(records, off, fewer)| {
                let n = records.len();
                let count = if fewer && n >= off { n - off } else { n + off };
                (Just(records), answer(count, 0))
            }),
    ) {
        let (outcome, _) = put(&records, 500, vec![(200, None, answer.body.into_bytes())]);
        prop_assert!(matches!(outcome, Err(RequestError::Transient(_))), "{outcome:?}");
    }

    #[test]
    fn a_wrong_failed_count_is_an_error(
        (records, answer) in (data(), prop_oneof![-3i32..0, 1i32..4])
            .prop_filter("records", |(records, _)| !records.is_empty())
            .prop_flat_map(|(records, miscount)| {
                let n = records.len();
                (Just(records), answer(n, miscount))
            }),
    ) {
        let (outcome, _) = put(&records, 500, vec![(200, None, answer.body.into_bytes())]);
        prop_assert!(matches!(outcome, Err(RequestError::Transient(_))), "{outcome:?}");
    }
}

proptest! {
    /// Requests cover the records in order, each within both limits (a record over the byte
    /// limit alone), and each as full as it can be: the next record would not have fitted.
    #[test]
    fn requests_hold_every_record_once_in_order_within_the_limits(
        sizes in prop::collection::vec(prop_oneof![0..40usize, 0..200usize], 0..60),
        max_entries in 1..10usize,
        max_bytes in 0..150usize,
    ) {
        let requests = split(sizes.iter().copied(), max_entries, max_bytes);
        let mut next = 0;
        for (k, request) in requests.iter().enumerate() {
            prop_assert_eq!(request.start, next, "contiguous, in order");
            prop_assert!(!request.is_empty() && request.len() <= max_entries);
            let bytes: usize = sizes[request.clone()].iter().sum();
            prop_assert!(bytes <= max_bytes || request.len() == 1, "{:?}: {} bytes", request, bytes);
            if k + 1 < requests.len() {
                let full = request.len() == max_entries || bytes + sizes[request.end] > max_bytes;
                prop_assert!(full, "{:?} had room for record {}", request, request.end);
            }
            next = request.end;
        }
        prop_assert_eq!(next, sizes.len(), "every record");
    }
}
