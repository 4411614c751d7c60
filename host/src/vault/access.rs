//! The seam between the vault and authorization: the vault asks a [`Gate`] before it reveals,
//! searches, writes or deletes, and hands it the facts of each record a decision may depend on.

use super::schema::{Column, Redaction};
use super::{LoadedVault, Table};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// What the vault is about to do with a column or a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataAction {
    Read,
    Detokenize,
    Lookup,
    Insert,
    Update,
    Tokenize,
    Delete,
}

impl DataAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DataAction::Read => "read",
            DataAction::Detokenize => "detokenize",
            DataAction::Lookup => "lookup",
            DataAction::Insert => "insert",
            DataAction::Update => "update",
            DataAction::Tokenize => "tokenize",
            DataAction::Delete => "delete",
        }
    }
}

/// What row-level policies may know about a record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RowFacts {
    pub id: Uuid,
    /// The record's table.
    pub table: Uuid,
    /// Canonical values of the table's `policy_attribute` columns the record holds.
    pub attributes: BTreeMap<String, String>,
    /// Purposes the record's owner consented to.
    pub consents: Vec<String>,
    /// Whether an unexpired grant gives the caller this record.
    pub granted: bool,
}

/// Decides, for one request, what its caller may do.
pub trait Gate: Send + Sync {
    /// The level `column` of `row` may be revealed at, given the `requested` level (`Default`:
    /// the most revealing allowed); `None` when it may not be revealed at all.
    fn reveal(
        &self,
        action: DataAction,
        vault: &LoadedVault,
        table: &Table,
        column: &Column,
        row: &RowFacts,
        requested: Redaction,
    ) -> Option<Redaction>;

    /// Whether `action` is allowed on `column` (insert, look-up, tokenize, update) or on the
    /// record (delete: `column` is `None`). `row` is given where a record exists.
    fn allows(
        &self,
        action: DataAction,
        vault: &LoadedVault,
        table: &Table,
        column: Option<&Column>,
        row: Option<&RowFacts>,
    ) -> bool;

    /// Whether decisions depend on records at all (the open gate skips loading their facts).
    fn needs_rows(&self) -> bool {
        true
    }

    /// Whether decisions about columns (detokenize) depend on the record's facts. When not,
    /// only decisions with the record itself as the resource (delete) need them.
    fn needs_record_context(&self) -> bool {
        self.needs_rows()
    }

    /// Called once the facts of the records a request touches are known, before the decisions
    /// about them (a gate may prepare what those decisions share).
    fn prepare(&self, _vault: &LoadedVault, _rows: &HashMap<Uuid, RowFacts>) {}

    /// The principal grants are looked up for.
    fn grantee(&self) -> Option<&str> {
        None
    }
}

/// Allows everything; `default` resolves to each column's own level. For operator tooling and
/// to measure the cost of authorization; never used for API callers.
pub struct OpenGate;

impl Gate for OpenGate {
    fn reveal(
        &self,
        _: DataAction,
        _: &LoadedVault,
        _: &Table,
        column: &Column,
        _: &RowFacts,
        requested: Redaction,
    ) -> Option<Redaction> {
        Some(match requested {
            Redaction::Default => column.redaction,
            level => level,
        })
    }

    fn allows(
        &self,
        _: DataAction,
        _: &LoadedVault,
        _: &Table,
        _: Option<&Column>,
        _: Option<&RowFacts>,
    ) -> bool {
        true
    }

    fn needs_rows(&self) -> bool {
        false
    }
}
