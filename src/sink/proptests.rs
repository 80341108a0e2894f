//! Property tests of how a service error is classified and told ([`by_code`], [`error_detail`]),
//! and the AWS JSON answers the sinks' property tests share: batch answers whose entries carry
//! extra members in any order, and error answers in every spelling the JSON protocol allows.

use proptest::prelude::*;

use super::{RequestError, by_code, error_detail};
use crate::json_text::proptests::{Json, any_json, render, render_plain_names};

/// The codes that mean expired or refused credentials.
pub(in crate::sink) const CREDENTIALS_CODES: [&str; 7] = [
    "ExpiredTokenException",
    "ExpiredToken",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
];

/// Codes the sinks give a meaning of their own (and a few they do not).
pub(in crate::sink) const KNOWN_CODES: [&str; 16] = [
    "ThrottlingException",
    "LimitExceededException",
    "ProvisionedThroughputExceededException",
    "KMSThrottlingException",
    "ServiceUnavailableException",
    "ResourceNotFoundException",
    "AccessDeniedException",
    "InvalidArgumentException",
    "KMSAccessDeniedException",
    "InvalidKMSResourceException",
    "InvalidSourceException",
    "InternalFailure",
    "InternalFailureException",
    "ValidationException",
    "ExpiredTokenException",
    "InvalidSignatureException",
];

/// An error code: one of those above, or any text.
pub(in crate::sink) fn any_code() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(&KNOWN_CODES[..]).prop_map(str::to_owned),
        1 => prop::sample::select(&CREDENTIALS_CODES[..]).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// What an object has besides the members a test gives it: up to three extra members, and the
/// order of them all.
#[derive(Debug, Clone)]
pub(in crate::sink) struct Extras {
    members: Vec<(String, Json)>,
    order: u64,
}

/// Extras whose members are named none of the `known` names, with any values.
pub(in crate::sink) fn extras(known: &'static [&'static str]) -> impl Strategy<Value = Extras> {
    (
        prop::collection::vec(
            (
                "[A-Za-z_][A-Za-z0-9_]{0,15}".prop_filter("not a known member", move |name| {
                    !known.contains(&name.as_str())
                }),
                any_json(),
            ),
            0..3,
        ),
        any::<u64>(),
    )
        .prop_map(|(members, order)| Extras { members, order })
}

/// An object of `members` and the `extras`, in the extras' order.
pub(in crate::sink) fn object(members: Vec<(&str, Json)>, extras: Extras) -> Json {
    let mut all: Vec<(String, Json)> = members
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .chain(extras.members)
        .collect();
    // Fisher-Yates, drawing from an LCG seeded with the order.
    let mut state = extras.order;
    for i in (1..all.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        all.swap(i, ((state >> 33) % (i as u64 + 1)) as usize);
    }
    Json::Obj(all)
}

/// A JSON string member value.
pub(in crate::sink) fn text(s: &str) -> Json {
    Json::Str(s.to_owned())
}

/// An error answer of the AWS JSON protocol, as generated: where the code is, how it is dressed,
/// where the message is.
#[derive(Debug, Clone)]
pub(in crate::sink) struct ErrorAnswer {
    pub status: u16,
    /// The code without namespace or suffix (`None`: the answer has none).
    pub code: Option<String>,
    /// The `x-amzn-ErrorType` header, if the code is there (it wins over the body).
    pub header: Option<String>,
    pub body: String,
    /// The message, if the body has one under a name readers look for.
    pub message: Option<String>,
}

/// A code as the protocol may dress it: `namespace#Code`, `Code:suffix`, both or neither.
fn dress(code: &str, (namespace, suffix): &(Option<String>, Option<String>)) -> String {
    let mut raw = String::new();
    if let Some(namespace) = namespace {
        raw.push_str(namespace);
        raw.push('#');
    }
    raw.push_str(code);
    if let Some(suffix) = suffix {
        raw.push(':');
        raw.push_str(suffix);
    }
    raw
}

fn dressing() -> impl Strategy<Value = (Option<String>, Option<String>)> {
    (
        prop::option::of("[a-z][a-z0-9.]{0,30}"),
        prop::option::of("[ -~]{0,30}"),
    )
}

