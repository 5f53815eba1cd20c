//! Certificates for the test control plane: one CA, the API server's serving
//! certificate, an admin client certificate (group system:masters) and the
//! service-account signing key. Made fresh for every `cluster up`.

use std::path::Path;

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// Paths of everything written by [`write_pki`], relative to the PKI directory.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const SERVING_CERT: &str = "apiserver.crt";
pub const SERVING_KEY: &str = "apiserver.key";
pub const ADMIN_CERT: &str = "admin.crt";
pub const ADMIN_KEY: &str = "admin.key";
pub const SA_KEY: &str = "sa.key";
pub const SA_PUB: &str = "sa.pub";

fn write(dir: &Path, name: &str, content: &str) -> Result<()> {
    std::fs::write(dir.join(name), content)?;
    Ok(())
}

/// Writes a CA, serving and client certificates and the service-account keys to `dir`.
pub fn write_pki(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "stagecoach-test-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    write(dir, CA_KEY, &ca_key.serialize_pem())?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
    write(dir, CA_CERT, &ca.pem())?;

    let mut serving = CertificateParams::new(vec![
        "localhost".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
    ])?;
    for ip in ["127.0.0.1", "10.0.0.1"] {
        serving
            .subject_alt_names
            .push(SanType::IpAddress(ip.parse()?));
    }
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving.signed_by(&serving_key, &ca)?;
    write(dir, SERVING_CERT, &serving_cert.pem())?;
    write(dir, SERVING_KEY, &serving_key.serialize_pem())?;

    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin.distinguished_name.push(DnType::CommonName, "admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_key = KeyPair::generate()?;
    let admin_cert = admin.signed_by(&admin_key, &ca)?;
    write(dir, ADMIN_CERT, &admin_cert.pem())?;
    write(dir, ADMIN_KEY, &admin_key.serialize_pem())?;

    let sa_key = KeyPair::generate()?;
    write(dir, SA_KEY, &sa_key.serialize_pem())?;
    write(dir, SA_PUB, &sa_key.public_key_pem())?;
    Ok(())
}

/// A kubeconfig for `server` authenticating with the admin client certificate.
pub fn admin_kubeconfig(pki: &Path, server: &str) -> String {
    let p = |name: &str| pki.join(name).display().to_string();
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: stagecoach-test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: stagecoach-test
  context:
    cluster: stagecoach-test
    user: admin
current-context: stagecoach-test
",
        ca = p(CA_CERT),
        cert = p(ADMIN_CERT),
        key = p(ADMIN_KEY),
    )
}
