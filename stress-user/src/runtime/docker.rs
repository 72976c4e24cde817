//! Docker Engine over its unix socket (`bollard`): every container, running or not, with its
//! name, image, labels (dockershim-era pods carry the CRI ones), main pid and memory cgroup.

use std::collections::BTreeMap;

use bollard::{
    models::ContainerSummaryStateEnum,
    query_parameters::{InspectContainerOptions, ListContainersOptions},
};

use super::{cgroup_of_pid, Container, Resolver, RuntimeError, RuntimeKind, Socket};
use crate::cgroup::Version;

const NAME: &str = "Docker";

pub struct Docker {
    socket: Socket,
}

impl Docker {
    pub(super) fn new(socket: Socket) -> Docker {
        Docker { socket }
    }
}

async fn list(
    socket: std::path::PathBuf,
    version: Option<Version>,
) -> Result<Vec<Container>, String> {
    let path = socket.to_string_lossy().into_owned();
    let client = bollard::Docker::connect_with_unix(
        &path,
        super::QUERY_TIMEOUT.as_secs(),
        bollard::API_DEFAULT_VERSION,
    )
    .map_err(|e| format!("cannot connect: {}", super::chain(&e)))?
    // dockerd refuses a client newer than itself: speak the daemon's version.
    .negotiate_version()
    .await
    .map_err(|e| format!("cannot connect: {}", super::chain(&e)))?;
    let summaries = client
        .list_containers(Some(ListContainersOptions {
            all: true,
            ..ListContainersOptions::default()
        }))
        .await
        .map_err(|e| format!("listing containers: {e}"))?;
    let mut out = Vec::new();
    for s in summaries {
        let Some(id) = s.id else { continue };
        let live = matches!(
            s.state,
            Some(
                ContainerSummaryStateEnum::RUNNING
                    | ContainerSummaryStateEnum::PAUSED
                    | ContainerSummaryStateEnum::RESTARTING
            )
        );
        // Only a live container has a pid to ask for: the listing says the rest.
        let (init_pid, image, labels, name) = if live {
            // Gone between the listing and now: skipped.
            let Ok(info) = client
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
            else {
                continue;
            };
            let state = info.state.unwrap_or_default();
            let running = state.running.unwrap_or(false);
            let pid = state
                .pid
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| running && *p > 0);
            let config = info.config.unwrap_or_default();
            (
                pid,
                config.image.or(s.image),
                config.labels.unwrap_or_default(),
                info.name,
            )
        } else {
            (
                None,
                s.image,
                s.labels.unwrap_or_default(),
                s.names.and_then(|n| n.into_iter().next()),
            )
        };
        let cgroup = init_pid
            .and_then(|p| cgroup_of_pid(p, version))
            .filter(|p| p != "/");
        let labels: BTreeMap<String, String> = labels.into_iter().collect();
        let name = name
            .map(|n| n.trim_start_matches('/').to_string())
            .filter(|n| !n.is_empty());
        let mut c = Container {
            runtime: RuntimeKind::Docker,
            runtime_namespace: None,
            id,
            name: None,
            pod: None,
            pod_uid: None,
            image,
            init_pid,
            running: init_pid.is_some(),
            cgroup,
            sandbox: false,
        }
        .with_labels(&labels);
        // Docker's own name is what `docker ps` shows and `--container` takes.
        if name.is_some() {
            c.name = name;
        }
        out.push(c);
    }
    Ok(out)
}

impl Resolver for Docker {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Docker
    }

    fn endpoint(&self) -> String {
        self.socket.path.display().to_string()
    }

    fn list(&self, version: Option<Version>) -> Result<Vec<Container>, RuntimeError> {
        match super::block_on(list(self.socket.path.clone(), version))? {
            Some(Ok(found)) => Ok(found),
            Some(Err(reason)) => Err(self.socket.unreachable(NAME, reason)),
            None => Err(RuntimeError::Timeout {
                runtime: NAME,
                socket: self.socket.path.clone(),
                flag: self.socket.flag,
            }),
        }
    }
}
