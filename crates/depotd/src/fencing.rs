//! `Host.fenceNode`: the engine asks this host to power-fence another one
//! through a fence agent (depot_os::fence), unless the policy finds the
//! other host alive on storage (its sanlock lease renewed in one of the
//! named domains). docs/storage.md "Fencing".

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use depot_api::results::FenceNodeResult;
use depot_api::{params, ApiError, Code};
use depot_os::fence::{run_agent, FenceAction, FenceError, FenceParams, FenceRequest};
use depot_os::CommandRunner;
use depot_storage::Storage;

/// Where the agents are and how long one may run (`[fencing]`).
pub struct Fencer {
    pub runner: CommandRunner,
    pub agents_dir: PathBuf,
    pub timeout: Duration,
}

pub async fn fence_node(
    fencer: &Arc<Fencer>,
    storage: &Arc<Storage>,
    p: params::HostFenceNode,
) -> Result<FenceNodeResult, ApiError> {
    let action = FenceAction::parse(&p.action).ok_or_else(|| {
        ApiError::new(
            Code::InvalidParameterException,
            format!("action {:?}: one of status, on, off, reboot", p.action),
        )
    })?;
    let port = p.port.text();
    let req = FenceRequest::new(FenceParams {
        agent: &p.agent,
        addr: &p.addr,
        port: port.as_deref(),
        username: &p.username,
        password: p.password.expose(),
        action,
        secure: p.secure.unwrap_or(false),
        options: p.options.as_deref().unwrap_or(""),
    })
    .map_err(api_error)?;
    let policy: Vec<_> = p
        .policy
        .and_then(|p| p.storageDomainHostIdMap)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(sd, id)| Some((sd, u64::try_from(id).ok()?)))
        .collect();
    let (fencer, storage) = (fencer.clone(), storage.clone());
    tokio::task::spawn_blocking(move || {
        if action != FenceAction::Status && storage.lease_live_somewhere(&policy) {
            tracing::info!(
                agent = req.agent().as_str(),
                action = action.name(),
                "fencing skipped: the host is alive on storage"
            );
            return Ok(FenceNodeResult {
                operationStatus: Some("skipped".into()),
                power: None,
            });
        }
        let answer = run_agent(&fencer.runner, &fencer.agents_dir, &req, fencer.timeout)
            .map_err(api_error)?;
        tracing::info!(
            agent = req.agent().as_str(),
            action = action.name(),
            code = answer.code,
            "fence agent answered"
        );
        match (action, answer.code) {
            (FenceAction::Status, 0) => Ok(power("on")),
            (FenceAction::Status, 2) => Ok(power("off")),
            (_, 0) => Ok(FenceNodeResult {
                operationStatus: Some("initiated".into()),
                power: Some("unknown".into()),
            }),
            (_, code) => Err(ApiError::new(
                Code::FenceAgentFailed,
                format!(
                    "fence_{} {} exited with {code}: {}",
                    req.agent().as_str(),
                    action.name(),
                    answer.output.trim()
                ),
            )),
        }
    })
    .await
    .map_err(|e| ApiError::new(Code::InternalError, format!("fence thread: {e}")))?
}

fn power(state: &str) -> FenceNodeResult {
    FenceNodeResult {
        operationStatus: None,
        power: Some(state.into()),
    }
}

fn api_error(e: FenceError) -> ApiError {
    let code = match &e {
        FenceError::Invalid { .. } => Code::InvalidParameterException,
        FenceError::NoAgent { .. } => Code::UnsupportedFenceAgent,
        FenceError::Failed { .. } => Code::FenceAgentFailed,
    };
    ApiError::new(code, e.to_string())
}
