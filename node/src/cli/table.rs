//! Aligned text tables for people: a header, rows of cells, and notes that
//! stand for a row which could not be filled (a node that did not answer).

use std::fmt;

/// One line of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// Cells, one per column.
    Cells(Vec<String>),
    /// The first cell, then free text across the other columns.
    Note(String, String),
}

/// A table: columns as wide as their widest cell, two spaces apart, the
/// last column not padded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Row>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row of cells (missing ones are empty, extra ones are dropped).
    pub fn row(&mut self, cells: impl IntoIterator<Item = impl Into<String>>) {
        let mut cells: Vec<String> = cells.into_iter().map(Into::into).collect();
        cells.resize(self.header.len(), String::new());
        self.rows.push(Row::Cells(cells));
    }

    /// Adds a note: `first` in the first column, `text` after it.
    pub fn note(&mut self, first: impl Into<String>, text: impl Into<String>) {
        self.rows.push(Row::Note(first.into(), text.into()));
    }

    /// Whether it has no row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            match row {
                Row::Cells(cells) => {
                    for (width, cell) in widths.iter_mut().zip(cells) {
                        *width = (*width).max(cell.chars().count());
                    }
                }
                Row::Note(first, _) => widths[0] = widths[0].max(first.chars().count()),
            }
        }
        widths
    }
}

fn line(f: &mut fmt::Formatter<'_>, widths: &[usize], cells: &[String]) -> fmt::Result {
    let last = cells.len().saturating_sub(1);
    let mut text = String::new();
    for (index, (cell, width)) in cells.iter().zip(widths).enumerate() {
        if index == last {
            text.push_str(cell);
        } else {
            text.push_str(&format!("{cell:<width$}  "));
        }
    }
    writeln!(f, "{}", text.trim_end())
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let widths = self.widths();
        line(f, &widths, &self.header)?;
        for row in &self.rows {
            match row {
                Row::Cells(cells) => line(f, &widths, cells)?,
                Row::Note(first, text) => line(f, &widths, &[first.clone(), text.clone()])?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut table = Table::new(&["NODE", "STATE", "LAST EVENT"]);
        table.row(["a", "UP", "started"]);
        table.row(["node-b", "STOP", ""]);
        assert_eq!(
            table.to_string(),
            "NODE    STATE  LAST EVENT\n\
             a       UP     started\n\
             node-b  STOP\n"
        );
    }

    #[test]
    fn a_note_spans_the_columns_after_the_first_and_widens_none() {
        let mut table = Table::new(&["NODE", "MODULE", "STATE"]);
        table.row(["a", "web", "UP"]);
        table.note("c", "unreachable: connection refused");
        assert_eq!(
            table.to_string(),
            "NODE  MODULE  STATE\n\
             a     web     UP\n\
             c     unreachable: connection refused\n"
        );
    }

    #[test]
    fn short_rows_are_padded_and_long_ones_cut() {
        let mut table = Table::new(&["A", "B"]);
        table.row(["1"]);
        table.row(["1", "2", "3"]);
        assert_eq!(table.to_string(), "A  B\n1\n1  2\n");
    }
}
