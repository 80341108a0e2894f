//! Exit codes, documented in the README.

/// Stopped on request; everything fetched was delivered and committed.
pub const CLEAN: u8 = 0;
/// Could not start (Kafka client, AWS set-up) or an internal error.
pub const FAILURE: u8 = 1;
/// The configuration is invalid (also used for command-line mistakes).
pub const CONFIG: u8 = 2;
/// Shutdown timed out with records undelivered; they were not committed and will be re-sent.
pub const UNDELIVERED: u8 = 3;
/// The pipeline halted (gave up retrying, or a record it must not drop could not be sent);
/// nothing from that record on was committed.
pub const HALTED: u8 = 4;
/// At start-up, no AWS credentials could be obtained for the stream (source identity, or
/// AssumeRole into the target role). Later failures to renew them are retried instead.
pub const CREDENTIALS: u8 = 5;
/// At start-up, no Kafka broker answered within `kafka.connect_timeout_ms`.
pub const KAFKA_UNREACHABLE: u8 = 6;
/// At start-up, the brokers refused the TLS handshake or the authentication (`kafka.auth`).
pub const KAFKA_REFUSED: u8 = 7;
/// A panic (a bug): exited at once, nothing more committed; uncommitted records are sent again
/// after the restart (src/panics.rs).
pub const PANIC: u8 = 70;
/// A second SIGTERM/SIGINT: exited at once; uncommitted records are sent again after restart.
pub const SIGNALLED_TWICE: u8 = 130;
