//! `DR.plan` (docs/dr.md "DR.plan"): the mapping text from the wire into
//! depot-dr's typed mapping, the storage's plan on a blocking thread, and
//! the plan back to the wire. Read-only; no storage logic here.

use std::sync::Arc;

use depot_api::catalogue::returns;
use depot_api::results::{
    DrConnectionPlan, DrDomainSight, DrFenceCheck, DrFenceDomain, DrLiveHost, DrPlanReport, DrPool,
    DrSidePlan,
};
use depot_api::{params, ApiError, Code};
use depot_dr::SitePool;
use depot_storage::engine::dr::{DrPlan, FenceCheck, PairPlan, Seen, Side, SidePlan};
use depot_storage::engine::Storage;

use crate::dr_api::run_mapping;

pub async fn plan(storage: &Arc<Storage>, p: params::DrPlan) -> Result<returns::DrPlan, ApiError> {
    let failback = p.failback.unwrap_or(false);
    let (mapping, _) = run_mapping(&p.mapping, p.format.as_deref(), failback, p.recoveryPoolID)?;
    let confirmed = p.confirmedFenced.unwrap_or_default();
    let s = storage.clone();
    let for_plan = mapping.clone();
    let plan = tokio::task::spawn_blocking(move || s.dr_plan(&for_plan, &confirmed))
        .await
        .map_err(|e| ApiError::new(Code::InternalError, format!("DR.plan panicked: {e}")))?;
    Ok(report(&mapping, failback, plan))
}

fn pool(p: &SitePool) -> DrPool {
    DrPool {
        id: p.id.map(|id| id.to_string()),
        name: p.name.clone(),
    }
}

fn report(mapping: &depot_dr::Mapping, failback: bool, plan: DrPlan) -> DrPlanReport {
    DrPlanReport {
        format: mapping.format().name().into(),
        failback,
        warnings: mapping.warnings().to_vec(),
        primary_pool: pool(mapping.primary_pool()),
        secondary_pool: pool(mapping.secondary_pool()),
        connections: plan.pairs.into_iter().map(pair).collect(),
        fence: fence(plan.fence),
    }
}

fn side(s: SidePlan) -> DrSidePlan {
    DrSidePlan {
        connection: s.describe,
        state: s.link.name().into(),
        detail: match s.link {
            depot_storage::engine::dr::Link::Unknown(why) => Some(why),
            _ => None,
        },
        action: s.step.name().into(),
        mount_point: s.mount_point.map(|m| m.display().to_string()),
    }
}

fn pair(p: PairPlan) -> DrConnectionPlan {
    DrConnectionPlan {
        name: p.name,
        r#type: p.kind.name().into(),
        backup: p.backup,
        primary: side(p.primary),
        secondary: side(p.secondary),
        domains: p
            .domains
            .into_iter()
            .map(|d| {
                let visible = d.seen.visible();
                let (on, detail) = match d.seen {
                    Seen::On(Side::Primary) => ("primary", None),
                    Seen::On(Side::Secondary) => ("secondary", None),
                    Seen::Block(what) => ("block", Some(what)),
                    Seen::Elsewhere(dir) => ("elsewhere", Some(dir.display().to_string())),
                    Seen::Nowhere => ("nowhere", None),
                    Seen::Unreadable(why) => ("unreadable", Some(why)),
                };
                DrDomainSight {
                    sd_id: d.sd.to_string(),
                    expected: d.expected,
                    visible,
                    on: on.into(),
                    detail,
                }
            })
            .collect(),
    }
}

fn fence(f: FenceCheck) -> DrFenceCheck {
    DrFenceCheck {
        verdict: f.verdict.name().into(),
        message: f.message,
        live_hosts: f
            .hosts
            .into_iter()
            .map(|h| DrLiveHost {
                host_id: h.host_id,
                status: h.status.into(),
                site: h.site.name().into(),
                confirmed: h.confirmed,
                domains: h.domains.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        domains: f
            .domains
            .into_iter()
            .map(|d| DrFenceDomain {
                sd_id: d.sd.to_string(),
                checked: d.hosts.is_ok(),
                this_host: d.this_host,
                detail: d.hosts.err(),
            })
            .collect(),
    }
}
