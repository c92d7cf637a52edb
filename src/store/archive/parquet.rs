//! The ledger as Parquet (`--archive-parquet`), for warehouses (DuckDB,
//! ClickHouse, BigQuery, Athena) that read the books without spendb.
//!
//! One row per ledger entry; one file per shipped chunk and UTC day, under
//! `parquet/node=<node>/day=<YYYY-MM-DD>/<first>-<last>.parquet` (Hive
//! partitions: `node` and `day` come from the path). Written with the
//! `parquet` crate's column writer (no Arrow arrays needed for 15 flat
//! columns), Snappy-compressed. The columns (docs/OPERATIONS.md):
//!
//! | column | type | |
//! |---|---|---|
//! | `seq` | INT64 | the entry's ledger seq |
//! | `ts` | TIMESTAMP(MILLIS, UTC) | when it was written |
//! | `kind` | STRING | `hold`, `commit`, `spend`, `release`, `expire`, `saved`, … |
//! | `id` | STRING | the hold (hold, commit, release, expire; a SPEND's id) |
//! | `scope` | STRING | hold, spend, saved, budget_set/del, alert_rules, step |
//! | `model` | STRING | hold, spend, price_set |
//! | `run` | STRING | hold, spend, step, run_end |
//! | `input_tokens` … `cache_write_tokens` | INT64 | commit, spend (hold: input and output asked) |
//! | `cost_nusd` | INT64 | commit, spend: what was booked; saved: what a cache hit saved (nano-USD) |
//! | `held_nusd` | INT64 | hold: the cost held |
//! | `late` | BOOLEAN | commit: it came after its hold expired |
//! | `outcome` | STRING | run_end: `success`, `failure` or null |
//! | `entry` | STRING | the whole entry as `spendb ledger export` prints it |
//!
//! A commit names its hold by `id`; its scope and model are the hold row's
//! (`JOIN … USING (id)` within the node; an id is not reused while its hold
//! can still be committed).

use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use crate::state::limit::Dim;
use crate::state::{Entry, EntryKind};

const SCHEMA: &str = "
message spendb_ledger {
  REQUIRED INT64 seq;
  REQUIRED INT64 ts (TIMESTAMP(MILLIS,true));
  REQUIRED BYTE_ARRAY kind (UTF8);
  OPTIONAL BYTE_ARRAY id (UTF8);
  OPTIONAL BYTE_ARRAY scope (UTF8);
  OPTIONAL BYTE_ARRAY model (UTF8);
  OPTIONAL BYTE_ARRAY run (UTF8);
  OPTIONAL INT64 input_tokens;
  OPTIONAL INT64 output_tokens;
  OPTIONAL INT64 cached_tokens;
  OPTIONAL INT64 cache_write_tokens;
  OPTIONAL INT64 cost_nusd;
  OPTIONAL INT64 held_nusd;
  OPTIONAL BOOLEAN late;
  OPTIONAL BYTE_ARRAY outcome (UTF8);
  REQUIRED BYTE_ARRAY entry (UTF8);
}";

/// One entry's row.
#[derive(Default)]
struct Row {
    id: Option<String>,
    scope: Option<String>,
    model: Option<String>,
    run: Option<String>,
    tokens: [Option<i64>; 4],
    cost: Option<i64>,
    held: Option<i64>,
    late: Option<bool>,
    outcome: Option<String>,
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn row(e: &Entry) -> Row {
    let usage = |u: &crate::state::price::Usage| {
        [
            Some(int(u.input)),
            Some(int(u.output)),
            Some(int(u.cached)),
            Some(int(u.cache_write)),
        ]
    };
    match &e.kind {
        EntryKind::Hold {
            id,
            scope,
            model,
            input,
            output,
            amounts,
            run,
            ..
        } => Row {
            id: Some(id.clone()),
            scope: Some(scope.clone()),
            model: Some(model.clone()),
            run: run.clone(),
            tokens: [Some(int(*input)), Some(int(*output)), None, None],
            held: Some(int(amounts.get(Dim::Cost))),
            ..Row::default()
        },
        EntryKind::Commit {
            id,
            usage: u,
            cost,
            late,
        } => Row {
            id: Some(id.clone()),
            tokens: usage(u),
            cost: Some(int(*cost)),
            late: Some(*late),
            ..Row::default()
        },
        EntryKind::Spend {
            id,
            scope,
            model,
            usage: u,
            cost,
            run,
        } => Row {
            id: id.clone(),
            scope: Some(scope.clone()),
            model: Some(model.clone()),
            run: run.clone(),
            tokens: usage(u),
            cost: Some(int(*cost)),
            ..Row::default()
        },
        EntryKind::Release { id } | EntryKind::Expire { id } => Row {
            id: Some(id.clone()),
            ..Row::default()
        },
        EntryKind::Saved { scope, cost } => Row {
            scope: Some(scope.clone()),
            cost: Some(int(*cost)),
            ..Row::default()
        },
        EntryKind::BudgetSet { scope, .. }
        | EntryKind::BudgetDel { scope }
        | EntryKind::AlertRules { scope, .. } => Row {
            scope: Some(scope.clone()),
            ..Row::default()
        },
        EntryKind::PriceSet { model, .. } => Row {
            model: Some(model.clone()),
            ..Row::default()
        },
        EntryKind::Step { run, scope, .. } | EntryKind::StepDenied { run, scope } => Row {
            scope: scope.clone(),
            run: Some(run.clone()),
            ..Row::default()
        },
        EntryKind::RunEnd { run, outcome } => Row {
            run: Some(run.clone()),
            outcome: outcome.map(|o| o.as_str().to_string()),
            ..Row::default()
        },
        EntryKind::Alert(_) | EntryKind::AlertDelivered { .. } | EntryKind::Grant(_) => {
            Row::default()
        }
    }
}

const DAY_MS: u64 = 86_400_000;

/// A UTC day (days since the epoch) as `YYYY-MM-DD`.
fn day_name(day: u64) -> String {
    chrono::DateTime::from_timestamp_millis(int(day * DAY_MS))
        .map_or_else(|| "1970-01-01".into(), |d| d.format("%Y-%m-%d").to_string())
}

/// The Parquet files of a chunk's entries: (key under the node's parquet
/// prefix, bytes), one per UTC day.
pub fn by_day(entries: &[Entry]) -> Result<Vec<(String, bytes::Bytes)>, String> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < entries.len() {
        // Days compared as numbers; the name is formatted once a file.
        let d = entries[start].ts / DAY_MS;
        let end = start
            + entries[start..]
                .iter()
                .position(|e| e.ts / DAY_MS != d)
                .unwrap_or(entries.len() - start);
        let part = &entries[start..end];
        let key = format!(
            "day={}/{:020}-{:020}.parquet",
            day_name(d),
            part[0].seq,
            part[part.len() - 1].seq
        );
        let file = encode(part).map_err(|e| format!("Parquet: {e}"))?;
        out.push((key, file.into()));
        start = end;
    }
    Ok(out)
}

