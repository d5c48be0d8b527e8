//! Where each row of a bulk run stands, in a few bytes per row: its line, its target and its
//! state, plus one map from request_id to row. This is all a run keeps of the file; the rows
//! themselves are read again from the file when they are published and when the results are
//! written.

use std::collections::HashMap;

/// The state of one row during a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not published: the row breaks a rule, or repeats an earlier row's request_id.
    Invalid,
    /// Valid, not known to orgprov yet: to be published.
    Ready,
    /// Published by this run; no outcome yet.
    Published,
    /// Known to orgprov before this run and still in work (in the requests stream already,
    /// held by a worker): not published again.
    InWork,
    Provisioned,
    Failed,
}

impl State {
    /// Waiting for an outcome (or for its publish).
    pub fn is_open(self) -> bool {
        matches!(self, State::Ready | State::Published | State::InWork)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub line: u64,
    /// Index into [`Ledger::targets`].
    pub target: u16,
    pub state: State,
}

/// Every row of the file, in order.
#[derive(Debug, Default)]
pub struct Ledger {
    pub entries: Vec<Entry>,
    index: HashMap<Box<str>, u32>,
    /// The targets the valid rows name.
    pub targets: Vec<String>,
}

impl Ledger {
    /// Adds a row that broke a rule.
    pub fn push_invalid(&mut self, line: u64) {
        self.entries.push(Entry { line, target: 0, state: State::Invalid });
    }

    /// Adds a valid row; when its request_id is already taken by an earlier row, adds it as
    /// invalid and gives that row's line.
    pub fn push_valid(&mut self, line: u64, request_id: &str, target: &str) -> Result<(), u64> {
        if let Some(&first) = self.index.get(request_id) {
            self.push_invalid(line);
            return Err(self.entries[first as usize].line);
        }
        let target = match self.targets.iter().position(|t| t == target) {
            Some(i) => i,
            None => {
                self.targets.push(target.to_owned());
                self.targets.len() - 1
            }
        };
        let row = self.entries.len() as u32;
        self.index.insert(request_id.into(), row);
        self.entries.push(Entry { line, target: target as u16, state: State::Ready });
        Ok(())
    }

    /// The row holding `request_id`.
    pub fn row_of(&self, request_id: &str) -> Option<usize> {
        self.index.get(request_id).map(|&i| i as usize)
    }

    /// The request_ids of the rows in one of `states`, in batches of at most `batch`.
    pub fn ids_in(&self, states: &[State], batch: usize) -> Vec<Vec<String>> {
        let mut batches = Vec::new();
        let mut current = Vec::new();
        for (id, &row) in &self.index {
            if states.contains(&self.entries[row as usize].state) {
                current.push(id.to_string());
                if current.len() == batch {
                    batches.push(std::mem::take(&mut current));
                }
            }
        }
        if !current.is_empty() {
            batches.push(current);
        }
        batches
    }

    /// Sets the state of `request_id`'s row; returns its previous state.
    pub fn set(&mut self, request_id: &str, state: State) -> Option<State> {
        let row = self.row_of(request_id)?;
        Some(std::mem::replace(&mut self.entries[row].state, state))
    }

    pub fn count(&self, state: State) -> u64 {
        self.entries.iter().filter(|e| e.state == state).count() as u64
    }

    /// Open rows per target (same order as [`Ledger::targets`]).
    pub fn open_per_target(&self) -> Vec<u64> {
        let mut open = vec![0; self.targets.len()];
        for e in self.entries.iter().filter(|e| e.state.is_open()) {
            open[e.target as usize] += 1;
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_request_id_names_the_first_line() {
        let mut l = Ledger::default();
        assert_eq!(l.push_valid(2, "a", "t1"), Ok(()));
        l.push_invalid(3);
        assert_eq!(l.push_valid(4, "b", "t2"), Ok(()));
        assert_eq!(l.push_valid(5, "a", "t1"), Err(2));
        assert_eq!(l.entries.len(), 4);
        assert_eq!((l.count(State::Ready), l.count(State::Invalid)), (2, 2));
        assert_eq!(l.set("b", State::Provisioned), Some(State::Ready));
        assert_eq!(l.open_per_target(), vec![1, 0]);
        assert_eq!(l.ids_in(&[State::Ready], 10), vec![vec!["a".to_owned()]]);
        assert_eq!(l.targets, ["t1", "t2"]);
    }
}
