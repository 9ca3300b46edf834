//! The PKI of a [`super::Cluster`]: one CA, the API server's serving certificate, a client
//! certificate and kubeconfig per component (each node as `system:node:<name>`, so the Node
//! authorizer and NodeRestriction apply as on a real cluster), and the service-account key pair.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::control_plane::kubeconfig_yaml;

/// The PKI files of a cluster (PEM), in one folder.
#[derive(Debug, Clone)]
pub struct ClusterPki {
    dir: PathBuf,
    /// The CA certificate.
    pub ca_cert: PathBuf,
    /// The CA key (kube-controller-manager signs CSRs with it).
    pub ca_key: PathBuf,
    /// The service-account token signing key.
    pub sa_key: PathBuf,
    /// Its public key.
    pub sa_pub: PathBuf,
}

/// Issues certificates signed by the cluster CA.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn sign(&self, params: CertificateParams) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

impl ClusterPki {
    /// Generates the PKI into `dir` for an API server reachable at `api_ip` (inside the cluster)
    /// and `nodes` nodes named `node1..nodeN`.
    pub fn generate(dir: &Path, api_ip: Ipv4Addr, service_ip: Ipv4Addr, nodes: usize) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let write = |name: &str, pem: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };

        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, "blockproxy-cluster-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate()?;
        let ca_key_pem = ca_key.serialize_pem();
        let ca = Ca { issuer: CertifiedIssuer::self_signed(ca_params, ca_key)? };
        let ca_cert = write("ca.crt", &ca.issuer.pem())?;
        let ca_key = write("ca.key", &ca_key_pem)?;

        let mut serving = CertificateParams::new(vec!["localhost".to_owned()])?;
        serving.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        for ip in [api_ip, Ipv4Addr::LOCALHOST, service_ip] {
            serving.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(ip)));
        }
        for name in
            ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"]
        {
            serving.subject_alt_names.push(SanType::DnsName(name.try_into()?));
        }
        serving.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let (cert, key) = ca.sign(serving)?;
        write("apiserver.crt", &cert)?;
        write("apiserver.key", &key)?;

        let pki = Self { dir: dir.to_path_buf(), ca_cert, ca_key, sa_key: PathBuf::new(), sa_pub: PathBuf::new() };
        let mut clients = vec![
            ("admin".to_owned(), "kubernetes-admin".to_owned(), Some("system:masters")),
            ("apiserver-kubelet-client".to_owned(), "kube-apiserver-kubelet-client".to_owned(), Some("system:masters")),
            ("controller-manager".to_owned(), "system:kube-controller-manager".to_owned(), None),
            ("scheduler".to_owned(), "system:kube-scheduler".to_owned(), None),
            ("kube-proxy".to_owned(), "system:kube-proxy".to_owned(), None),
        ];
        for n in 1..=nodes {
            clients.push((format!("node{n}"), format!("system:node:node{n}"), Some("system:nodes")));
        }
        for (file, cn, org) in clients {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name.push(DnType::CommonName, cn);
            if let Some(org) = org {
                params.distinguished_name.push(DnType::OrganizationName, org);
            }
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let (cert, key) = ca.sign(params)?;
            write(&format!("{file}.crt"), &cert)?;
            write(&format!("{file}.key"), &key)?;
            let server = format!("https://{api_ip}:6443");
            std::fs::write(pki.kubeconfig(&file), pki.kubeconfig_for(&file, &server))?;
        }

        let sa = KeyPair::generate()?;
        Ok(Self {
            sa_key: write("sa.key", &sa.serialize_pem())?,
            sa_pub: write("sa.pub", &sa.public_key_pem())?,
            ..pki
        })
    }

    /// A PKI file by name (`apiserver.crt`, `node1.key`, ...).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The kubeconfig of `component` (`admin`, `node1`, `kube-proxy`, ...) for use inside the
    /// cluster's network namespace.
    pub fn kubeconfig(&self, component: &str) -> PathBuf {
        self.dir.join(format!("{component}.kubeconfig"))
    }

    /// A kubeconfig for `component`'s certificate, pointed at `server`.
    pub fn kubeconfig_for(&self, component: &str, server: &str) -> String {
        let user = format!(
            "client-certificate: {}\n    client-key: {}",
            self.file(&format!("{component}.crt")).display(),
            self.file(&format!("{component}.key")).display()
        );
        kubeconfig_yaml(server, &self.ca_cert, component, &user)
    }
}
