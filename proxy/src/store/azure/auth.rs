//! Azure credentials: an account's shared key (each request signed, "Shared Key" scheme) or a SAS
//! token (appended to each URL). Neither is ever logged.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::header::{HeaderMap, HeaderValue};

#[derive(Clone)]
pub enum AzureCredentials {
    /// The account key (base64, as the portal shows it), decoded.
    SharedKey(Vec<u8>),
    /// A SAS token (`sv=...&sig=...`, without a leading `?`).
    Sas(String),
}

impl std::fmt::Debug for AzureCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

impl AzureCredentials {
    pub fn shared_key(base64_key: &str) -> Result<Self, String> {
        B64.decode(base64_key.trim()).map(Self::SharedKey).map_err(|_| "the Azure account key is not base64".into())
    }

    pub fn sas(token: &str) -> Result<Self, String> {
        let token = token.trim().trim_start_matches('?');
        if !token.contains("sig=") {
            return Err("the Azure SAS token has no sig= field".into());
        }
        Ok(Self::Sas(token.to_owned()))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::SharedKey(_) => "shared-key",
            Self::Sas(_) => "sas",
        }
    }

    /// The URL to send (a SAS is appended to it) after adding the Authorization header for a
    /// shared key. `headers` must hold every header that is sent (Shared Key signs them).
    pub(super) fn authorize(
        &self,
        account: &str,
        method: &reqwest::Method,
        mut url: reqwest::Url,
        headers: &mut HeaderMap,
        content_length: u64,
    ) -> reqwest::Url {
        match self {
            Self::Sas(token) => {
                let query = match url.query() {
                    Some(q) if !q.is_empty() => format!("{q}&{token}"),
                    _ => token.clone(),
                };
                url.set_query(Some(&query));
                url
            }
            Self::SharedKey(key) => {
                let to_sign = string_to_sign(account, method, &url, headers, content_length);
                let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), to_sign.as_bytes());
                let auth = format!("SharedKey {account}:{}", B64.encode(tag.as_ref()));
                headers.insert("authorization", HeaderValue::from_str(&auth).expect("base64 is ascii"));
                url
            }
        }
    }
}

/// The Shared Key string to sign (version 2015-02-21 and later: a zero length is empty).
fn string_to_sign(
    account: &str,
    method: &reqwest::Method,
    url: &reqwest::Url,
    headers: &HeaderMap,
    content_length: u64,
) -> String {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let length = if content_length == 0 { String::new() } else { content_length.to_string() };
    let mut s = [
        method.as_str().to_owned(),
        h("content-encoding"),
        h("content-language"),
        length,
        h("content-md5"),
        h("content-type"),
        String::new(), // Date: x-ms-date is sent instead
        h("if-modified-since"),
        h("if-match"),
        h("if-none-match"),
        h("if-unmodified-since"),
        h("range"),
    ]
    .join("\n");
    s.push('\n');
    let mut ms: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-ms-"))
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").trim().to_owned()))
        .collect();
    ms.sort();
    for (k, v) in ms {
        s.push_str(&format!("{k}:{v}\n"));
    }
    s.push_str(&format!("/{account}{}", url.path()));
    let mut params: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    for (k, v) in url.query_pairs() {
        params.entry(k.to_lowercase()).or_default().push(v.into_owned());
    }
    for (k, mut vs) in params {
        vs.sort();
        s.push_str(&format!("\n{k}:{}", vs.join(",")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_string_to_sign_follows_the_shared_key_layout() {
        let mut h = HeaderMap::new();
        h.insert("x-ms-version", HeaderValue::from_static("2021-08-06"));
        h.insert("x-ms-date", HeaderValue::from_static("Thu, 26 Nov 2026 15:00:00 GMT"));
        h.insert("if-match", HeaderValue::from_static("\"0x1\""));
        let url = reqwest::Url::parse("http://h/acct/c/a%20b?comp=list&Prefix=p").unwrap();
        let s = string_to_sign("acct", &reqwest::Method::PUT, &url, &h, 5);
        let want = "PUT\n\n\n5\n\n\n\n\n\"0x1\"\n\n\n\nx-ms-date:Thu, 26 Nov 2026 15:00:00 GMT\nx-ms-version:2021-08-06\n/acct/acct/c/a%20b\ncomp:list\nprefix:p";
        assert_eq!(s, want);
    }

    #[test]
    fn sas_tokens_are_appended() {
        let creds = AzureCredentials::sas("?sv=1&sig=abc").unwrap();
        let url = creds.authorize(
            "a",
            &reqwest::Method::GET,
            reqwest::Url::parse("http://h/a/c?comp=list").unwrap(),
            &mut HeaderMap::new(),
            0,
        );
        assert_eq!(url.query(), Some("comp=list&sv=1&sig=abc"));
        assert!(AzureCredentials::sas("sv=1").is_err());
    }
}
