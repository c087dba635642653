//! SQL text helpers and row decoding shared by the table modules.
//!
//! Placeholders are `$1, $2, …` numbered in order of first appearance: PostgreSQL needs the
//! numbers, and sqlx's SQLite driver binds `$N` to the N-th argument, so one text serves both.

use std::fmt::Write as _;

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::{DbError, Result};
use crate::model::{Evaluation, Item, ItemStatus};

/// Rows per multi-row statement. Keeps every statement far below SQLite's 32,766 and
/// PostgreSQL's 65,535 bind parameters (at most 9 columns × 500 rows here).
pub(crate) const CHUNK: usize = 500;

/// `$first, $first+1, …` — `count` placeholders.
pub(crate) fn placeholders(first: usize, count: usize) -> String {
    let mut out = String::with_capacity(count * 5);
    for n in first..first + count {
        if n > first {
            out.push_str(", ");
        }
        // Writing into a String cannot fail.
        let _ = write!(out, "${n}");
    }
    out
}

/// `($first, …), (…), …` — `rows` tuples of `cols` placeholders, numbered on from `first`.
pub(crate) fn value_rows(first: usize, rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        out.push_str(&placeholders(first + r * cols, cols));
        out.push(')');
    }
    out
}

/// A stored counter as u64; counters only ever grow from 0, so a negative value cannot occur.
pub(crate) fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

/// The checked conversion of a caller's float: SQLite would store NaN as NULL and PostgreSQL
/// would accept it, so both reject it here alike.
pub(crate) fn finite(what: &str, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(DbError::Query(format!(
            "{what} must be finite, got {value}"
        )))
    }
}

/// The columns [`item_from_row`] expects, in order.
pub(crate) const ITEM_COLUMNS: &str = "id, category, text, provider, model, created_at_ms, \
     status, reason, impressions, weighted_impressions, selections";

pub(crate) fn item_from_row(row: &AnyRow) -> Result<Item> {
    Ok(Item {
        id: row.try_get(0)?,
        category: row.try_get(1)?,
        text: row.try_get(2)?,
        provider: row.try_get(3)?,
        model: row.try_get(4)?,
        created_at_ms: row.try_get(5)?,
        status: ItemStatus::parse(&row.try_get::<String, _>(6)?)?,
        reason: row.try_get(7)?,
        impressions: count(row.try_get(8)?),
        weighted_impressions: row.try_get(9)?,
        selections: count(row.try_get(10)?),
    })
}

/// The columns [`evaluation_from_row`] expects, in order.
pub(crate) const EVALUATION_COLUMNS: &str =
    "item_id, evaluator, model, score, reason, created_at_ms";

pub(crate) fn evaluation_from_row(row: &AnyRow) -> Result<Evaluation> {
    Ok(Evaluation {
        item_id: row.try_get(0)?,
        evaluator: row.try_get(1)?,
        model: row.try_get(2)?,
        score: row.try_get(3)?,
        reason: row.try_get(4)?,
        created_at_ms: row.try_get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(placeholders(1, 3), "$1, $2, $3");
        assert_eq!(placeholders(4, 1), "$4");
        assert_eq!(placeholders(2, 0), "");
    }

    #[test]
    fn value_rows_continue_numbering() {
        assert_eq!(value_rows(1, 2, 2), "($1, $2), ($3, $4)");
        assert_eq!(value_rows(3, 1, 3), "($3, $4, $5)");
    }

    #[test]
    fn negative_counts_clamp_to_zero() {
        assert_eq!(count(-1), 0);
        assert_eq!(count(7), 7);
    }

    #[test]
    fn non_finite_floats_are_rejected() {
        assert!(finite("score", f64::NAN).is_err());
        assert!(finite("score", f64::INFINITY).is_err());
        assert_eq!(finite("score", 2.5).ok(), Some(2.5));
    }
}
