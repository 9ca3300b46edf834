//! The `blockproxy-mount` sidecar binary with real S3 clients (the aws CLI and boto3, from the
//! tools cache) in front of real proxies and MinIO: put, get, ranged get, list (including
//! unflushed objects), delete, multipart of 50 MiB, refused keys and buckets.

mod client_support;

use anyhow::{Context, Result};
use blockproxy_testenv::{Minio, Tool, Toxiproxy, tool_path};
use client_support::*;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn aws(endpoint: &str, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(tool_path(Tool::Aws)?)
        .arg("--endpoint-url")
        .arg(endpoint)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "blockproxy")
        .env("AWS_SECRET_ACCESS_KEY", "blockproxy")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()?)
}

fn aws_ok(endpoint: &str, args: &[&str]) -> Result<String> {
    let out = aws(endpoint, args)?;
    anyhow::ensure!(out.status.success(), "aws {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha(path: &Path) -> Result<String> {
    Ok(hex::encode(Sha256::digest(std::fs::read(path)?)))
}

const BOTO3: &str = r#"
import sys, hashlib, boto3, botocore
from boto3.s3.transfer import TransferConfig
ep, big = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=ep, aws_access_key_id="blockproxy", aws_secret_access_key="blockproxy", region_name="us-east-1")
b = "vol1"
s3.put_object(Bucket=b, Key="boto/small.txt", Body=b"hello from boto3")
assert s3.get_object(Bucket=b, Key="boto/small.txt")["Body"].read() == b"hello from boto3"
r = s3.get_object(Bucket=b, Key="boto/small.txt", Range="bytes=6-9")
assert r["Body"].read() == b"from", "range"
assert r["ContentRange"] == "bytes 6-9/16", r["ContentRange"]
s3.upload_file(big, b, "boto/big.bin", Config=TransferConfig(multipart_threshold=8*1024*1024, multipart_chunksize=8*1024*1024))
got = s3.get_object(Bucket=b, Key="boto/big.bin")["Body"].read()
assert hashlib.sha256(got).hexdigest() == hashlib.sha256(open(big, "rb").read()).hexdigest(), "multipart bytes"
keys = [o["Key"] for o in s3.list_objects_v2(Bucket=b, Prefix="boto/").get("Contents", [])]
assert keys == ["boto/big.bin", "boto/small.txt"], keys
s3.put_object(Bucket=b, Key="boto/del1", Body=b"1")
s3.put_object(Bucket=b, Key="boto/del2", Body=b"2")
out = s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "boto/del1"}, {"Key": "boto/del2"}, {"Key": ".blockproxy-tombstones/x"}]})
assert sorted(d["Key"] for d in out.get("Deleted", [])) == ["boto/del1", "boto/del2"], out
assert [e["Code"] for e in out.get("Errors", [])] == ["InvalidArgument"], out
keys = [o["Key"] for o in s3.list_objects_v2(Bucket=b, Prefix="boto/").get("Contents", [])]
assert keys == ["boto/big.bin", "boto/small.txt"], keys
for bad, code in [("k" * 1024, "KeyTooLongError"), (".blockproxy-tombstones/x", "InvalidArgument")]:
    try:
        s3.put_object(Bucket=b, Key=bad, Body=b"x")
        raise SystemExit("accepted bad key %r" % bad)
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] == code, (bad, e.response)
try:
    s3.get_object(Bucket="other-bucket", Key="x")
    raise SystemExit("accepted another bucket")
except botocore.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "NoSuchBucket", e.response
try:
    s3.get_object(Bucket=b, Key="missing")
    raise SystemExit("missing key found")
