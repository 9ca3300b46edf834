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
