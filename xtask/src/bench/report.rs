//! What a scenario returns and how `BENCHMARKS.md` shows it: one table per scenario, one row
//! per variant, each measured column as `median (min–max)` with its ratio to the bare row.

use std::fmt::Write as _;

use super::stats::{Sample, fmt, spread};

/// One variant of a scenario (bare, orb8, bpftrace, ...).
#[derive(Debug)]
pub struct Row {
    /// What ran.
    pub name: String,
    /// One sample per column of its section.
    pub values: Vec<Sample>,
    /// The exact command that produced it (as a shell line).
    pub command: String,
}

/// One scenario: a table of variants.
#[derive(Debug, Default)]
pub struct Section {
    /// Heading.
    pub title: String,
    /// What is measured and how, in a sentence or two.
    pub method: String,
    /// Column headings (with units).
    pub columns: Vec<String>,
    /// Index of the row the ratios are relative to (the bare run), if any.
    pub base: Option<usize>,
    /// The variants.
    pub rows: Vec<Row>,
    /// Remarks under the table (aims, why an aim is not met).
    pub notes: Vec<String>,
}

impl Section {
    /// Ratio of row `r`'s median to the base row's in column `c`.
    pub fn ratio(&self, r: usize, c: usize) -> Option<f64> {
        let b = self.rows.get(self.base?)?.values.get(c)?.median();
        let v = self.rows.get(r)?.values.get(c)?.median();
        (b > 0.0).then_some(v / b)
    }

    /// Markdown: heading, method, table, notes.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "## {}\n\n{}\n", self.title, self.method);
        let mut head = String::from("| variant |");
        let mut rule = String::from("|---|");
        for c in &self.columns {
            let _ = write!(head, " {c} |");
            rule.push_str("---|");
            if self.base.is_some() {
                head.push_str(" ratio |");
                rule.push_str("---|");
            }
        }
        head.push_str(" command |");
        rule.push_str("---|");
        let _ = writeln!(s, "{head}\n{rule}");
        for (r, row) in self.rows.iter().enumerate() {
            let _ = write!(s, "| {} |", row.name);
            for (c, v) in row.values.iter().enumerate() {
                let _ = write!(s, " {} |", spread(v));
                if self.base.is_some() {
                    let ratio = self
                        .ratio(r, c)
                        .map_or("-".into(), |x| format!("{}x", fmt(x)));
                    let _ = write!(s, " {ratio} |");
                }
            }
            let _ = writeln!(s, " `{}` |", row.command.replace('|', "\\|"));
        }
        for n in &self.notes {
            let _ = writeln!(s, "\n{n}");
        }
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_to_the_base_row() {
        let sec = Section {
            title: "t".into(),
            method: "m".into(),
            columns: vec!["ns/call".into()],
            base: Some(0),
            rows: vec![
                Row {
                    name: "bare".into(),
                    values: vec![Sample(vec![100.0, 120.0, 80.0])],
                    command: "loop".into(),
                },
                Row {
                    name: "traced".into(),
                    values: vec![Sample(vec![200.0, 210.0, 190.0])],
                    command: "a | b".into(),
                },
            ],
            notes: vec![],
        };
        assert_eq!(sec.ratio(1, 0), Some(2.0));
        let md = sec.markdown();
        assert!(
            md.contains("| traced | 200 (190–210) | 2.00x | `a \\| b` |"),
            "{md}"
        );
    }
}
