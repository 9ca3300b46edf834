//! The object store the command line names (`--store-provider`, `--store-endpoint`,
//! `--store-credentials-file`).

use crate::config::{StoreArgs, StoreProvider};
use crate::store::{
    AzureCredentials, AzureStore, AzureStoreConfig, DynStore, GcsCredentials, GcsStore, GcsStoreConfig, LocalDirStore,
    S3Store, S3StoreConfig,
};
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;

/// Builds the object store from the command line.
pub async fn build_store(args: &StoreArgs) -> anyhow::Result<DynStore> {
    let endpoint = args.store_endpoint.as_deref().filter(|e| !e.is_empty());
    let provider = args.store_provider.unwrap_or(match endpoint {
        Some(e) if e.starts_with("file://") => StoreProvider::Local,
        _ => StoreProvider::S3,
    });
    if let Some(ep) = endpoint
        && provider != StoreProvider::Local
    {
        anyhow::ensure!(
            ep.starts_with("http://") || ep.starts_with("https://"),
            "--store-endpoint {ep:?} must be an http(s):// URL for the {provider:?} store (file:///path is the local store)"
        );
    }
    let creds_text = match &args.store_credentials_file {
        Some(path) => Some(read(path)?),
        None => None,
    };
    let file_name = || args.store_credentials_file.as_deref().map_or(String::new(), |p| p.display().to_string());
    Ok(match provider {
        StoreProvider::Local => {
            let path = endpoint.and_then(|e| e.strip_prefix("file://")).unwrap_or_default();
            anyhow::ensure!(
                path.starts_with('/'),
                "the local store needs --store-endpoint file:///absolute/path, like file:///var/lib/blockproxy-store"
            );
            let store = LocalDirStore::open(path).with_context(|| format!("opening the local store folder {path}"))?;
            Arc::new(store)
        }
        StoreProvider::S3 => {
            let credentials = match &creds_text {
                None => None,
                Some(text) => {
                    #[derive(serde::Deserialize)]
                    struct Creds {
                        access_key_id: String,
                        secret_access_key: String,
                    }
                    let c: Creds = serde_yaml::from_str(text)
                        .with_context(|| format!("{} must hold access_key_id and secret_access_key", file_name()))?;
                    Some((c.access_key_id, c.secret_access_key))
                }
            };
            Arc::new(
                S3Store::new(S3StoreConfig {
                    endpoint: endpoint.map(str::to_owned),
                    region: args.store_region.clone(),
                    path_style: args.store_path_style,
                    credentials,
                    sse: args.store_sse,
                })
                .await,
            )
        }
        StoreProvider::Gcs => {
            let credentials = match (&creds_text, endpoint) {
                (Some(json), _) => GcsCredentials::from_service_account_json(json)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file_name()))?,
                // An emulator (fake-gcs-server) takes no token.
                (None, Some(_)) => GcsCredentials::Anonymous,
                (None, None) => GcsCredentials::MetadataServer,
            };
            Arc::new(GcsStore::new(GcsStoreConfig { endpoint: endpoint.map(str::to_owned), credentials }))
        }
        StoreProvider::Azure => {
            let (account, credentials) = match creds_text.as_deref() {
                Some(text) => azure_credentials(text).map_err(|e| anyhow::anyhow!("{}: {e}", file_name()))?,
                None => azure_env_credentials().map_err(anyhow::Error::msg)?,
            };
            Arc::new(AzureStore::new(AzureStoreConfig { account, endpoint: endpoint.map(str::to_owned), credentials })?)
        }
    })
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// `account_name` and exactly one of `account_key` and `sas_token` (YAML).
fn azure_credentials(text: &str) -> Result<(String, AzureCredentials), String> {
    #[derive(serde::Deserialize)]
    struct Creds {
        account_name: String,
        account_key: Option<String>,
        sas_token: Option<String>,
    }
    let c: Creds = serde_yaml::from_str(text)
        .map_err(|e| format!("must hold account_name and account_key or sas_token (YAML): {e}"))?;
    let creds = match (c.account_key, c.sas_token) {
        (Some(key), None) => AzureCredentials::shared_key(&key)?,
        (None, Some(sas)) => AzureCredentials::sas(&sas)?,
        _ => return Err("needs exactly one of account_key and sas_token".into()),
    };
    Ok((c.account_name, creds))
}

/// Without a file: the Azure CLI's variables (`AZURE_STORAGE_ACCOUNT` and `AZURE_STORAGE_KEY` or
/// `AZURE_STORAGE_SAS_TOKEN`), as the operator sets them from the ProxyGroup's Secret.
fn azure_env_credentials() -> Result<(String, AzureCredentials), String> {
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.trim().is_empty());
    let account = var("AZURE_STORAGE_ACCOUNT").ok_or(
        "the azure store needs --store-credentials-file (account_name and account_key or sas_token) or AZURE_STORAGE_ACCOUNT",
    )?;
    let creds = match (var("AZURE_STORAGE_KEY"), var("AZURE_STORAGE_SAS_TOKEN")) {
        (Some(key), None) => AzureCredentials::shared_key(&key)?,
        (None, Some(sas)) => AzureCredentials::sas(&sas)?,
        _ => return Err("the azure store needs exactly one of AZURE_STORAGE_KEY and AZURE_STORAGE_SAS_TOKEN".into()),
    };
    Ok((account, creds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_credentials_need_an_account_and_one_secret() {
        let (account, creds) = azure_credentials("account_name: acct\naccount_key: c2VjcmV0\n").unwrap();
        assert_eq!((account.as_str(), creds.kind()), ("acct", "shared-key"));
        let (_, creds) = azure_credentials("account_name: acct\nsas_token: \"sv=1&sig=x\"\n").unwrap();
        assert_eq!(creds.kind(), "sas");
        for bad in
            ["account_name: a\n", "account_name: a\naccount_key: c2VjcmV0\nsas_token: sig=x\n", "account_key: x\n"]
        {
            assert!(azure_credentials(bad).is_err(), "{bad}");
        }
    }
}
