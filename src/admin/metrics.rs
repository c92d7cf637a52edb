//! `/metrics` in the Prometheus text exposition format (version 0.0.4):
//! the engine's counters, the response cache's statistics (summed over
//! namespaces), and `crate::metrics` (outcomes by dimension, latency per
//! command, group commit sizes and write times). Every label set is fixed
//! in advance: no per-scope, per-model or per-namespace labels, so the
//! number of series does not grow with the data.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::Ctx;
use crate::state::{Command, Value};

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(ctx): State<Ctx>) -> impl IntoResponse {
    let s = &ctx.engine.stats;
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::with_capacity(4096);
    metric(
        &mut out,
        "spendb_commands_total",
        "counter",
        "Commands applied by the engine.",
        l(&s.commands),
    );
    metric(
        &mut out,
        "spendb_group_commits_total",
        "counter",
        "Ledger batches written (group commits).",
        l(&s.batches),
    );
    metric(
        &mut out,
        "spendb_ledger_entries_total",
        "counter",
        "Ledger entries written since start.",
        l(&s.entries),
    );
    metric(
        &mut out,
        "spendb_ledger_syncs_total",
        "counter",
        "fdatasync calls on the ledger.",
        l(&s.syncs),
    );
    metric(
        &mut out,
        "spendb_ledger_write_errors_total",
        "counter",
        "Failed ledger writes or syncs.",
        l(&s.write_errors),
    );
    metric(
        &mut out,
        "spendb_writes_refused",
        "gauge",
        "1 while writes are refused after a failed ledger write (until a probe write succeeds).",
        s.degraded.load(Ordering::Relaxed) as u8,
    );
    metric(
        &mut out,
        "spendb_ledger_last_seq",
        "gauge",
        "Sequence number of the last durable ledger entry.",
        l(&s.last_seq),
    );
    metric(
        &mut out,
        "spendb_open_holds",
        "gauge",
        "Holds open now.",
        l(&s.open_holds),
    );
    let c = ctx.cache.stats(None);
    metric(
        &mut out,
        "spendb_cache_hits_total",
        "counter",
        "Cache hits since start, all namespaces.",
        c.hits,
    );
    metric(
        &mut out,
        "spendb_cache_misses_total",
        "counter",
        "Cache misses since start, all namespaces.",
        c.misses,
    );
    metric(
        &mut out,
        "spendb_cache_evictions_total",
        "counter",
        "Entries evicted by the namespaces' bounds.",
        c.evictions,
    );
    metric(
        &mut out,
        "spendb_cache_entries",
        "gauge",
        "Entries in the cache.",
        c.entries,
    );
    metric(
        &mut out,
        "spendb_cache_bytes",
        "gauge",
        "Bytes (keys and values) in the cache.",
        c.bytes,
    );
    metric(
        &mut out,
        "spendb_cache_saved_usd_total",
        "counter",
        "USD of the COST of every cache hit since start.",
        crate::state::money::format_signed_usd(c.saved as i128),
    );
    let v = ctx.cache.semantic().stats_where(|_| true);
    for (name, kind, help, value) in [
        (
            "spendb_semantic_cache_hits_total",
            "counter",
            "Semantic cache hits (CACHE.VGET) since start, all namespaces.",
            v.hits,
        ),
        (
            "spendb_semantic_cache_misses_total",
            "counter",
            "Semantic cache misses since start, all namespaces.",
            v.misses,
        ),
        (
            "spendb_semantic_cache_evictions_total",
            "counter",
            "Semantic cache entries evicted by the namespaces' bounds.",
            v.evictions,
        ),
        (
            "spendb_semantic_cache_entries",
            "gauge",
            "Entries in the semantic cache.",
            v.entries,
        ),
        (
            "spendb_semantic_cache_bytes",
            "gauge",
            "Bytes (vectors, values and keys) in the semantic cache.",
            v.bytes,
        ),
        (
            "spendb_semantic_cache_index_bytes",
            "gauge",
            "Bytes the semantic cache's index holds in memory.",
            v.index_bytes,
        ),
    ] {
        metric(&mut out, name, kind, help, value);
    }
    metric(
        &mut out,
        "spendb_semantic_cache_saved_usd_total",
        "counter",
        "USD of the COST of every semantic cache hit since start.",
        crate::state::money::format_signed_usd(v.saved as i128),
    );
    ctx.engine.stats.metrics.write(&mut out);
    spend_series(&ctx, &mut out).await;
    if let Some(shipper) = &ctx.archive {
        archive_metrics(&shipper.status(), &mut out);
    }
    if let Some(node) = &ctx.cluster {
        cluster_metrics(&node.view(), &mut out);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Settled spend by top-level scope and model: bounded by the state
/// (`MAX_SERIES_SCOPES` × `MAX_SERIES_MODELS`, the rest under `_other`).
async fn spend_series(ctx: &Ctx, out: &mut String) {
    let Value::Array(rows) = ctx
        .engine
        .execute(vec![Command::SpendSeries])
        .await
        .remove(0)
    else {
        return;
    };
    let metrics = [
        (
            "spendb_spend_requests_total",
            "requests",
            "Settled calls (commits and spends) by top-level scope and model.",
        ),
        (
            "spendb_spend_tokens_total",
            "tokens",
            "Settled tokens (input + output) by top-level scope and model.",
        ),
        (
            "spendb_spend_usd_total",
            "cost",
            "Settled USD by top-level scope and model.",
        ),
    ];
    for (name, field, help) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for r in &rows {
            let (Some(Value::Str(scope)), Some(Value::Str(model))) =
                (r.field("scope"), r.field("model"))
            else {
                continue;
            };
            let v = match r.field(field) {
                Some(Value::Int(n)) => n.to_string(),
                Some(Value::Money(n)) => crate::state::money::format_signed_usd(*n),
                _ => continue,
            };
            let _ = writeln!(
                out,
                "{name}{{scope=\"{}\",model=\"{}\"}} {v}",
                label(scope),
                label(model)
            );
        }
    }
}

/// Cluster mode's counters (the agent's) and gauges.
fn cluster_metrics(v: &crate::node::NodeView, out: &mut String) {
    let st = &v.stats;
    let counters = [
        (
            "spendb_cluster_registrations_total",
            "Registrations of this node (a new epoch each).",
            st.registrations,
        ),
        (
            "spendb_cluster_refills_total",
            "Refills the store granted.",
            st.refills,
        ),
        (
            "spendb_cluster_room_granted_total",
            "Room the store granted this node (the limit's unit).",
            st.room_granted,
        ),
        (
            "spendb_cluster_reports_total",
            "Usage reports the store took.",
            st.reports,
        ),
        (
            "spendb_cluster_give_backs_total",
            "Idle room given back to a low pool.",
            st.give_backs,
        ),
        (
            "spendb_cluster_recalls_total",
            "Recalls of idle room this node sent when a pool ran dry.",
            st.recalls,
        ),
        (
            "spendb_cluster_undeclared_total",
            "Grants an idle node declared no unreported allowance for.",
            st.undeclared,
        ),
        (
            "spendb_cluster_absorbed_total",
            "Usage booked past this node's grants (SPEND, a COMMIT past its hold or late) that it charged to the shared pools (the limit's unit).",
            st.absorbed,
        ),
        (
            "spendb_cluster_reclaims_total",
            "Grants of dead nodes this node reclaimed.",
            st.reclaims,
        ),
        (
            "spendb_cluster_stalls_total",
            "RESERVEs that waited for the store (room or a report).",
            st.waits,
        ),
        (
            "spendb_cluster_store_errors_total",
            "Store requests that failed.",
            st.store_errors,
        ),
        (
            "spendb_cluster_definitions_applied_total",
            "Budget and price definitions applied from the store.",
            st.definitions_applied,
        ),
    ];
    metric(
        out,
        "spendb_cluster_store_ops_total",
        "counter",
        "Requests this node sent to the store.",
        v.store_ops,
    );
    for (name, help, value) in counters {
        metric(out, name, "counter", help, value);
    }
    metric(
        out,
        "spendb_cluster_registered",
        "gauge",
        "1 while this node holds a live registration.",
        u8::from(v.registered),
    );
    metric(
        out,
        "spendb_cluster_store_reachable",
        "gauge",
        "1 while the last store request was answered.",
        u8::from(v.store_reachable),
    );
    metric(
        out,
        "spendb_cluster_grants",
        "gauge",
        "Global limits this node holds a grant of.",
        v.grants.len(),
    );
}

/// `--archive`: what is shipped and how far behind (docs/OPERATIONS.md,
/// "Archive"; the alert rule in deploy/).
fn archive_metrics(s: &crate::store::archive::ArchiveStatus, out: &mut String) {
    let gauges: [(&str, &str, u64); 3] = [
        (
            "spendb_archive_shipped_seq",
            "Every ledger entry through this seq is in the archive, confirmed by the store.",
            s.shipped_seq,
        ),
        (
            "spendb_archive_lag_entries",
            "Durable ledger entries not in the archive yet.",
            s.lag_entries,
        ),
        (
            "spendb_archive_refused",
            "1 when the archive holds more of this node's ledger than its data dir (nothing is shipped).",
            u64::from(s.refused.is_some()),
        ),
    ];
    for (name, help, value) in gauges {
        metric(out, name, "gauge", help, value);
    }
    metric(
        out,
        "spendb_archive_lag_seconds",
        "gauge",
        "Age of the oldest durable ledger entry not in the archive yet (0 when none).",
        s.lag_ms as f64 / 1000.0,
    );
    metric(
        out,
        "spendb_archive_lagging",
        "gauge",
        "1 while the archive's lag is past --archive-lag-alert.",
        u8::from(s.lagging),
    );
    let counters: [(&str, &str, u64); 4] = [
        (
            "spendb_archive_chunks_total",
            "Ledger chunks shipped since start.",
            s.chunks,
        ),
        (
            "spendb_archive_bytes_total",
            "Bytes of ledger chunks shipped since start.",
            s.bytes,
        ),
        (
            "spendb_archive_errors_total",
            "Failed tries to write to the archive (each retried).",
            s.errors,
        ),
        (
            "spendb_archive_removed_segments_total",
            "Segments removed from archive/ on disk once the archive held them.",
            s.removed_segments,
        ),
    ];
    for (name, help, value) in counters {
        metric(out, name, "counter", help, value);
    }
}
