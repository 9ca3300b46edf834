//! `blockproxy quickstart` as the README runs it: start it, copy a file in and back out with the
//! aws CLI, see the block in the local store, stop it with Ctrl-C (SIGINT).

mod client_support;

use anyhow::Result;
use blockproxy::store::{LocalDirStore, Store};
use blockproxy_testenv::{Blockproxy, BlockproxyCommand, Tool, tool_path};
use client_support::free_port;
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_serves_s3_on_local_proxies_and_stops_cleanly_on_ctrl_c() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut quickstart = Blockproxy::start(
        BlockproxyCommand::new(env!("CARGO_BIN_EXE_blockproxy"), "quickstart", ["quickstart", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--dir")
            .arg(dir.path())
            .ready_url(&format!("{endpoint}/_blockproxy/readyz")),
    )
    .await?;
    let aws = |args: &[&str]| {
        Command::new(tool_path(Tool::Aws).unwrap())
            .arg("--endpoint-url")
            .arg(&endpoint)
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "blockproxy")
            .env("AWS_SECRET_ACCESS_KEY", "blockproxy")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .output()
            .unwrap()
    };
    let file = dir.path().join("hello.txt");
    std::fs::write(&file, "hello, blockproxy\n")?;
    let out = aws(&["s3", "cp", "--only-show-errors", file.to_str().unwrap(), "s3://demo/hello.txt"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ls = aws(&["s3", "ls", "s3://demo/"]);
    assert!(String::from_utf8_lossy(&ls.stdout).contains("hello.txt"));
    let back = dir.path().join("back.txt");
    let out = aws(&["s3", "cp", "--only-show-errors", "s3://demo/hello.txt", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&back)?, "hello, blockproxy\n");

    // The README's large file: 100 MiB under a key with spaces, up (the CLI's multipart upload)
    // and back (striped block reads once flushed, from the home before).
    let big: Vec<u8> = (0..100u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let big_file = dir.path().join("big.bin");
    std::fs::write(&big_file, &big)?;
    let big_key = "data/a big file.bin";
    let out = aws(&["s3", "cp", "--only-show-errors", big_file.to_str().unwrap(), &format!("s3://demo/{big_key}")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let big_back = dir.path().join("big.back");
    let out = aws(&["s3", "cp", "--only-show-errors", &format!("s3://demo/{big_key}"), big_back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&big_back)? == big, "the large file came back different");

    // Ctrl-C: the proxies flush, the process exits 0, and the block is in the local store.
    let status = quickstart.stop_with("INT", Duration::from_secs(60)).await?;
    let stdout = quickstart.log_text();
    assert!(status.success(), "quickstart exited with {status}");
    assert!(stdout.contains("aws --endpoint-url") && stdout.contains("stopped"), "{stdout}");
    let store = LocalDirStore::open(dir.path().join("store"))?;
    let stored = store.get("quickstart-bucket", "volumes/demo/hello.txt").await?.expect("hello.txt in the store");
    assert_eq!(&stored.data[..], b"hello, blockproxy\n");
    let stored =
        store.get("quickstart-bucket", &format!("volumes/demo/{big_key}")).await?.expect("the large file in the store");
    assert!(stored.data[..] == big[..], "the large file in the store differs");
    Ok(())
}
