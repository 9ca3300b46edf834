//! The PKI of a test control plane, generated with rcgen.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The files of a control plane's PKI, all PEM.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate (it signs the serving and the client certificates).
    pub ca_cert: PathBuf,
    /// The CA's private key (for kube-controller-manager's `--cluster-signing-*`).
    pub ca_key: PathBuf,
    /// kube-apiserver's serving certificate, for 127.0.0.1 and localhost.
    pub serving_cert: PathBuf,
    /// The serving certificate's key.
    pub serving_key: PathBuf,
    /// The admin client certificate (CN=admin, O=system:masters).
    pub admin_cert: PathBuf,
    /// The admin client certificate's key.
    pub admin_key: PathBuf,
    /// The service-account token signing key.
    pub service_account_key: PathBuf,
    /// The service-account token signing key's public key (token verification).
    pub service_account_public_key: PathBuf,
}

impl Pki {
    /// Generates a new PKI into `dir`.
    pub fn generate(dir: &Path) -> Result<Self> {
        let write = |name: &str, pem: String| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };

        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, "blockproxy-testenv-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate()?;
        let ca_key_pem = ca_key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

        let mut serving = CertificateParams::new(vec!["localhost".to_owned()])?;
        serving.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        serving.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        for name in ["kubernetes", "kubernetes.default", "kubernetes.default.svc"] {
            serving.subject_alt_names.push(SanType::DnsName(name.try_into()?));
        }
        serving.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_key = KeyPair::generate()?;
        let serving_cert = serving.signed_by(&serving_key, &ca)?;

        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin.distinguished_name.push(DnType::CommonName, "admin");
        admin.distinguished_name.push(DnType::OrganizationName, "system:masters");
        admin.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_key = KeyPair::generate()?;
        let admin_cert = admin.signed_by(&admin_key, &ca)?;

        let sa_key = KeyPair::generate()?;

        Ok(Self {
            ca_cert: write("ca.crt", ca.pem())?,
            ca_key: write("ca.key", ca_key_pem)?,
            serving_cert: write("apiserver.crt", serving_cert.pem())?,
            serving_key: write("apiserver.key", serving_key.serialize_pem())?,
            admin_cert: write("admin.crt", admin_cert.pem())?,
            admin_key: write("admin.key", admin_key.serialize_pem())?,
            service_account_key: write("sa.key", sa_key.serialize_pem())?,
            service_account_public_key: write("sa.pub", sa_key.public_key_pem())?,
        })
    }
}
