//! [`GlobalStore`] on a real etcd (3.4+), through etcd's own JSON API (the
//! gRPC gateway every etcd member serves on its client URL: `/v3/kv/range`,
//! `/v3/kv/txn`, `/v3/lease/grant`, `/v3/lease/keepalive`), and [`watch`],
//! its streaming `/v3/watch`.
//!
//! Why not the `etcd-client` crate: it generates its gRPC code at build time
//! with `protoc`, so every build of spendb (the README's first command on a
//! fresh machine included) would need the protobuf compiler installed. The
//! JSON gateway is the same API, served by etcd itself, reached with the
//! HTTP client spendb already has (ureq). Keys and values travel base64;
//! 64-bit numbers as decimal strings (proto3's JSON mapping), and fields
//! at their default (a `false`, a 0) are left out of replies.
//!
//! Several endpoints may be given: a request goes to the first, and on a
//! transport error to the next (a member that is down). A transport error
//! after a request was sent leaves its outcome unknown, as with any store:
//! the protocol reads again.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use super::kv::{Compare, GlobalStore, KeyValue, KvError, LeaseId, Op, Rev};

pub struct EtcdStore {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    /// The endpoint that answered last, tried first.
    current: usize,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .unwrap_or_default()
}

/// A proto3 JSON int64: a string, or absent for 0.
fn int(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

/// The end of the range of keys starting with `prefix`: the prefix with
/// its last byte incremented (etcd's `--prefix`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn key_value(kv: &Value) -> KeyValue {
    let lease = int(&kv["lease"]);
    KeyValue {
        key: String::from_utf8_lossy(&unb64(&kv["key"])).into_owned(),
        value: unb64(&kv["value"]),
        mod_rev: int(&kv["mod_revision"]),
        lease: (lease != 0).then_some(lease),
    }
}

impl EtcdStore {
    /// `endpoints`: client URLs, e.g. `http://127.0.0.1:2379`.
    pub fn new(endpoints: &[String], timeout: Duration) -> EtcdStore {
        EtcdStore {
            endpoints: endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                .build()
                .into(),
            current: 0,
        }
    }

    fn call(&mut self, path: &str, body: Value) -> Result<Value, KvError> {
        let mut last = String::from("no endpoints");
        for attempt in 0..self.endpoints.len() {
            let i = (self.current + attempt) % self.endpoints.len();
            let url = format!("{}{path}", self.endpoints[i]);
            match self.agent.post(&url).send_json(&body) {
                Ok(mut resp) => {
                    self.current = i;
                    return resp
                        .body_mut()
                        .read_json::<Value>()
                        .map_err(|e| KvError::Unavailable(format!("{url}: {e}")));
                }
                Err(ureq::Error::StatusCode(code)) => {
                    // etcd answered: an error of the request itself (an
                    // expired lease on a put, say), not of the member.
                    self.current = i;
                    return Err(KvError::Unavailable(format!("{url}: HTTP {code}")));
                }
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(KvError::Unavailable(last))
    }
}

impl GlobalStore for EtcdStore {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, KvError> {
        let r = self.call("/v3/kv/range", json!({ "key": b64(key.as_bytes()) }))?;
        Ok(r["kvs"]
            .as_array()
            .and_then(|kvs| kvs.first())
            .map(key_value))
    }

    fn range(&mut self, prefix: &str) -> Result<Vec<KeyValue>, KvError> {
        let r = self.call(
            "/v3/kv/range",
            json!({
                "key": b64(prefix.as_bytes()),
                "range_end": b64(&prefix_end(prefix.as_bytes())),
            }),
        )?;
        Ok(r["kvs"]
            .as_array()
            .map(|kvs| kvs.iter().map(key_value).collect())
            .unwrap_or_default())
    }

    fn count(&mut self, prefix: &str) -> Result<u64, KvError> {
        let r = self.call(
            "/v3/kv/range",
            json!({
                "key": b64(prefix.as_bytes()),
                "range_end": b64(&prefix_end(prefix.as_bytes())),
                "count_only": true,
            }),
        )?;
        Ok(int(&r["count"]))
    }

    fn txn(&mut self, when: &[Compare], then: &[Op]) -> Result<bool, KvError> {
        let compare: Vec<Value> = when
            .iter()
            .map(|c| match c {
                Compare::ModRev(key, rev) => json!({
                    "key": b64(key.as_bytes()),
                    "target": "MOD",
                    "result": "EQUAL",
                    "mod_revision": rev.to_string(),
                }),
            })
            .collect();
        let success: Vec<Value> = then
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => json!({ "request_put": {
                    "key": b64(key.as_bytes()),
                    "value": b64(value),
                    "lease": lease.unwrap_or(0).to_string(),
                }}),
                Op::Delete(key) => {
                    json!({ "request_delete_range": { "key": b64(key.as_bytes()) } })
                }
            })
            .collect();
        let r = self.call(
            "/v3/kv/txn",
            json!({ "compare": compare, "success": success }),
        )?;
        Ok(r["succeeded"].as_bool().unwrap_or(false))
    }

