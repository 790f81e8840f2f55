//! Per-participant label counts of a partitioning, for logs and reports.
//!
//! `counts[j][g]` is how many of participant `j`'s examples carry label
//! `groups[g]` (labels sorted; examples without a label count under `(none)`).
//! `Display` prints one row per participant: its id, its total, then one column
//! per label, each column as wide as its header or its largest number.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Result};

/// The label written for examples without a group.
pub const NO_GROUP: &str = "(none)";

/// Label counts per participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupHistogram {
    pub groups: Vec<String>,
    /// `[participant][group]`.
    pub counts: Vec<Vec<usize>>,
}

impl GroupHistogram {
    /// Counts the labels of each participant's examples; an index out of range
    /// of `groups` is an error.
    pub fn new(partitions: &[Vec<usize>], groups: &[Option<&str>]) -> Result<Self> {
        let mut columns: BTreeMap<&str, usize> = BTreeMap::new();
        for part in partitions {
            for &idx in part {
                let label = groups.get(idx).ok_or_else(|| {
                    Error::param(
                        "partitions",
                        format!(
                            "example index {idx} out of range for {} examples",
                            groups.len()
                        ),
                    )
                })?;
                columns.insert(label.unwrap_or(NO_GROUP), 0);
            }
        }
        for (col, value) in columns.values_mut().enumerate() {
            *value = col;
        }
        let mut counts = vec![vec![0usize; columns.len()]; partitions.len()];
        for (row, part) in counts.iter_mut().zip(partitions) {
            for &idx in part {
                let label = groups[idx].unwrap_or(NO_GROUP);
                row[columns[label]] += 1;
            }
        }
        Ok(GroupHistogram {
            groups: columns.keys().map(|s| s.to_string()).collect(),
            counts,
        })
    }

    /// Number of examples of participant `j`.
    pub fn total(&self, participant: usize) -> usize {
        self.counts
            .get(participant)
            .map_or(0, |row| row.iter().sum())
    }
}

impl fmt::Display for GroupHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = |v: usize| v.to_string().len();
        let id_width = "participant".len().max(digits(self.counts.len()));
        let totals: Vec<usize> = (0..self.counts.len()).map(|j| self.total(j)).collect();
        let total_width = "n"
            .len()
            .max(totals.iter().copied().map(digits).max().unwrap_or(1));
        let widths: Vec<usize> = self
            .groups
            .iter()
            .enumerate()
            .map(|(g, name)| {
                let widest = self
                    .counts
                    .iter()
                    .map(|row| digits(row[g]))
                    .max()
                    .unwrap_or(1);
                name.len().max(widest)
            })
            .collect();
        write!(f, "{:>id_width$}  {:>total_width$}", "participant", "n")?;
        for (name, w) in self.groups.iter().zip(&widths) {
            write!(f, "  {name:>w$}")?;
        }
        writeln!(f)?;
        for (j, row) in self.counts.iter().enumerate() {
            write!(f, "{j:>id_width$}  {:>total_width$}", totals[j])?;
            for (count, w) in row.iter().zip(&widths) {
                write!(f, "  {count:>w$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_table() {
        let groups = [Some("b"), Some("a"), None, Some("a"), Some("b")];
        let parts = vec![vec![0, 1, 3], vec![2, 4]];
        let h = GroupHistogram::new(&parts, &groups).unwrap();
        assert_eq!(h.groups, ["(none)", "a", "b"]);
        assert_eq!(h.counts, vec![vec![0, 2, 1], vec![1, 0, 1]]);
        assert_eq!((h.total(0), h.total(1)), (3, 2));
        let table = h.to_string();
        let expected = "participant  n  (none)  a  b\n          0  3       0  2  1\n          1  2       1  0  1\n";
        assert_eq!(table, expected);
        assert!(GroupHistogram::new(&[vec![9]], &groups).is_err());
    }
}
