//! A kube client configured like kubectl: `--kubeconfig`, `--context`, then `$KUBECONFIG` or
//! `~/.kube/config`, then the in-cluster service account.

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::cli::ClusterArgs;

/// Builds the client and returns it with the namespace commands default to (`-n`, else the
/// context's namespace, else `default`).
pub async fn connect(args: &ClusterArgs) -> anyhow::Result<(Client, String)> {
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