    fn lease_grant(&mut self, ttl_ms: u64) -> Result<LeaseId, KvError> {
        // etcd counts leases in whole seconds.
        let ttl = ttl_ms.div_ceil(1000).max(1);
        let r = self.call("/v3/lease/grant", json!({ "TTL": ttl.to_string() }))?;
        match int(&r["ID"]) {
            0 => Err(KvError::Unavailable(format!("no lease granted: {r}"))),
            id => Ok(id),
        }
    }

    fn revision(&mut self) -> Result<Rev, KvError> {
        // Any read's header carries it; this key is never written.
        let r = self.call("/v3/kv/range", json!({ "key": b64(b"\0") }))?;
        Ok(int(&r["header"]["revision"]))
    }

    fn lease_keepalive(&mut self, lease: LeaseId) -> Result<(), KvError> {
        let r = self.call("/v3/lease/keepalive", json!({ "ID": lease.to_string() }))?;
        // The gateway streams: one `result` per keepalive; a TTL of 0 (left
        // out) means the lease has expired.
        if int(&r["result"]["TTL"]) == 0 {
            return Err(KvError::NoLease(lease));
        }
        Ok(())
    }
}

/// Watches a key (or, with `prefix`, every key under it) on one etcd
/// member, through the JSON gateway's streaming `/v3/watch` (one JSON
/// message a line), for as long as the stream lasts and `on` returns true.
/// `on(None)` when the watch starts: what changed before it may have been
/// missed, so the caller looks itself once; `on(Some(key))` for every
/// change after. Ok(false) when `on` asked to stop; Ok(true) when the
/// stream ended (the member went away, or the watch was cancelled); Err
/// when the member could not be reached. Blocks; `crate::node` runs it on
/// threads of its own, moving to the next member when one ends.
pub fn watch(
    endpoint: &str,
    key: &str,
    prefix: bool,
    mut on: impl FnMut(Option<String>) -> bool,
) -> Result<bool, String> {
    use std::io::BufRead;
    // No overall timeout: the stream is meant to stay open.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(2)))
        .build()
        .into();
    let mut request = json!({ "key": b64(key.as_bytes()) });
    if prefix {
        request["range_end"] = b64(&prefix_end(key.as_bytes())).into();
    }
    let body = json!({ "create_request": request });
    let url = format!("{}/v3/watch", endpoint.trim_end_matches('/'));
    let resp = agent
        .post(&url)
        .send_json(&body)
        .map_err(|e| format!("{url}: {e}"))?;
    let lines = std::io::BufReader::new(resp.into_body().into_reader()).lines();
    for line in lines {
        let Ok(msg) = serde_json::from_str::<Value>(&line.map_err(|e| format!("{url}: {e}"))?)
        else {
            break;
        };
        let result = &msg["result"];
        if result["canceled"] == true {
            break;
        }
        if result["created"] == true && !on(None) {
            return Ok(false);
        }
        for event in result["events"].as_array().into_iter().flatten() {
            let key = String::from_utf8_lossy(&unb64(&event["kv"]["key"])).into_owned();
            if !on(Some(key)) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_every_key_that_starts_with_it() {
        assert_eq!(prefix_end(b"/spendb/v1/"), b"/spendb/v10".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn proto3_json_numbers_read_as_strings_numbers_or_absent() {
        assert_eq!(int(&json!("7587878")), 7587878);
        assert_eq!(int(&json!(12)), 12);
        assert_eq!(int(&Value::Null), 0);
        let kv = key_value(&json!({"key": b64(b"k"), "value": b64(b"v"), "mod_revision": "9"}));
        assert_eq!(
            (kv.key.as_str(), kv.value, kv.mod_rev, kv.lease),
            ("k", b"v".to_vec(), 9, None)
        );
    }
}