except botocore.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "NoSuchKey", e.response
print("boto3 ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_and_boto3_work_through_the_sidecar_and_blocks_reach_minio() -> Result<()> {
    let minio = Minio::start().await?;
    let toxi = Toxiproxy::start().await?;
    let root = tempfile::tempdir()?;
    let volumes = write_volumes_file(root.path(), minio.bucket())?;
    let store_link = toxi.create_proxy("store", &minio.addr().to_string()).await?;
    let mut procs = Vec::new();
    let mut addrs = Vec::new();
    for name in ["p1", "p2", "p3"] {
        let p = Proxy::start(name, root.path(), &volumes, &format!("http://{store_link}"), &minio).await?;
        addrs.push(p.addr.to_string());
        procs.push(p);
    }
    let disc = root.path().join("discovery.json");
    write_discovery(
        &disc,
        &discovery(minio.bucket(), Some(minio.endpoint()), &[GroupSpec { name: "g".into(), addresses: addrs }]),
    )?;
    let sidecar = start_sidecar(root.path(), &disc, &minio, &[]).await?;
    let endpoint = sidecar_endpoint(&sidecar);
    let http = reqwest::Client::new();

    // Writes stay unflushed while the proxies cannot reach MinIO.
    toxi.set_down("store", true).await?;
    let small = root.path().join("small.txt");
    std::fs::write(&small, "0123456789abcdef")?;
    let big = root.path().join("big.bin");
    let data: Vec<u8> = (0..50u32 * 1024 * 1024).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&big, &data)?;
    let s = small.to_str().unwrap();
    let b = big.to_str().unwrap();
    aws_ok(&endpoint, &["s3", "cp", "--only-show-errors", s, "s3://vol1/cli/small.txt"])?;
    aws_ok(&endpoint, &["s3", "cp", "--only-show-errors", b, "s3://vol1/cli/big.bin"])?;
    let listing = aws_ok(&endpoint, &["s3", "ls", "--recursive", "s3://vol1/"])?;
    assert!(listing.contains("cli/small.txt") && listing.contains("cli/big.bin"), "{listing}");
    assert!(in_minio(&minio, "cli/small.txt").await?.is_none(), "still unflushed, yet listed");

    let range_out = root.path().join("range.out");
    aws_ok(
        &endpoint,
        &[
            "s3api",
            "get-object",
            "--bucket",
            "vol1",
            "--key",
            "cli/small.txt",
            "--range",
            "bytes=3-6",
            range_out.to_str().unwrap(),
        ],
    )?;
    assert_eq!(std::fs::read(&range_out)?, b"3456");
    let back = root.path().join("back.bin");
    aws_ok(&endpoint, &["s3", "cp", "--only-show-errors", "s3://vol1/cli/big.bin", back.to_str().unwrap()])?;
    assert_eq!(sha(&back)?, sha(&big)?);
    aws_ok(&endpoint, &["s3", "cp", "--only-show-errors", s, "s3://vol1/cli/gone.txt"])?;
    aws_ok(&endpoint, &["s3", "rm", "--only-show-errors", "s3://vol1/cli/gone.txt"])?;
    let listing = aws_ok(&endpoint, &["s3", "ls", "--recursive", "s3://vol1/"])?;
    assert!(!listing.contains("gone.txt"), "{listing}");
    let too_long = format!("s3://vol1/{}", "k".repeat(1024));
    let bad = aws(&endpoint, &["s3", "cp", s, &too_long])?;
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("KeyTooLongError"));

    let py = Command::new(tool_path(Tool::Python)?).args(["-c", BOTO3, &endpoint, b]).output()?;
    assert!(
        py.status.success(),
        "boto3: {}{}",
        String::from_utf8_lossy(&py.stdout),
        String::from_utf8_lossy(&py.stderr)
    );

    // Once the store is back, the bytes land in MinIO, as written.
    toxi.set_down("store", false).await?;
    for (k, want) in [("cli/small.txt", std::fs::read(&small)?), ("cli/big.bin", data.clone()), ("boto/big.bin", data)]
    {
        wait_until(&format!("{k} is in MinIO"), Duration::from_secs(60), || async {
            in_minio(&minio, k).await.ok().flatten().is_some_and(|(d, _)| d == want)
        })
        .await?;
    }
    wait_until("deleted and staged keys are gone from MinIO", Duration::from_secs(30), || async {
        let store = minio_store(&minio).await;
        use blockproxy::store::Store;
        store
            .list(minio.bucket(), PREFIX)
            .await
            .is_ok_and(|l| l.iter().all(|o| !o.key.contains("gone.txt") && !o.key.contains("del1")))
    })
    .await?;
    let status: serde_json::Value = http.get(format!("{endpoint}/_blockproxy/status")).send().await?.json().await?;
    assert_eq!(status["chosenGroup"], "g", "{status}");
    let metrics = http.get(format!("{endpoint}/_blockproxy/metrics")).send().await?.text().await?;
    assert!(metrics.contains("blockproxy_client_chosen_group{group=\"g\"} 1"), "{metrics}");
    Ok(())
}

