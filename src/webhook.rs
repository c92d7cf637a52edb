//! Delivers fired alerts as JSON POSTs to their webhook, off the engine.
//!
//! A task polls the engine for undelivered alerts (ALERT list, which waits
//! like any read until what it saw is durable, so nothing is sent for an
//! alert a crash could still take back). Each is POSTed on a blocking thread
//! (ureq); a 2xx marks it delivered with an `AlertDelivered` ledger entry, so
//! it is never sent again, not even after a restart. A failure is retried
//! with exponential backoff (base × 2^(attempt-1), capped), for as long as
//! the alert is kept; the alerts for one URL go out in the order they fired,
//! so later ones wait while an earlier one is retried. The only duplicate possible is a crash between the
//! receiver's 2xx and that entry being durable; the payload's `id` lets a
//! receiver drop it.
//!
//! Cluster mode: a threshold alert is the cluster's (every node with the
//! rule checks it against the cluster's use, so each may fire it). Before
//! POSTing one, the node claims it in the store (`cluster::alerts`, through
//! `ClusterLink::claim_alert`): only the claimer sends it; a node that
//! finds it delivered records its own copy as delivered; a dead claimer's
//! claim is taken over. The POST carries `X-Spendb-Alert-Key` (scope, rule
//! key and period: the same on every node) and `X-Spendb-Node`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::engine::{AlertClaim, EngineHandle};
use crate::state::{Command, Value};

#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Where alerts of scopes without their own webhook go (None: kept
    /// undelivered, listed at /v1/alerts).
    pub default_url: Option<String>,
    pub timeout: Duration,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// How often the engine is asked for undelivered alerts.
    pub poll: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            default_url: None,
            timeout: Duration::from_secs(5),
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            poll: Duration::from_millis(250),
        }
    }
}

struct Retry {
    attempts: u32,
    next: Instant,
}

/// The backoff before attempt `attempts + 1`.
pub fn backoff(cfg: &WebhookConfig, attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(20);
    cfg.base_backoff.saturating_mul(factor).min(cfg.max_backoff)
}

