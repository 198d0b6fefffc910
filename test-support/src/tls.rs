//! A throwaway PKI for TLS tests: a CA, a server certificate for 127.0.0.1/localhost, and a
//! client certificate whose URI SAN is a SPIFFE id (as Istio issues them).

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

/// PEM files of a CA, a server and a client.
pub struct TestPki {
    /// CA certificate.
    pub ca_pem: String,
    /// Server certificate (SANs 127.0.0.1 and localhost).
    pub server_cert_pem: String,
    /// Server private key.
    pub server_key_pem: String,
    /// Client certificate (URI SAN = `spiffe_id`).
    pub client_cert_pem: String,
    /// Client private key.
    pub client_key_pem: String,
    /// More clients of the same CA, by identity: (id, certificate, key).
    pub other_clients: Vec<(String, String, String)>,
}

/// Makes a new PKI; the client's SPIFFE id is `spiffe_id`.
pub fn pki(spiffe_id: &str) -> TestPki {
    pki_with_clients(spiffe_id, &[])
}

/// A new PKI with a client for `spiffe_id` and one more for each of `others` (URI SANs too).
pub fn pki_with_clients(spiffe_id: &str, others: &[&str]) -> TestPki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct subjects: with rcgen's one default name for all three, OpenSSL (Python's
    // requests) takes the server certificate for self-signed and refuses it.
    ca_params.distinguished_name.push(DnType::CommonName, "Qiria test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");

    let server_key = KeyPair::generate().expect("server key");
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("server params");
    server_params.distinguished_name.push(DnType::CommonName, "localhost");
    let server = server_params.signed_by(&server_key, &ca).expect("server cert");

    let client_for = |id: &str| {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.subject_alt_names = vec![SanType::URI(id.try_into().expect("spiffe id"))];
        params.distinguished_name.push(DnType::CommonName, "Qiria test client");
        let cert = params.signed_by(&key, &ca).expect("client cert");
        (cert.pem(), key.serialize_pem())
    };
    let (client_cert_pem, client_key_pem) = client_for(spiffe_id);
    let other_clients = others
        .iter()
        .map(|id| {
            let (cert, key) = client_for(id);
            (id.to_string(), cert, key)
        })
        .collect();

    TestPki {
        ca_pem: ca.pem(),
        server_cert_pem: server.pem(),
        server_key_pem: server_key.serialize_pem(),
        client_cert_pem,
        client_key_pem,
        other_clients,
    }
}
