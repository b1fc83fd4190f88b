//! A kube client configured like kubectl: `--kubeconfig`, `--context`, then `$KUBECONFIG` or
//! `~/.kube/config`, then the in-cluster service account.

use std::path::PathBuf;

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Which cluster, as the user named it (kubectl's `--kubeconfig`, `--context`, `-n`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeAccess {
    /// A kubeconfig file to use instead of `$KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use instead of the current one.
    pub context: Option<String>,
    /// The namespace commands default to instead of the context's.
    pub namespace: Option<String>,
}

/// Builds the client and returns it with the namespace commands default to (`-n`, else the
/// context's namespace, else `default`).
pub async fn connect(args: &KubeAccess) -> anyhow::Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None if args.context.is_some() => Config::from_kubeconfig(&options).await.context("reading kubeconfig")?,
        None => Config::infer()
            .await
            .context("no cluster configured: no kubeconfig ($KUBECONFIG, ~/.kube/config) and not running in a cluster; use --kubeconfig, or --local / --agent")?,
    };
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).context("creating the Kubernetes client")?;
    Ok((client, namespace))
}
