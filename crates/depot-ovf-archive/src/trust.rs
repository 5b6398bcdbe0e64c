//! Which copy of an entity's OVF depot trusts (docs/storage.md, "OVF
//! backup providers"): the newest generation that at least two providers
//! agree on (the same source store, generation and sha256); where no two
//! agree, the only usable copy there is; where there are several and no
//! two agree, none (the admin picks one by provider).
//!
//! Generations count the writes of one source store, so copies are
//! ordered by generation first and by the time they were recorded next
//! (copies of one entity from two source domains).

use crate::HeldCopy;

/// The verdict for one entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `copies[index]` is trusted, and why.
    Trusted { index: usize, reason: String },
    /// No copy is trusted, and why.
    Undecided { reason: String },
}

impl Verdict {
    pub fn index(&self) -> Option<usize> {
        match self {
            Verdict::Trusted { index, .. } => Some(*index),
            Verdict::Undecided { .. } => None,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Verdict::Trusted { reason, .. } | Verdict::Undecided { reason } => reason,
        }
    }
}

/// The providers that hold the same content as `copies[i]` (itself too).
pub fn agreeing(copies: &[HeldCopy], i: usize) -> Vec<String> {
    let c = &copies[i];
    let mut names: Vec<String> = copies
        .iter()
        .filter(|o| o.unusable.is_none() && same(o, c))
        .map(|o| o.provider.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn same(a: &HeldCopy, b: &HeldCopy) -> bool {
    a.source == b.source && a.generation == b.generation && a.sha256 == b.sha256
}

/// Picks the copy to trust among `copies` of one entity.
pub fn choose(copies: &[HeldCopy]) -> Verdict {
    let usable: Vec<usize> = (0..copies.len())
        .filter(|&i| copies[i].unusable.is_none())
        .collect();
    if usable.is_empty() {
        return Verdict::Undecided {
            reason: if copies.is_empty() {
                "no provider holds a copy".into()
            } else {
                format!(
                    "every copy is unusable ({})",
                    copies
                        .iter()
                        .map(|c| format!("{}: {}", c.provider, c.unusable.as_deref().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            },
        };
    }
    // Newest first.
    let mut order = usable.clone();
    order.sort_by_key(|&i| std::cmp::Reverse((copies[i].generation.unwrap_or(0), copies[i].time)));
    for &i in &order {
        let agree = agreeing(copies, i);
        if agree.len() >= 2 {
            let c = &copies[i];
            let newer = order
                .iter()
                .take_while(|&&j| !same(&copies[j], c))
                .map(|&j| copies[j].provider.clone())
                .collect::<Vec<_>>();
            let mut reason = format!(
                "generation {} is held by {} providers that agree ({})",
                gen_text(c.generation),
                agree.len(),
                agree.join(", ")
            );
            if !newer.is_empty() {
                reason.push_str(&format!(
                    "; the newer copy of {} is held by one provider only",
                    newer.join(", ")
                ));
            }
            let torn: Vec<String> = copies
                .iter()
                .filter(|c| c.unusable.is_some())
                .map(|c| c.provider.clone())
                .collect();
            if !torn.is_empty() {
                reason.push_str(&format!("; unusable: {}", torn.join(", ")));
            }
            return Verdict::Trusted { index: i, reason };
        }
    }
    if usable.len() == 1 {
        let i = usable[0];
        return Verdict::Trusted {
            index: i,
            reason: format!(
                "the only usable copy (generation {}, held by {})",
                gen_text(copies[i].generation),
                copies[i].provider
            ),
        };
    }
    Verdict::Undecided {
        reason: format!(
            "{} copies and no two providers agree on one; choose a provider",
            usable.len()
        ),
    }
}

fn gen_text(g: Option<u64>) -> String {
    g.map(|g| g.to_string()).unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EntityKind, Source};
    use uuid::Uuid;

    fn copy(provider: &str, generation: u64, sha: &str) -> HeldCopy {
        HeldCopy {
            provider: provider.into(),
            id: Uuid::nil(),
            name: "vm".into(),
            kind: EntityKind::Vm,
            generation: Some(generation),
            sha256: sha.into(),
            source: Source {
                sd: Uuid::nil(),
                img: Uuid::nil(),
                vol: Uuid::nil(),
            },
            time: generation,
            ovf: None,
            unusable: None,
        }
    }

    #[test]
    fn newest_generation_two_agree_on() {
        let copies = vec![
            copy("stores", 3, "c"),
            copy("archive", 2, "b"),
            copy("mirror", 2, "b"),
        ];
        let v = choose(&copies);
        assert_eq!(v.index(), Some(1), "{v:?}");
        assert!(v.reason().contains("archive, mirror"), "{v:?}");
        assert!(v.reason().contains("newer copy of stores"), "{v:?}");
        let all = vec![
            copy("stores", 3, "c"),
            copy("archive", 3, "c"),
            copy("mirror", 2, "b"),
        ];
        assert_eq!(choose(&all).index(), Some(0));
    }

    #[test]
    fn same_generation_other_hash_is_no_agreement() {
        let copies = vec![copy("archive", 2, "a"), copy("mirror", 2, "b")];
        let v = choose(&copies);
        assert_eq!(v.index(), None, "{v:?}");
    }

    #[test]
    fn the_only_copy_and_torn_ones() {
        let mut torn = copy("stores", 5, "x");
        torn.unusable = Some("checksum mismatch".into());
        let copies = vec![torn.clone(), copy("archive", 4, "d")];
        let v = choose(&copies);
        assert_eq!(v.index(), Some(1), "{v:?}");
        assert!(v.reason().contains("only usable copy"), "{v:?}");
        let v = choose(&[torn]);
        assert_eq!(v.index(), None);
        assert!(v.reason().contains("checksum mismatch"), "{v:?}");
        assert_eq!(choose(&[]).index(), None);
    }
}
