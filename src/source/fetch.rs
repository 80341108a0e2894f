//! A fetched Kafka message as the pipeline sees it, and handing it to the intake.

use rdkafka::message::{BorrowedMessage, Message};

use super::SourceContext;
use crate::pipeline::intake::Intake;
use crate::pipeline::{Fetched, Header, Timestamp};

/// A fetched message as the pipeline sees it.
pub(super) struct Fetch<'a, 'm>(&'a BorrowedMessage<'m>);

impl Fetched for Fetch<'_, '_> {
    fn topic(&self) -> &str {
        self.0.topic()
    }
    fn partition(&self) -> i32 {
        self.0.partition()
    }
    fn offset(&self) -> i64 {
        self.0.offset()
    }
    fn key(&self) -> Option<&[u8]> {
        self.0.key()
    }
    fn value(&self) -> Option<&[u8]> {
        self.0.payload()
    }
    fn timestamp(&self) -> Timestamp {
        match self.0.timestamp() {
            rdkafka::Timestamp::NotAvailable => Timestamp::None,
            rdkafka::Timestamp::CreateTime(t) => Timestamp::CreateTime(t),
            rdkafka::Timestamp::LogAppendTime(t) => Timestamp::LogAppendTime(t),
        }
    }
    /// Read through librdkafka directly: rdkafka's header accessors panic on a key that is not
    /// UTF-8, and one such record must not stop doka.
    fn headers(&self) -> Vec<Header<'_>> {
        use rdkafka::bindings as rd;
        let mut headers = std::ptr::null_mut();
        // SAFETY: the message outlives `self` and librdkafka owns the headers it hands out; the
        // returned slices borrow from the message, as the lifetimes say.
        unsafe {
            let err = rd::rd_kafka_message_headers(self.0.ptr(), &mut headers);
            if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
                return Vec::new();
            }
            let mut out = Vec::new();
            for index in 0.. {
                let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
                let err =
                    rd::rd_kafka_header_get_all(headers, index, &mut name, &mut value, &mut size);
                if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                    break;
                }
                out.push(Header {
                    key: String::from_utf8_lossy(std::ffi::CStr::from_ptr(name).to_bytes()),
                    value: (!value.is_null())
                        .then(|| std::slice::from_raw_parts(value.cast::<u8>(), size)),
                });
            }
            out
        }
    }
}

/// Hands one fetched record to the intake. False when doka must stop.
pub(super) fn take(
    msg: &BorrowedMessage<'_>,
    context: &SourceContext,
    intake: &mut Intake,
) -> bool {
    let Some((progress, route)) = context.progress(msg.topic(), msg.partition()) else {
        // Fetched before its partition was revoked: it belongs to the new owner, who reads it
        // from the committed offset (which never passed it).
        context.metrics.not_ours.inc();
        return true;
    };
    intake.take(&Fetch(msg), progress, route)
}
