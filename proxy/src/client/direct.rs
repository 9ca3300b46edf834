//! The last resort: the object store itself, with the sidecar's own credentials, when no proxy
//! of any group answers. Writes keep the ordering contract (conditional at the store), reads of
//! blocks stay pinned to the store ETag. Multipart uploads are staged on proxies only, so they
//! have no direct fallback.

use super::ClientError;
use super::info::ObjectInfo;
use super::ops::{Op, Outcome, slice_range, store_key};
use super::transport::{AttemptError, Written};
use crate::protocol::StoreLocation;
use crate::store::{self, Conditional, ObjectMeta, Store, StoreError, delete_unless_newer, put_unless_newer};

impl From<store::ObjectInfo> for ObjectInfo {
    fn from(i: store::ObjectInfo) -> Self {
        Self {
            size: i.size,
            version: i.version,
            etag: Some(i.client_etag().to_owned()),
            store_etag: Some(i.etag),
            last_modified: Some(i.last_modified),
            attrs: i.attrs,
        }
    }
}

/// A direct store write that the store's newer version superseded is refused like a proxy's 409.
fn not_superseded(done: Conditional, version: u64) -> Result<Outcome, AttemptError> {
    match done {
        Conditional::Applied => Ok(Outcome::Written(Written { version, etag: None })),
        Conditional::StoreNewer { store_version } => Err(AttemptError::Superseded(store_version)),
    }
}

fn unavailable(e: StoreError) -> AttemptError {
    match e {
        StoreError::PreconditionFailed { key, .. } => AttemptError::Rejected(ClientError::Changed { key }),
        e => AttemptError::Unavailable(e.to_string()),
    }
}

pub(super) async fn attempt(store: &dyn Store, loc: &StoreLocation, op: &Op<'_>) -> Result<Outcome, AttemptError> {
    let bucket = loc.bucket.as_str();
    match op {
        Op::Put { key, data, version, meta, .. } => {
            let data = data.whole().await?;
            let k = store_key(&loc.prefix, key.as_str());
            let m = ObjectMeta::for_data(*version, &data);
            let done = put_unless_newer(store, bucket, &k, data, m, meta.attrs).await.map_err(unavailable)?;
            not_superseded(done, *version)
        }
        Op::Get { key, range: None } => match store.get(bucket, &store_key(&loc.prefix, key.as_str())).await {
            Ok(None) => Ok(Outcome::Fetched(None)),
            Ok(Some(b)) => {
                let info = ObjectInfo {
                    size: b.data.len() as u64,
                    version: b.version,
                    etag: Some(b.client_etag().to_owned()),
                    store_etag: Some(b.etag),
                    last_modified: Some(b.last_modified),
                    attrs: b.attrs,
                };
                slice_range(b.data.into(), info, None)
                    .map(|f| Outcome::Fetched(Some(f)))
                    .map_err(AttemptError::Rejected)
            }
            Err(e) => Err(unavailable(e)),
        },
        Op::Get { key, range: Some(r) } => {
            let k = store_key(&loc.prefix, key.as_str());
            let Some(info) = store.head(bucket, &k).await.map_err(unavailable)? else {
                return Ok(Outcome::Fetched(None));
            };
            let (start, end) = super::objects::resolve_range(Some(r), info.size).map_err(AttemptError::Rejected)?;
            let got = store.get_range(bucket, &k, start..end, Some(&info.etag)).await.map_err(unavailable)?;
            Ok(Outcome::Fetched(got.map(|g| super::Fetched { data: g.data.into(), info: g.info.into() })))
        }
        Op::Head { key } => {
            let info = store.head(bucket, &store_key(&loc.prefix, key.as_str())).await.map_err(unavailable)?;
            Ok(Outcome::Head(info.map(Into::into)))
        }
        Op::GetBlock { key, store_etag, part, .. } => {
            let k = store_key(&loc.prefix, key.as_str());
            match store.get_range(bucket, &k, part.clone(), Some(store_etag)).await.map_err(unavailable)? {
                Some(r) => Ok(Outcome::Block(r.data.into())),
                None => Err(AttemptError::Rejected(ClientError::Changed { key: key.to_string() })),
            }
        }
        Op::Delete { key, version } => {
            let k = store_key(&loc.prefix, key.as_str());
            let done = delete_unless_newer(store, bucket, &k, *version).await.map_err(unavailable)?;
            not_superseded(done, *version)
        }
    }
}