/// Error answers: a code (without the `#` and `:` that dress it) in the `x-amzn-ErrorType` header,
/// in the body under `__type`, `code` or `Code`, or nowhere; a message under `message`, `Message`
/// or `errorMessage`, or none; extra members; an error status. With `decoys`, other text stands
/// where the precedence doka reads with says it is not read: the body's code names when the
/// header has the code, the names after the first present one, the messages after the first;
/// without, every code present is the same code (possibly dressed differently). With
/// `plain_names`, member names have no escapes JSON does not require.
pub(in crate::sink) fn error_answer(
    decoys: bool,
    plain_names: bool,
) -> impl Strategy<Value = ErrorAnswer> {
    const CODE_NAMES: [&str; 3] = ["__type", "code", "Code"];
    const MESSAGE_NAMES: [&str; 3] = ["message", "Message", "errorMessage"];
    const KNOWN: &[&str] = &[
        "__type",
        "code",
        "Code",
        "message",
        "Message",
        "errorMessage",
    ];
    let code = any_code().prop_filter("a code of its own", |c| {
        !c.is_empty() && !c.contains(['#', ':'])
    });
    (
        prop::option::of(code),
        (any::<bool>(), any::<bool>(), 0..3usize),
        prop::collection::vec(dressing(), 4),
        prop::collection::vec(prop::option::of(any::<String>()), 3),
        prop::collection::vec(prop::option::of(any::<String>()), 3),
        prop_oneof![
            Just(400u16),
            Just(403),
            Just(429),
            Just(500),
            Just(503),
            400..600u16
        ],
        (extras(KNOWN), any::<u64>()),
    )
        .prop_map(
            move |(
                code,
                (in_header, repeated, first),
                dressings,
                others,
                messages,
                status,
                (extras, seed),
            )| {
                let header = code
                    .as_deref()
                    .filter(|_| in_header)
                    .map(|c| dress(c, &dressings[3]));
                let mut members: Vec<(&'static str, Json)> = Vec::new();
                if let Some(code) = &code {
                    for (i, name) in CODE_NAMES.iter().enumerate() {
                        // Where doka reads the code (unless the header has it), and where
                        // it does not: a decoy there, or the same code again, or nothing.
                        let read = !in_header && i == first;
                        let unread = in_header || i > first;
                        let value = if read || (unread && repeated && !decoys) {
                            Some(dress(code, &dressings[i]))
                        } else if unread && decoys {
                            others[i].clone()
                        } else {
                            None
                        };
                        if let Some(value) = value {
                            members.push((name, text(&value)));
                        }
                    }
                }
                let mut message: Option<String> = None;
                for (name, present) in MESSAGE_NAMES.iter().zip(&messages) {
                    if let Some(m) = present {
                        // The first is read; later ones are decoys or the same message again.
                        let m = match &message {
                            Some(first) if !decoys => first.clone(),
                            _ => m.clone(),
                        };
                        message.get_or_insert_with(|| m.clone());
                        members.push((name, text(&m)));
                    }
                }
                let body = object(members, extras);
                ErrorAnswer {
                    status,
                    code,
                    header,
                    body: if plain_names {
                        render_plain_names(&body, seed)
                    } else {
                        render(&body, seed)
                    },
                    message,
                }
            },
        )
}

proptest! {
    #[test]
    fn codes_classify_the_same_whatever_the_detail(
        code in prop::option::of(any_code()),
        status in prop_oneof![Just(429u16), any::<u16>()],
        detail in any::<String>(),
    ) {
        let credentials = code.as_deref().is_some_and(|c| CREDENTIALS_CODES.contains(&c));
        let throttling = matches!(
            code.as_deref(),
            Some("ThrottlingException" | "LimitExceededException")
        );
        match by_code(code.as_deref(), status, detail.clone()) {
            RequestError::Credentials(d) => {
                prop_assert!(credentials);
                prop_assert_eq!(d, detail);
            }
            RequestError::Throttled(d) => {
                prop_assert!(!credentials && (throttling || status == 429));
                prop_assert_eq!(d, detail);
            }
            RequestError::Transient(d) => {
                prop_assert!(!credentials && !throttling && status != 429);
                prop_assert_eq!(d, detail);
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn the_detail_tells_code_message_and_status(
        code in prop::option::of(any::<String>()),
        message in prop::option::of(any::<String>()),
        status in any::<u16>(),
    ) {
        let detail = error_detail(code.as_deref(), message.as_deref(), status);
        let expected = format!(
            "{}: {} (HTTP {status})",
            code.as_deref().unwrap_or("unknown error"),
            message.as_deref().unwrap_or("no message")
        );
        prop_assert_eq!(detail, expected);
    }
}