/// `aws s3 sync` of a tree with empty files: an empty PUT carries `Expect: 100-continue` and is
/// answered without `100 Continue`, after which botocore misreads the next response on the same
/// connection (`MissingHeaderBodySeparatorDefect`: its status line taken for a header, its length
/// lost) and waits for the connection to close. With one connection the next file shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_s3_sync_of_empty_files_never_leaves_botocore_misreading_the_next_response() -> Result<()> {
    let minio = Minio::start().await?;
    let root = tempfile::tempdir()?;
    let volumes = write_volumes_file(root.path(), minio.bucket())?;
    let p = Proxy::start("p1", root.path(), &volumes, &minio.endpoint(), &minio).await?;
    let disc = root.path().join("discovery.json");
    write_discovery(
        &disc,
        &discovery(
            minio.bucket(),
            Some(minio.endpoint()),
            &[GroupSpec { name: "g".into(), addresses: vec![p.addr.to_string()] }],
        ),
    )?;
    let sidecar = start_sidecar(root.path(), &disc, &minio, &[]).await?;
    let endpoint = sidecar_endpoint(&sidecar);

    let tree = root.path().join("tree");
    std::fs::create_dir(&tree)?;
    for (name, len) in [("a-empty", 0), ("b", 100), ("c-empty", 0), ("d", 5_000), ("e", 1)] {
        std::fs::write(tree.join(name), vec![b'x'; len])?;
    }
    // One request at a time, so every file's PUT follows the previous one on the same connection.
    let config = root.path().join("aws-config");
    std::fs::write(&config, "[default]\ns3 =\n  max_concurrent_requests = 1\n")?;
    let out = Command::new(tool_path(Tool::Aws)?)
        .args(["--debug", "--endpoint-url", &endpoint, "--cli-read-timeout", "10", "s3", "sync"])
        .arg(&tree)
        .arg("s3://vol1/sync/")
        .env("AWS_ACCESS_KEY_ID", "blockproxy")
        .env("AWS_SECRET_ACCESS_KEY", "blockproxy")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()?;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "aws s3 sync failed: {}", &log[log.len().saturating_sub(4000)..]);
    let puts = log.matches("Event needs-retry.s3.PutObject: calling handler <botocore.retryhandler").count();
    assert_eq!(puts, 5, "every file is put once, without retries");
    let misread: Vec<_> = log.lines().filter(|l| l.contains("Failed to parse headers")).collect();
    assert!(misread.is_empty(), "botocore misread a response: {misread:?}");
    let listing = aws_ok(&endpoint, &["s3", "ls", "--recursive", "s3://vol1/sync/"])?;
    for name in ["a-empty", "b", "c-empty", "d", "e"] {
        assert!(listing.contains(&format!("sync/{name}")), "{name} missing: {listing}");
    }
    Ok(())
}

/// The S3 endpoint's slow clients are bounded as the proxy's are: a connection whose request
/// head never ends is cut by `--header-read-timeout`, and on SIGTERM a response the client stops
/// reading holds the sidecar no longer than `--shutdown-grace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_cut_by_the_header_timeout_and_never_hold_the_sidecar_past_its_grace() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let minio = Minio::start().await?;
    let root = tempfile::tempdir()?;
    let volumes = write_volumes_file(root.path(), minio.bucket())?;
    let proxy = Proxy::start("p1", root.path(), &volumes, &minio.endpoint(), &minio).await?;
    let disc = root.path().join("discovery.json");
    let group = GroupSpec { name: "g".into(), addresses: vec![proxy.addr.to_string()] };
    write_discovery(&disc, &discovery(minio.bucket(), Some(minio.endpoint()), &[group]))?;
    let extra = ["--header-read-timeout", "2s", "--shutdown-grace", "1s"];
    let mut sidecar = start_sidecar(root.path(), &disc, &minio, &extra).await?;
    let endpoint = sidecar_endpoint(&sidecar);

    // A request head that never ends.
    let mut cut = tokio::net::TcpStream::connect(sidecar.addr()).await?;
    cut.write_all(b"GET /vol1/a HTTP/1.1\r\nHost: sidecar\r\n").await?;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), cut.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(_))), "the stalled connection was not cut by the header timeout: {closed:?}");
    let metrics = reqwest::get(format!("{endpoint}/_blockproxy/metrics")).await?.text().await?;
    // At least this one (the harness's readiness check may have left an idle one too).
    assert!(metric_sum(&metrics, "blockproxy_client_s3_timeouts_total") >= 1.0, "{metrics}");

    // A GET of a 32 MiB object (a presigned URL, from the aws CLI) whose client reads a little and
    // then stops: the response is in flight, blocked on a full socket, when SIGTERM arrives.
    let big = root.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 32 << 20])?;
    aws_ok(&endpoint, &["s3", "cp", "--only-show-errors", big.to_str().unwrap(), "s3://vol1/big.bin"])?;
    let url: reqwest::Url = aws_ok(&endpoint, &["s3", "presign", "s3://vol1/big.bin"])?.trim().parse()?;
    let mut held = tokio::net::TcpStream::connect(sidecar.addr()).await?;
    let head = format!(
        "GET {}?{} HTTP/1.1\r\nHost: {}\r\n\r\n",
        url.path(),
        url.query().unwrap_or_default(),
        url.host_str().zip(url.port()).map(|(h, p)| format!("{h}:{p}")).unwrap_or_default()
    );
    held.write_all(head.as_bytes()).await?;
    let mut first = [0u8; 12];
    held.read_exact(&mut first).await?;
    assert_eq!(&first, b"HTTP/1.1 200", "the presigned GET was answered");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = sidecar
        .stop_with("TERM", Duration::from_secs(10))
        .await
        .context("the sidecar did not exit within its grace")?;
    assert!(status.success(), "clean exit: {status}");
    drop(held);
    Ok(())
}

