//! Any S3 key works end to end (issue 10, "Keys"): the key names a new user tried first are
//! written and read through the client library and through the S3 endpoint (boto3), by real
//! proxies, and each lands in MinIO at exactly `{prefix}/{key}` with the same bytes.

mod client_support;

use anyhow::{Result, ensure};
use blockproxy::protocol::max_key_len_under;
use blockproxy_testenv::{Minio, Tool, tool_path};
use bytes::Bytes;
use client_support::*;
use std::process::Command;
use std::time::Duration;

/// The issue's twelve names, each below `dir`: spaces, `+`, `=`, `@`, `%`, `:`, `~`, `#`,
/// non-ASCII, the longest key the volume holds, and `a` next to `a/b`.
fn issue_keys(dir: &str) -> Vec<String> {
    let mut keys: Vec<String> =
        ["with space.txt", "plus+sign", "eq=sign", "at@sign", "100%", "co:lon", "ti~lde", "hash#tag", "ünï/日本語.txt"]
            .iter()
            .map(|n| format!("{dir}/{n}"))
            .collect();
    // S3 limits the store key, so the volume's prefix takes its share of the 1024 bytes; MinIO
    // also limits each '/'-separated segment to 255 bytes.
    let longest = max_key_len_under(PREFIX);
    let mut long = format!("{dir}/long");
    while long.len() < longest {
        long.push(if long.len() % 100 == 0 { '/' } else { 'L' });
    }
    keys.push(long);
    keys.extend([format!("{dir}/a"), format!("{dir}/a/b")]);
    keys
}

fn content(key: &str) -> Vec<u8> {
    format!("the object called {key}\n").repeat(3).into_bytes()
}

/// Writes every key with boto3, reads each back, and lists them in S3 order.
const BOTO3: &str = r#"
import sys, json, boto3, botocore
ep = sys.argv[1]
keys = json.loads(sys.stdin.read())
s3 = boto3.client("s3", endpoint_url=ep, aws_access_key_id="blockproxy", aws_secret_access_key="blockproxy", region_name="us-east-1")
def content(k):
    return ("the object called %s\n" % k).encode() * 3
for k in keys:
    s3.put_object(Bucket="vol1", Key=k, Body=content(k))
for k in keys:
    got = s3.get_object(Bucket="vol1", Key=k)["Body"].read()
    assert got == content(k), (k, got)
listed = [o["Key"] for o in s3.list_objects_v2(Bucket="vol1", Prefix="s3/").get("Contents", [])]
# MinIO lists only one of an object and a prefix of the same name ("s3/a", "s3/a/b"), once both
# are flushed; every other key is listed, in order.
assert listed == sorted(listed) and set(keys) - {"s3/a/b"} <= set(listed) <= set(keys), listed
too_long = keys[-3] + "L"
try:
    s3.put_object(Bucket="vol1", Key=too_long, Body=b"x")
    raise SystemExit("accepted a key longer than the volume holds")
except botocore.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "KeyTooLongError", e.response
print("boto3 ok")
"#;

/// The object's bytes in MinIO, read with the AWS SDK (not the proxies' store code).
async fn minio_object(minio: &Minio, key: &str) -> Result<Option<Vec<u8>>> {
    let got = minio.s3_client().get_object().bucket(minio.bucket()).key(format!("{PREFIX}/{key}")).send().await;
    match got {
        Ok(o) => Ok(Some(o.body.collect().await?.to_vec())),
        Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn minio_keys(minio: &Minio, under: &str) -> Result<Vec<String>> {
    let prefix = format!("{PREFIX}/{under}");
    let listed = minio.s3_client().list_objects_v2().bucket(minio.bucket()).prefix(&prefix).send().await?;
    Ok(listed.contents().iter().filter_map(|o| o.key()).map(|k| k[PREFIX.len() + 1..].to_owned()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_s3_key_lands_in_minio_at_prefix_slash_key() -> Result<()> {
    let minio = Minio::start().await?;
    let root = tempfile::tempdir()?;
    let volumes = write_volumes_file(root.path(), minio.bucket())?;
    let mut procs = Vec::new();
    let mut addrs = Vec::new();
    for name in ["p1", "p2"] {
        let p = Proxy::start(name, root.path(), &volumes, &minio.endpoint(), &minio).await?;
        addrs.push(p.addr.to_string());
        procs.push(p);
    }
    let disc = root.path().join("discovery.json");
    write_discovery(
        &disc,
        &discovery(minio.bucket(), Some(minio.endpoint()), &[GroupSpec { name: "g".into(), addresses: addrs }]),
    )?;

    // Through the client library.
    let client = start_client(fast_config(&disc)).await?;
    let lib_keys = issue_keys("lib");
    for k in &lib_keys {
        client.put(&key(k), Bytes::from(content(k))).await?;
    }
    for k in &lib_keys {
        let got = client.get(&key(k), None).await?.map(|f| f.data.to_vec());
        ensure!(got.as_deref() == Some(content(k).as_slice()), "client read of {k:?}: {got:?}");
    }

    // Through the S3 endpoint, with boto3.
    let sidecar = start_sidecar(root.path(), &disc, &minio, &[]).await?;
    let endpoint = sidecar_endpoint(&sidecar);
    let s3_keys = issue_keys("s3");
    let mut py = Command::new(tool_path(Tool::Python)?)
        .args(["-c", BOTO3, &endpoint])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = py.stdin.take() {
        use std::io::Write;
        stdin.write_all(serde_json::to_string(&s3_keys)?.as_bytes())?;
    }
    let out = py.wait_with_output()?;
    ensure!(
        out.status.success(),
        "boto3: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Once flushed, every object is in MinIO at exactly {prefix}/{key}, byte for byte, and
    // nothing else is there.
    for k in lib_keys.iter().chain(&s3_keys) {
        let want = content(k);
        wait_until(&format!("{k:?} is in MinIO"), Duration::from_secs(60), || async {
            minio_object(&minio, k).await.ok().flatten().is_some_and(|d| d == want)
        })
        .await?;
    }
    // MinIO's own listing shows only one of `a` and `a/b` (both are there, as read above).
    for (dir, keys) in [("lib/", &lib_keys), ("s3/", &s3_keys)] {
        let listed = minio_keys(&minio, dir).await?;
        let nested = format!("{dir}a/b");
        assert!(listed.iter().all(|k| keys.contains(k)), "nothing else under {dir}: {listed:?}");
        assert!(keys.iter().all(|k| *k == nested || listed.contains(k)), "all of {dir} listed: {listed:?}");
    }
    Ok(())
}