/// Runs the dispatcher until the task is aborted.
pub async fn run(engine: EngineHandle, cfg: WebhookConfig) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(cfg.timeout))
        .build()
        .into();
    let mut retries: HashMap<u64, Retry> = HashMap::new();
    let mut warned_no_url = false;
    let mut warned_no_store = false;
    loop {
        tokio::time::sleep(cfg.poll).await;
        let list = Command::AlertList {
            after: 0,
            limit: 1000,
            undelivered: true,
            prefix: None,
        };
        let Value::Array(alerts) = engine.execute(vec![list]).await.remove(0) else {
            continue; // shutting down, or the ledger is failing: try later
        };
        retries.retain(|id, _| alerts.iter().any(|a| alert_id(a) == Some(*id)));
        let mut blocked = HashSet::new();
        for alert in alerts {
            let Some(id) = alert_id(&alert) else { continue };
            let url = match (alert.field("webhook"), &cfg.default_url) {
                (Some(Value::Str(u)), _) => u.clone(),
                (_, Some(u)) => u.clone(),
                _ => {
                    if !warned_no_url {
                        tracing::warn!("alert {id} has no webhook (set --alert-webhook or a scope's webhook); it stays listed at /v1/alerts");
                        warned_no_url = true;
                    }
                    continue;
                }
            };
            // One URL's alerts go out in order: a later one waits while an
            // earlier one is being retried.
            if blocked.contains(&url) {
                continue;
            }
            if retries.get(&id).is_some_and(|r| r.next > Instant::now()) {
                blocked.insert(url);
                continue;
            }
            // Cluster mode: a threshold alert is the cluster's; every node
            // may have fired it, one delivers it (`cluster::alerts`).
            let shared = match (engine.cluster_link(), alert_ident(&alert)) {
                (Some(link), Some(ident)) => Some((link, ident)),
                _ => None,
            };
            if let Some((link, (scope, key, period))) = &shared {
                let claim = link.claim_alert(scope, key, *period).await;
                match claim.unwrap_or_else(|_| Err("the cluster agent stopped".into())) {
                    Ok(AlertClaim::Mine) => {}
                    Ok(AlertClaim::Delivered { by }) => {
                        tracing::info!("alert {id}: node {by} delivered it for the cluster");
                        record_delivered(&engine, id).await;
                        continue;
                    }
                    Ok(AlertClaim::Held { .. }) => continue,
                    Err(e) => {
                        if !warned_no_store {
                            tracing::warn!("alert {id}: the cluster store cannot say who delivers it ({e}); waiting");
                            warned_no_store = true;
                        }
                        continue;
                    }
                }
            }
            let mut payload = crate::admin::json_of(&alert);
            payload["source"] = "spendb".into();
            let cluster_key = shared.as_ref().map(|(_, (scope, key, period))| {
                crate::cluster::alerts::alert_name(scope, key, *period)
            });
            let node = engine.cluster_link().map(|l| l.node().to_string());
            let post = {
                let agent = agent.clone();
                let url = url.clone();
                tokio::task::spawn_blocking(move || {
                    let mut req = agent.post(&url).header("X-Spendb-Alert-Id", id.to_string());
                    if let Some(k) = &cluster_key {
                        req = req.header("X-Spendb-Alert-Key", k);
                    }
                    if let Some(n) = &node {
                        req = req.header("X-Spendb-Node", n);
                    }
                    req.send_json(payload)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            };
            let metrics = &engine.stats.metrics;
            match post.await.unwrap_or_else(|e| Err(e.to_string())) {
                Ok(()) => {
                    metrics.webhook_delivered.fetch_add(1, Ordering::Relaxed);
                    retries.remove(&id);
                    if let Some((link, (scope, key, period))) = &shared {
                        let done = link.alert_delivered(scope, key, *period).await;
                        match done.unwrap_or_else(|_| Err("the cluster agent stopped".into())) {
                            Ok(true) => {}
                            Ok(false) => tracing::warn!(
                                "alert {id}: delivered, but another node had taken it over (it may deliver it too)"
                            ),
                            Err(e) => tracing::warn!(
                                "alert {id}: delivered, not recorded in the cluster store ({e}): another node may deliver it too"
                            ),
                        }
                    }
                    record_delivered(&engine, id).await;
                }
                Err(e) => {
                    metrics.webhook_failed.fetch_add(1, Ordering::Relaxed);
                    let r = retries.entry(id).or_insert(Retry {
                        attempts: 0,
                        next: Instant::now(),
                    });
                    r.attempts += 1;
                    let wait = backoff(&cfg, r.attempts);
                    r.next = Instant::now() + wait;
                    blocked.insert(url.clone());
                    tracing::warn!(
                        "alert {id}: POST {url} failed (attempt {}): {e}; retrying in {wait:?}",
                        r.attempts
                    );
                }
            }
        }
    }
}

/// Records alert `id` as delivered (an `AlertDelivered` entry), so it is
/// not sent again, not even after a restart.
async fn record_delivered(engine: &EngineHandle, id: u64) {
    let r = engine
        .execute(vec![Command::AlertDelivered { id }])
        .await
        .remove(0);
    if r.is_error() {
        tracing::warn!("alert {id} was delivered but not recorded as such: {r:?}");
    }
}

/// A threshold alert's scope, rule key and period: what makes it one
/// alert across a cluster's nodes.
fn alert_ident(v: &Value) -> Option<(String, String, u64)> {
    let text = |f| match v.field(f) {
        Some(Value::Str(s)) => Some(s.clone()),
        _ => None,
    };
    if text("rule")? != "threshold" {
        return None;
    }
    let period = match v.field("period") {
        Some(Value::Int(n)) => *n as u64,
        _ => return None,
    };
    Some((text("scope")?, text("key")?, period))
}

fn alert_id(v: &Value) -> Option<u64> {
    match v.field("id") {
        Some(Value::Int(n)) => Some(*n as u64),
        _ => None,
    }
}

/// Starts the dispatcher on the current runtime.
pub fn spawn(engine: EngineHandle, cfg: WebhookConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(engine, cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let cfg = WebhookConfig::default();
        let ms: Vec<u128> = (1..=9).map(|a| backoff(&cfg, a).as_millis()).collect();
        assert_eq!(
            ms,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
    }
}