/// Nullable column values: the present ones, and a definition level each.
fn optional<T: Clone>(values: impl Iterator<Item = Option<T>>) -> (Vec<T>, Vec<i16>) {
    let mut present = Vec::new();
    let mut levels = Vec::new();
    for v in values {
        levels.push(v.is_some() as i16);
        present.extend(v);
    }
    (present, levels)
}

fn text(s: &str) -> ByteArray {
    ByteArray::from(s.as_bytes().to_vec())
}

/// One Parquet file of these entries.
pub fn encode(entries: &[Entry]) -> parquet::errors::Result<Vec<u8>> {
    let schema = Arc::new(parse_message_type(SCHEMA)?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by("spendb".into())
            .build(),
    );
    let rows: Vec<Row> = entries.iter().map(row).collect();
    let mut out = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut out, schema, props)?;
    let mut group = writer.next_row_group()?;
    let mut column = 0;
    while let Some(mut col) = group.next_column()? {
        let strs = |f: &dyn Fn(&Row) -> Option<String>| {
            optional(rows.iter().map(|r| f(r).map(|s| text(&s))))
        };
        let ints = |f: &dyn Fn(&Row) -> Option<i64>| optional(rows.iter().map(f));
        match column {
            0 => {
                let v: Vec<i64> = entries.iter().map(|e| int(e.seq)).collect();
                col.typed::<Int64Type>().write_batch(&v, None, None)?;
            }
            1 => {
                let v: Vec<i64> = entries.iter().map(|e| int(e.ts)).collect();
                col.typed::<Int64Type>().write_batch(&v, None, None)?;
            }
            2 => {
                let v: Vec<ByteArray> = entries.iter().map(|e| text(e.kind.name())).collect();
                col.typed::<ByteArrayType>().write_batch(&v, None, None)?;
            }
            3..=6 => {
                let (v, d) = strs(&|r: &Row| match column {
                    3 => r.id.clone(),
                    4 => r.scope.clone(),
                    5 => r.model.clone(),
                    _ => r.run.clone(),
                });
                col.typed::<ByteArrayType>()
                    .write_batch(&v, Some(&d), None)?;
            }
            7..=12 => {
                let (v, d) = ints(&|r: &Row| match column {
                    7..=10 => r.tokens[column - 7],
                    11 => r.cost,
                    _ => r.held,
                });
                col.typed::<Int64Type>().write_batch(&v, Some(&d), None)?;
            }
            13 => {
                let (v, d) = optional(rows.iter().map(|r| r.late));
                col.typed::<BoolType>().write_batch(&v, Some(&d), None)?;
            }
            14 => {
                let (v, d) = strs(&|r: &Row| r.outcome.clone());
                col.typed::<ByteArrayType>()
                    .write_batch(&v, Some(&d), None)?;
            }
            _ => {
                let v: Vec<ByteArray> = entries
                    .iter()
                    .map(|e| text(&crate::store::format::ledger::entry_json(e).to_string()))
                    .collect();
                col.typed::<ByteArrayType>().write_batch(&v, None, None)?;
            }
        }
        col.close()?;
        column += 1;
    }
    group.close()?;
    writer.close()?;
    Ok(out)
}
