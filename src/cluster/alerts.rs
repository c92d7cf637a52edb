//! Cluster mode: one delivery of an alert per cluster (issue #29 part 3).
//!
//! Every node that has a scope's rules checks its thresholds against the
//! cluster's use (`State::alerts_seen`), so each may fire the same alert
//! (the same scope, rule key and period) into its own ledger. Before its
//! webhook task POSTs one, it claims the alert in the store:
//! `alert/<scope|key|period>` → `{node, delivered}`, created if absent.
//!
//! - absent: this node creates it and delivers (`Claim::Mine`);
//! - this node's: it delivers (again after a restart: its ledger still
//!   has the alert undelivered);
//! - delivered by any node: this node records its copy as delivered and
//!   sends nothing (`Claim::Delivered`);
//! - another live node's, not delivered: it waits (`Claim::Held`); that
//!   node delivers, or dies;
//! - a dead node's (no registration: its lease ran out), not delivered:
//!   this node takes the claim over, guarded by the revision it read, so
//!   two nodes cannot both take it (`Claim::Mine`).
//!
//! After the receiver's 2xx the owner writes `delivered` (guarded by the
//! revision its claim holds). The one duplicate left is a crash between
//! the 2xx and that write; the POST carries `X-Spendb-Alert-Key` so a
//! receiver can drop it. A node that cannot reach the store waits rather
//! than risk a second delivery.

use serde::{Deserialize, Serialize};

use super::escrow::{decode, node_key, segment, PREFIX};
use super::kv::{Compare, GlobalStore, KvError, Op};

/// Who claimed an alert, and whether it was delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimV1 {
    pub node: String,
    pub delivered: bool,
}

/// What a node may do with an alert it fired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Deliver it.
    Mine,
    /// Delivered already (by this node or another): record it, send nothing.
    Delivered { by: String },
    /// Another live node holds it: wait.
    Held { by: String },
}

/// One alert's name across the cluster: its scope, rule key and period
/// (the webhook's `X-Spendb-Alert-Key`).
pub fn alert_name(scope: &str, key: &str, period: u64) -> String {
    format!("{scope}|{key}|{period}")
}

/// The store's key of one alert (`alert_name`, as one key segment).
pub fn alert_key(scope: &str, key: &str, period: u64) -> String {
    format!("{PREFIX}alert/{}", segment(&alert_name(scope, key, period)))
}

fn put(key: &str, c: &ClaimV1) -> Op {
    Op::Put {
        key: key.to_string(),
        value: serde_json::to_vec(c).expect("claims encode"),
        lease: None,
    }
}

/// Claims the alert at `key` for `me`, or says who has it.
pub fn claim(store: &mut dyn GlobalStore, me: &str, key: &str) -> Result<Claim, KvError> {
    // A lost race is read again; three in a row is another node's turn.
    for _ in 0..3 {
        let kv = store.get(key)?;
        let (c, rev): (ClaimV1, _) = decode(&kv)?;
        if kv.is_some() && c.delivered {
            return Ok(Claim::Delivered { by: c.node });
        }
        if kv.is_some() && c.node == me {
            return Ok(Claim::Mine);
        }
        if kv.is_some() && store.get(&node_key(&c.node))?.is_some() {
            return Ok(Claim::Held { by: c.node });
        }
        // Absent (rev 0), or a dead node's: take it, if nobody else did.
        let mine = ClaimV1 {
            node: me.to_string(),
            delivered: false,
        };
        if store.txn(&[Compare::ModRev(key.to_string(), rev)], &[put(key, &mine)])? {
            return Ok(Claim::Mine);
        }
    }
    let (c, _): (ClaimV1, _) = decode(&store.get(key)?)?;
    Ok(Claim::Held { by: c.node })
}

/// Records that `me` delivered the alert at `key` (if the claim is still
/// its own: false when another node took it over meanwhile).
pub fn delivered(store: &mut dyn GlobalStore, me: &str, key: &str) -> Result<bool, KvError> {
    let kv = store.get(key)?;
    let (c, rev): (ClaimV1, _) = decode(&kv)?;
    if kv.is_some() && c.node != me {
        return Ok(c.delivered);
    }
    let done = ClaimV1 {
        node: me.to_string(),
        delivered: true,
    };
    store.txn(&[Compare::ModRev(key.to_string(), rev)], &[put(key, &done)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::kv::MemStore;

    fn register(s: &mut MemStore, node: &str) {
        assert!(s
            .txn(
                &[],
                &[Op::Put {
                    key: node_key(node),
                    value: b"{\"epoch\":1}".to_vec(),
                    lease: None,
                }]
            )
            .unwrap());
    }

    #[test]
    fn one_node_delivers_a_dead_ones_claim_is_taken_over_and_delivered_is_final() {
        let mut s = MemStore::new(0);
        register(&mut s, "a");
        register(&mut s, "b");
        let k = alert_key("org:x/t", "threshold:50:tokens:per_day", 86_400_000);
        assert!(
            k.ends_with("org:x%2Ft|threshold:50:tokens:per_day|86400000"),
            "{k}"
        );
        assert_eq!(claim(&mut s, "a", &k).unwrap(), Claim::Mine);
        assert_eq!(
            claim(&mut s, "a", &k).unwrap(),
            Claim::Mine,
            "again: still a's"
        );
        assert_eq!(
            claim(&mut s, "b", &k).unwrap(),
            Claim::Held { by: "a".into() }
        );
        // a dies before it delivered: b takes the claim over, a cannot
        // record a delivery on it any more.
        assert!(s.txn(&[], &[Op::Delete(node_key("a"))]).unwrap());
        assert_eq!(claim(&mut s, "b", &k).unwrap(), Claim::Mine);
        assert!(!delivered(&mut s, "a", &k).unwrap());
        assert!(delivered(&mut s, "b", &k).unwrap());
        for n in ["a", "b", "c"] {
            assert_eq!(
                claim(&mut s, n, &k).unwrap(),
                Claim::Delivered { by: "b".into() }
            );
        }
        // Another period is another alert.
        let next = alert_key("org:x/t", "threshold:50:tokens:per_day", 2 * 86_400_000);
        assert_eq!(claim(&mut s, "b", &next).unwrap(), Claim::Mine);
        // Delivered with no claim read first (a claim lost in a restart).
        let other = alert_key("org:y", "threshold:80:cost:per_month", 0);
        assert!(delivered(&mut s, "a", &other).unwrap());
        assert_eq!(
            claim(&mut s, "b", &other).unwrap(),
            Claim::Delivered { by: "a".into() }
        );
    }
}