/// Signs its own requests with botocore's SigV4, so that it can send what no S3 library would: a
/// payload whose signed SHA-256 is another body's, and a body its client abandons half-way. The
/// sidecar relays a one-part body to its proxy as it arrives (ADR 0022), before either fault is
/// known; neither may store anything. A correct body sent the same way is the control.
const FAULTY_BODIES: &str = r#"
import sys, time, socket, hashlib, http.client, urllib.parse
import boto3, botocore
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
ep = sys.argv[1]
u = urllib.parse.urlparse(ep)
body = bytes(range(256)) * 4096 * 3
def signed(key, payload_hash):
    req = AWSRequest(method="PUT", url=f"{ep}/vol1/{key}", headers={"x-amz-content-sha256": payload_hash, "content-length": str(len(body))})
    SigV4Auth(Credentials("blockproxy", "blockproxy"), "s3", "us-east-1").add_auth(req)
    return dict(req.headers.items())
def put(key, payload_hash):
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    c.request("PUT", f"/vol1/{key}", body=body, headers=signed(key, payload_hash))
    r = c.getresponse()
    return r.status, r.read()
status, text = put("faulty/wrong-sha", hashlib.sha256(b"another body").hexdigest())
assert status == 400, (status, text)
s = socket.create_connection((u.hostname, u.port))
head = "PUT /vol1/faulty/half HTTP/1.1\r\nHost: %s\r\n" % u.netloc
head += "".join("%s: %s\r\n" % kv for kv in signed("faulty/half", "UNSIGNED-PAYLOAD").items()) + "\r\n"
s.sendall(head.encode() + body[: len(body) // 2])
time.sleep(1)
s.close()
status, text = put("faulty/control", hashlib.sha256(body).hexdigest())
assert status == 200, (status, text)
time.sleep(1)
s3 = boto3.client("s3", endpoint_url=ep, aws_access_key_id="blockproxy", aws_secret_access_key="blockproxy", region_name="us-east-1")
assert s3.get_object(Bucket="vol1", Key="faulty/control")["Body"].read() == body, "the control reads back"
for key in ["faulty/wrong-sha", "faulty/half"]:
    try:
        s3.head_object(Bucket="vol1", Key=key)
        raise SystemExit("%s was stored" % key)
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] in ("404", "NoSuchKey"), (key, e.response)
print("faulty bodies ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_payload_fails_its_signature_or_stops_half_way_stores_nothing() -> Result<()> {
    let minio = Minio::start().await?;
    let root = tempfile::tempdir()?;
    let volumes = write_volumes_file(root.path(), minio.bucket())?;
    let p = Proxy::start("p1", root.path(), &volumes, &minio.endpoint(), &minio).await?;
    let disc = root.path().join("discovery.json");
    let group = GroupSpec { name: "g".into(), addresses: vec![p.addr.to_string()] };
    write_discovery(&disc, &discovery(minio.bucket(), Some(minio.endpoint()), &[group]))?;
    let sidecar = start_sidecar(root.path(), &disc, &minio, &[]).await?;
    let endpoint = sidecar_endpoint(&sidecar);
    let py = Command::new(tool_path(Tool::Python)?).args(["-c", FAULTY_BODIES, &endpoint]).output()?;
    assert!(py.status.success(), "{}{}", String::from_utf8_lossy(&py.stdout), String::from_utf8_lossy(&py.stderr));
    // Nor did anything reach the store behind the proxy.
    for key in ["faulty/wrong-sha", "faulty/half"] {
        assert!(in_minio(&minio, key).await?.is_none(), "{key} reached MinIO");
    }
    Ok(())
}
