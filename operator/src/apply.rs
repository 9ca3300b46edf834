//! The one apply/prune mechanism: server-side apply every desired object with the operator's
//! field manager, then delete owned objects (by label) that are not kept.

use crate::Error;
use crate::meta::FIELD_MANAGER;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::fmt::Debug;

/// An object the operator wants to exist.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // a handful per reconcile; boxing buys nothing
pub enum Desired {
    Secret(Secret),
    Service(Service),
    Pvc(PersistentVolumeClaim),
    Pod(Pod),
    ConfigMap(ConfigMap),
}

impl Desired {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Secret(_) => "Secret",
            Self::Service(_) => "Service",
            Self::Pvc(_) => "PersistentVolumeClaim",
            Self::Pod(_) => "Pod",
            Self::ConfigMap(_) => "ConfigMap",
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Secret(o) => &o.metadata,
            Self::Service(o) => &o.metadata,
            Self::Pvc(o) => &o.metadata,
            Self::Pod(o) => &o.metadata,
            Self::ConfigMap(o) => &o.metadata,
        }
    }

    pub fn name(&self) -> String {
        self.meta().name.clone().unwrap_or_default()
    }
}

/// Server-side apply of one typed object (forced: the operator owns these fields).
pub async fn apply_one<K>(client: &Client, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    // SSA needs apiVersion and kind in the body; typed k8s-openapi objects omit them.
    let mut body = serde_json::to_value(obj).map_err(Error::Serialize)?;
    if let Some(map) = body.as_object_mut() {
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
        map.remove("status");
    }
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await.map_err(|e| Error::Apply {
        kind: K::kind(&()).into_owned(),
        name,
        source: e,
    })
}

pub async fn apply_all(client: &Client, desired: &[Desired]) -> Result<(), Error> {
    for d in desired {
        match d {
            Desired::Secret(o) => drop(apply_one(client, o).await?),
            Desired::Service(o) => drop(apply_one(client, o).await?),
            Desired::Pvc(o) => drop(apply_one(client, o).await?),
            Desired::Pod(o) => drop(apply_one(client, o).await?),
            Desired::ConfigMap(o) => drop(apply_one(client, o).await?),
        }
    }
    Ok(())
}

/// Deletes a namespaced object; a missing object is not an error.
pub async fn delete_one<K>(client: &Client, ns: &str, name: &str) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + Debug + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(Error::Delete { kind: K::kind(&()).into_owned(), name: name.to_owned(), source: e }),
    }
}

/// Deletes every object of kind `K` in `ns` matching `selector` whose name is not in `keep`.
/// Returns the deleted names.
pub async fn prune<K>(
    client: &Client,
    ns: &str,
    selector: &str,
    keep: &BTreeSet<(&'static str, String)>,
) -> Result<Vec<String>, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + Debug + DeserializeOwned,
{
    let kind = K::kind(&()).into_owned();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let list = api
        .list_metadata(&ListParams::default().labels(selector))
        .await
        .map_err(|e| Error::List { kind: kind.clone(), source: e })?;
    let mut deleted = Vec::new();
    for o in list.items {
        let name = o.name_any();
        if o.metadata.deletion_timestamp.is_none() && !keep.iter().any(|(k, n)| *k == kind && *n == name) {
            delete_one::<K>(client, ns, &name).await?;
            deleted.push(name);
        }
    }
    Ok(deleted)
}
