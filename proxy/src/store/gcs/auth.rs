//! GCS access tokens: from a service-account JSON key (a JWT signed with its RSA key, exchanged at
//! its `token_uri`), from the metadata server (workload identity, instance service account), or
//! none (emulators). Tokens are cached until a minute before they expire.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";
const METADATA_TOKEN_URL: &str =
    "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token";

#[derive(Clone)]
pub enum GcsCredentials {
    /// No token (fake-gcs-server and other emulators).
    Anonymous,
    /// A service-account key file's contents.
    ServiceAccount(Arc<ServiceAccountKey>),
    /// The metadata server of the node (GKE workload identity or the instance's account).
    MetadataServer,
}

impl std::fmt::Debug for GcsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl GcsCredentials {
    /// Parses a service-account JSON key (never logged).
    pub fn from_service_account_json(json: &str) -> Result<Self, String> {
        let key: ServiceAccountKey =
            serde_json::from_str(json).map_err(|e| format!("not a service-account JSON key: {e}"))?;
        key.signing_key()?;
        Ok(Self::ServiceAccount(Arc::new(key)))
    }

    /// For logs: which kind, and the account's email (not secret).
    pub fn describe(&self) -> String {
        match self {
            Self::Anonymous => "anonymous".into(),
            Self::ServiceAccount(k) => format!("service-account:{}", k.client_email),
            Self::MetadataServer => "metadata-server".into(),
        }
    }
}

#[derive(Deserialize)]
pub struct ServiceAccountKey {
    client_email: String,
    private_key: String,
    #[serde(default = "default_token_uri")]
    token_uri: String,
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".into()
}

impl ServiceAccountKey {
    fn signing_key(&self) -> Result<ring::rsa::KeyPair, String> {
        let der = rustls_pemfile::private_key(&mut self.private_key.as_bytes())
            .ok()
            .flatten()
            .ok_or("the key file's private_key is not a PEM private key")?;
        ring::rsa::KeyPair::from_pkcs8(der.secret_der()).map_err(|e| format!("the key file's private_key: {e}"))
    }

    /// A signed JWT asking for a storage token.
    fn assertion(&self) -> Result<String, String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iss": self.client_email, "scope": SCOPE, "aud": self.token_uri, "iat": now, "exp": now + 3600,
        });
        let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
        let key = self.signing_key()?;
        let mut sig = vec![0; key.public().modulus_len()];
        key.sign(&ring::signature::RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), signed.as_bytes(), &mut sig)
            .map_err(|_| "signing the token request failed".to_owned())?;
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

#[derive(Clone)]
pub(super) struct Auth {
    creds: GcsCredentials,
    http: reqwest::Client,
    cached: Arc<Mutex<Option<(String, Instant)>>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auth({})", self.creds.describe())
    }
}

impl Auth {
    pub(super) fn new(creds: GcsCredentials, http: reqwest::Client) -> Self {
        Self { creds, http, cached: Arc::new(Mutex::new(None)) }
    }

    /// The bearer token to send, `None` when anonymous. Errors are retryable (a token endpoint
    /// that is down) and never contain the token or key.
    pub(super) async fn token(&self) -> Result<Option<String>, String> {
        if matches!(self.creds, GcsCredentials::Anonymous) {
            return Ok(None);
        }
        let mut cached = self.cached.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(Some(token.clone()));
        }
        let req = match &self.creds {
            GcsCredentials::ServiceAccount(key) => self.http.post(&key.token_uri).form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", &key.assertion()?),
            ]),
            _ => self.http.get(METADATA_TOKEN_URL).header("metadata-flavor", "Google"),
        };
        let resp = req.send().await.map_err(|e| format!("asking for a GCS access token: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("asking for a GCS access token: HTTP {}", resp.status()));
        }
        let answer: TokenAnswer = resp.json().await.map_err(|e| format!("reading the GCS access token: {e}"))?;
        let until = Instant::now() + Duration::from_secs(answer.expires_in.saturating_sub(60));
        *cached = Some((answer.access_token.clone(), until));
        Ok(Some(answer.access_token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An RSA key made by openssl (a node package the test tools install): the PKCS#8 PEM and
    /// the PKCS#1 public key (DER) that verifies its signatures.
    fn openssl_rsa_key(dir: &std::path::Path) -> (String, Vec<u8>) {
        let key = dir.join("key.pem");
        let public = dir.join("public.der");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl").args(args).output().expect("openssl runs");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let (k, p) = (key.to_str().unwrap(), public.to_str().unwrap());
        run(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", k]);
        run(&["rsa", "-in", k, "-RSAPublicKey_out", "-outform", "DER", "-out", p]);
        (std::fs::read_to_string(&key).unwrap(), std::fs::read(&public).unwrap())
    }

    /// A token endpoint that checks the assertion's signature and claims, as Google's does.
    async fn token_endpoint(public: Vec<u8>, calls: Arc<AtomicUsize>) -> String {
        let app = axum::Router::new().route(
            "/token",
            axum::routing::post(move |body: String| {
                let (public, calls) = (public.clone(), calls.clone());
                async move {
                    let form: std::collections::HashMap<String, String> = body
                        .split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| {
                            (k.to_owned(), percent_encoding::percent_decode_str(v).decode_utf8_lossy().into())
                        })
                        .collect();
                    calls.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(form["grant_type"], "urn:ietf:params:oauth:grant-type:jwt-bearer");
                    let jwt = &form["assertion"];
                    let (signed, sig) = jwt.rsplit_once('.').unwrap();
                    let key =
                        ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public);
                    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
                    if key.verify(signed.as_bytes(), &sig).is_err() {
                        return (axum::http::StatusCode::UNAUTHORIZED, "bad signature".to_owned());
                    }
                    let claims: serde_json::Value =
                        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(signed.split('.').nth(1).unwrap()).unwrap())
                            .unwrap();
                    assert_eq!(claims["iss"], "sa@project.iam.gserviceaccount.com");
                    assert_eq!(claims["scope"], SCOPE);
                    assert!(claims["aud"].as_str().unwrap().ends_with("/token"));
                    (axum::http::StatusCode::OK, r#"{"access_token":"token-1","expires_in":3600}"#.to_owned())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/token")
    }

    #[tokio::test]
    async fn a_service_account_key_signs_a_token_request_and_the_token_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (pem, public) = openssl_rsa_key(dir.path());
        let calls = Arc::new(AtomicUsize::new(0));
        let token_uri = token_endpoint(public, calls.clone()).await;
        let json = serde_json::json!({
            "type": "service_account", "client_email": "sa@project.iam.gserviceaccount.com",
            "private_key": pem, "token_uri": token_uri,
        });
        let creds = GcsCredentials::from_service_account_json(&json.to_string()).unwrap();
        assert_eq!(creds.describe(), "service-account:sa@project.iam.gserviceaccount.com", "never the key");
        let auth = Auth::new(creds, reqwest::Client::new());
        assert_eq!(auth.token().await.unwrap().as_deref(), Some("token-1"));
        assert_eq!(auth.token().await.unwrap().as_deref(), Some("token-1"));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a valid token is reused");
        assert!(GcsCredentials::from_service_account_json(r#"{"client_email":"x","private_key":"nope"}"#).is_err());
    }
}
