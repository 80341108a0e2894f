//! Reading and verifying MSK IAM tokens without AWS: base64url-decode the presigned URL, check
//! its shape, and recompute its SigV4 signature with a known secret — AWS's published algorithm,
//! written out here independently of the SDK doka signs with. Used by the tests and by the local
//! SASL proxy (`examples/auth_broker.rs`), which refuses a token whose signature is wrong.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// What an MSK IAM token says.
pub struct TokenFacts {
    pub region: String,
    pub access_key: String,
    pub signed_at: SystemTime,
    pub expires_in: Duration,
    /// Every query parameter but the signature, decoded.
    pub params: HashMap<String, String>,
    pub signature: String,
}

/// Decodes a token and checks that it is a presigned `kafka-cluster:Connect` request with only
/// `host` signed. Err: what is wrong (a token of another kind, e.g. a JWT, is not one).
pub fn read_token(token: &str) -> Result<TokenFacts, String> {
    let url = base64_simd::URL_SAFE_NO_PAD
        .decode_to_vec(token)
        .map_err(|e| format!("not base64url without padding: {e}"))?;
    let url = String::from_utf8(url).map_err(|_| "not UTF-8".to_owned())?;
    let (base, query) = url.split_once('?').ok_or("no query")?;
    let region = base
        .strip_prefix("https://kafka.")
        .and_then(|rest| rest.strip_suffix(".amazonaws.com/"))
        .ok_or_else(|| format!("not an MSK endpoint: {base}"))?
        .to_owned();
    let mut params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let expect = |name: &str, value: &str| match params.get(name) {
        Some(v) if v == value => Ok(()),
        other => Err(format!("{name} is {other:?}, expected {value}")),
    };
    expect("Action", "kafka-cluster:Connect")?;
    expect("X-Amz-Algorithm", "AWS4-HMAC-SHA256")?;
    expect("X-Amz-SignedHeaders", "host")?;
    if !params.contains_key("User-Agent") {
        return Err("no User-Agent".into());
    }
    let credential: Vec<&str> = params
        .get("X-Amz-Credential")
        .ok_or("no X-Amz-Credential")?
        .split('/')
        .collect();
    let date = params.get("X-Amz-Date").ok_or("no X-Amz-Date")?;
    if credential.len() != 5
        || credential[1] != date.get(..8).unwrap_or_default()
        || credential[2] != region
        || credential[3..] != ["kafka-cluster", "aws4_request"]
    {
        return Err(format!("bad credential scope {credential:?}"));
    }
    let signed_at = parse_amz_date(date).ok_or_else(|| format!("bad X-Amz-Date {date}"))?;
    let expires_in = params
        .get("X-Amz-Expires")
        .and_then(|e| e.parse().ok())
        .map(Duration::from_secs)
        .ok_or("no X-Amz-Expires")?;
    let access_key = credential[0].to_owned();
    let signature = params.remove("X-Amz-Signature").ok_or("no signature")?;
    Ok(TokenFacts {
        region,
        access_key,
        signed_at,
        expires_in,
        params,
        signature,
    })
}

/// `YYYYMMDDTHHMMSSZ` (days from civil, Howard Hinnant's algorithm: no date crate needed).
fn parse_amz_date(date: &str) -> Option<SystemTime> {
    let n = |r: std::ops::Range<usize>| date.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + n(9..11)? * 3600 + n(11..13)? * 60 + n(13..15)?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Whether the token's SigV4 signature is the one `secret` gives.
pub fn signature_matches(facts: &TokenFacts, secret: &str) -> bool {
    fn encode(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    fn hmac(key: &[u8], data: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
        mac.update(data.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
    // The User-Agent parameter is appended after signing.
    let mut query: Vec<(String, String)> = facts
        .params
        .iter()
        .filter(|(k, _)| *k != "User-Agent")
        .map(|(k, v)| (encode(k), encode(v)))
        .collect();
    query.sort();
    let query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let host = format!("kafka.{}.amazonaws.com", facts.region);
    let canonical = format!(
        "GET\n/\n{query}\nhost:{host}\n\nhost\n{}",
        hex::encode(Sha256::digest(b""))
    );
    let date = &facts.params["X-Amz-Date"];
    let scope = format!("{}/{}/kafka-cluster/aws4_request", &date[..8], facts.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let key = hmac(format!("AWS4{secret}").as_bytes(), &date[..8]);
    let key = hmac(&key, &facts.region);
    let key = hmac(&key, "kafka-cluster");
    let key = hmac(&key, "aws4_request");
    hex::encode(hmac(&key, &to_sign)) == facts.signature
}
