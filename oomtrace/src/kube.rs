//! `--kube`: the Kubernetes API client that the pod watch (enrichment) and
//! the Event sink share.
//!
//! The client is built in the background and never waited for on the kill
//! path. When the API server is unreachable, slow or refuses us, the agent
//! keeps reporting everything else and says so once on stderr ([`Problem`]).

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use thiserror::Error;
use tokio::sync::watch;
use tracing::{debug, warn};

/// Silences kube-client's per-request error log (one line per retry while
/// the API server is down); [`Problem`] says so once instead.
pub fn log_directive() -> tracing_subscriber::filter::Directive {
    use tracing_subscriber::filter::{Directive, LevelFilter};
    // A static, valid directive; the fallback is the agent's default level.
    "kube_client=off"
        .parse()
        .unwrap_or_else(|_| Directive::from(LevelFilter::INFO))
}

/// How long anything waits for the client to be built.
pub const CLIENT_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum KubeError {
    #[error(
        "cannot read kubeconfig {path}: {source}: fix --kubeconfig or drop it to use the in-cluster config"
    )]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes API configuration (not in a pod with a service account, no KUBECONFIG): {0}; pass --kubeconfig or run without --kube"
    )]
    Infer(#[source] kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Reports an API problem once per run, on stderr.
#[derive(Debug, Default)]
pub struct Problem {
    said: AtomicBool,
}

impl Problem {
    pub fn report(&self, what: &str) {
        if !self.said.swap(true, Ordering::Relaxed) {
            warn!(
                "Kubernetes API unavailable ({what}): kills are still reported on stdout and in metrics, without Pod events or pod metadata from the API until it answers; this is said once"
            );
        } else {
            debug!("Kubernetes API: {what}");
        }
    }
}

/// A client being built in the background, shared by its users.
#[derive(Clone)]
pub struct ApiClient {
    client: watch::Receiver<Option<Client>>,
    problem: Arc<Problem>,
}

impl ApiClient {
    /// Starts building the client (in-cluster config, else `kubeconfig`);
    /// never fails and never waits.
    pub fn start(kubeconfig: Option<PathBuf>) -> Self {
        let (tx, rx) = watch::channel(None);
        let problem = Arc::new(Problem::default());
        tokio::spawn({
            let problem = Arc::clone(&problem);
            async move {
                match client(kubeconfig).await {
                    Ok(c) => {
                        let _ = tx.send(Some(c));
                    }
                    Err(e) => problem.report(&e.to_string()),
                }
            }
        });
        Self {
            client: rx,
            problem,
        }
    }

    /// The client, waiting at most [`CLIENT_WAIT`]; `None` when it could not
    /// be built (already reported) or is late.
    pub async fn client(&self) -> Option<Client> {
        let mut rx = self.client.clone();
        match tokio::time::timeout(CLIENT_WAIT, rx.wait_for(Option::is_some)).await {
            Ok(Ok(c)) => c.clone(),
            _ => None,
        }
    }

    pub fn problem(&self) -> &Problem {
        &self.problem
    }
}

async fn client(kubeconfig: Option<PathBuf>) -> Result<Client, KubeError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(&path).map_err(|source| KubeError::Kubeconfig {
                path: path.clone(),
                source,
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig { path, source })?
        }
        None => Config::infer().await.map_err(KubeError::Infer)?,
    };
    config.connect_timeout = Some(Duration::from_secs(5));
    config.write_timeout = Some(Duration::from_secs(10));
    Client::try_from(config).map_err(KubeError::Client)
}
