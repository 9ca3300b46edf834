//! TLS: a certificate from a test CA is served over HTTP/1.1 and HTTP/2; plaintext is refused.

mod support;

use anyhow::Result;
use blockproxy_testenv::{Blockproxy, BlockproxyCommand, Tls};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_test_ca_works_and_plaintext_is_refused() -> Result<()> {
    let backend = Backend::start().await?;
    let dir = tempfile::tempdir()?;
    // A test CA and a serving certificate for 127.0.0.1 signed by it.
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let cert =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?.signed_by(&key, &ca)?;
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;

    std::fs::write(dir.path().join("volumes.yaml"), volumes_yaml(&[(VOLUME, backend.minio.bucket(), TOKEN)]))?;

    let ca_cert = reqwest::Certificate::from_pem(ca.pem().as_bytes())?;
    // Readiness is checked by the builder without verifying the certificate; the checks below
    // verify it against the test CA.
    let proxy = Blockproxy::start(
        BlockproxyCommand::serve(env!("CARGO_BIN_EXE_blockproxy"), "blockproxy", &dir.path().join("cache2"))?
            .tls(Tls::Files { cert: cert_path.clone(), key: key_path.clone() })
            .args(["--disk-quota", "64Mi"])
            .volumes_file(&dir.path().join("volumes.yaml"))
            .s3_store(
                &format!("http://{}", backend.store_addr),
                backend.minio.access_key(),
                backend.minio.secret_key(),
            ),
    )
    .await?;
    let addr = proxy.addr().port();
    async {
        for http2 in [false, true] {
            let mut b = reqwest::Client::builder().tls_built_in_root_certs(false).add_root_certificate(ca_cert.clone());
            b = if http2 { b.http2_prior_knowledge() } else { b.http1_only() };
            let client = b.build()?;
            let url = format!("https://127.0.0.1:{addr}/v1/ping");
            let r = blockproxy_testenv::eventually(
                std::time::Duration::from_secs(20),
                std::time::Duration::from_millis(100),
                || async { Ok(client.get(&url).send().await?) },
            )
            .await?;
            assert_eq!(r.status(), 200);
            assert_eq!(r.version(), if http2 { reqwest::Version::HTTP_2 } else { reqwest::Version::HTTP_11 });
            let data = b"over tls".to_vec();
            let put = client
                .put(format!("https://127.0.0.1:{addr}/v1/volumes/{VOLUME}/blocks/tls{http2}"))
                .bearer_auth(TOKEN)
                .header(
                    blockproxy::protocol::CHECKSUM_HEADER,
                    blockproxy::protocol::Checksum::crc32c(&data).to_string(),
                )
                .body(data)
                .send()
                .await?;
            assert_eq!(put.status(), 200);
        }
        // Plain HTTP to the TLS port gets no HTTP answer.
        let plain = reqwest::Client::new().get(format!("http://127.0.0.1:{addr}/v1/ping")).send().await;
        assert!(
            plain.is_err() || !plain.as_ref().is_ok_and(|r| r.status().is_success()),
            "plaintext was served: {plain:?}"
        );
        anyhow::Ok(())
    }
    .await
}
