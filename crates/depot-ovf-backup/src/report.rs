//! What the providers hold of one entity, and which copy depot trusts
//! (depot-ovf-archive's `trust` rule): the answers of `OvfBackup.list`
//! and `OvfBackup.show`.

use std::collections::BTreeMap;

use depot_ovf_archive::{trust, HeldCopy};
use uuid::Uuid;

use crate::{BackupError, OvfBackup};

/// One provider, as `list` saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderStatus {
    pub name: String,
    /// Whether uploads are recorded in it (false: read only).
    pub records: bool,
    /// Why it could not be read, if it could not.
    pub error: Option<String>,
}

/// Every entity across the providers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub providers: Vec<ProviderStatus>,
    /// By name, then id.
    pub entities: Vec<EntityReport>,
}

/// One entity: its copies, who agrees with each, and the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityReport {
    /// Never empty.
    pub copies: Vec<HeldCopy>,
    /// For each copy, the providers holding the same content (itself
    /// too); none for an unusable copy.
    pub agrees_with: Vec<Vec<String>>,
    pub verdict: trust::Verdict,
    /// The trusted copy's text, when asked for.
    pub ovf: Option<String>,
}

impl EntityReport {
    /// `copies` must not be empty.
    pub(crate) fn new(copies: Vec<HeldCopy>, with_text: bool) -> EntityReport {
        let verdict = trust::choose(&copies);
        let agrees_with = (0..copies.len())
            .map(|i| {
                if copies[i].unusable.is_some() {
                    Vec::new()
                } else {
                    trust::agreeing(&copies, i)
                }
            })
            .collect();
        let ovf = if with_text {
            verdict.index().and_then(|i| copies[i].ovf.clone())
        } else {
            None
        };
        EntityReport {
            copies,
            agrees_with,
            verdict,
            ovf,
        }
    }

    /// The copy depot trusts, if any.
    pub fn trusted(&self) -> Option<&HeldCopy> {
        self.verdict.index().map(|i| &self.copies[i])
    }

    /// The copy whose id, name and kind the answer shows: the trusted
    /// one, else the first.
    pub fn named(&self) -> &HeldCopy {
        self.trusted().unwrap_or(&self.copies[0])
    }
}

impl OvfBackup {
    /// `OvfBackup.list`: every entity across the providers, its copies and
    /// the verdict. A provider that cannot be read is reported, not fatal.
    pub fn list(&self) -> Listing {
        let mut providers = Vec::new();
        let mut by_id: BTreeMap<Uuid, Vec<HeldCopy>> = BTreeMap::new();
        for p in &self.providers() {
            let error = match p.list() {
                Ok(copies) => {
                    for c in copies {
                        by_id.entry(c.id).or_default().push(c);
                    }
                    None
                }
                Err(e) => Some(e.to_string()),
            };
            providers.push(ProviderStatus {
                name: p.name().to_string(),
                records: p.records(),
                error,
            });
        }
        let mut entities: Vec<EntityReport> = by_id
            .into_values()
            .map(|copies| EntityReport::new(copies, false))
            .collect();
        // A UUID's bytes sort as its hyphenated text does.
        entities.sort_by(|a, b| {
            let (a, b) = (a.named(), b.named());
            (&a.name, a.id).cmp(&(&b.name, b.id))
        });
        Listing {
            providers,
            entities,
        }
    }

    /// Every copy of `id` the providers hold, with texts; the providers
    /// that could not be read are named in the error when none answered.
    pub(crate) fn copies(&self, id: Uuid) -> (Vec<HeldCopy>, Vec<String>) {
        let mut copies = Vec::new();
        let mut errors = Vec::new();
        for p in &self.providers() {
            match p.copies(id) {
                Ok(c) => copies.extend(c),
                Err(e) => errors.push(e.to_string()),
            }
        }
        // Newest first; every generation a provider keeps is a copy (the
        // rule looks for the newest two providers agree on).
        copies.sort_by_key(|c| std::cmp::Reverse((c.generation, c.time)));
        (copies, errors)
    }

    /// `OvfBackup.show`.
    pub fn show(&self, id: Uuid) -> Result<EntityReport, BackupError> {
        let (copies, errors) = self.copies(id);
        if copies.is_empty() {
            return Err(BackupError::NotFound(format!(
                "'{id}': no provider holds a copy{}",
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", errors.join("; "))
                }
            )));
        }
        Ok(EntityReport::new(copies, true))
    }
}
