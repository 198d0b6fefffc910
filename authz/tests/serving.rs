//! How authz serves: gRPC health is SERVING only once policies and keys are loaded; the
//! ext_authz port speaks TLS (and mTLS) when a certificate is configured.

use std::path::Path;
use std::time::Duration;

use qiria_test_support::authz::Authz;
use qiria_test_support::tokens::SigningKey;
use qiria_test_support::{wait_until, workspace_root};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const AUTHZ: &str = env!("CARGO_BIN_EXE_authz");
const SERVICE: &str = "envoy.service.auth.v3.Authorization";

async fn grpc_health(channel: Channel) -> Result<ServingStatus, tonic::Status> {
    let response = HealthClient::new(channel).check(HealthCheckRequest { service: SERVICE.into() }).await?;
    Ok(response.into_inner().status())
}

#[tokio::test]
async fn not_serving_until_keys_are_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys"); // does not exist yet, as a secret not mounted yet
    let policy = workspace_root().join("policies/rego");
    let mut authz = Authz::spawn(Path::new(AUTHZ), &policy, &keys, dir.path(), &["--log-format", "text"]);
    let endpoint = format!("http://127.0.0.1:{}", authz.grpc_port);
    let up = wait_until(Duration::from_secs(20), || async {
        match Channel::from_shared(endpoint.clone()).unwrap().connect().await {
            Ok(channel) => grpc_health(channel).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(up, "gRPC port never answered: {}", authz.output());
    let channel = Channel::from_shared(endpoint).unwrap().connect().await.unwrap();
    assert_eq!(grpc_health(channel.clone()).await.unwrap(), ServingStatus::NotServing);
    assert_eq!(authz.health().await["keys"]["active"], serde_json::Value::Null);

    std::fs::create_dir_all(&keys).unwrap();
    SigningKey::ec("late-key").write_public(&keys);
    authz.wait_healthy().await;
    let serving = wait_until(Duration::from_secs(5), || async {
        grpc_health(channel.clone()).await.ok() == Some(ServingStatus::Serving)
    })
    .await;
    assert!(serving, "not SERVING after keys arrived");
}

#[tokio::test]
async fn tls_and_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = qiria_test_support::tls::pki("spiffe://cluster.local/ns/mesh/sa/envoy");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (cert, key, ca) =
        (write("tls.crt", &pki.server_cert_pem), write("tls.key", &pki.server_key_pem), write("ca.crt", &pki.ca_pem));
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    SigningKey::ec("k").write_public(&keys);
    let policy = workspace_root().join("policies/rego");
    let authz = Authz::start(
        Path::new(AUTHZ),
        &policy,
        &keys,
        dir.path(),
        &["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &ca],
    )
    .await;
    let endpoint = || Channel::from_shared(format!("https://127.0.0.1:{}", authz.grpc_port)).unwrap();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca_pem)).domain_name("localhost");

    // With a client certificate from the CA: served.
    let mtls = tls.clone().identity(Identity::from_pem(&pki.client_cert_pem, &pki.client_key_pem));
    let channel = endpoint().tls_config(mtls).unwrap().connect().await.unwrap();
    assert_eq!(grpc_health(channel).await.unwrap(), ServingStatus::Serving);

    // Without one: refused.
    let refused = match endpoint().tls_config(tls).unwrap().connect().await {
        Ok(channel) => grpc_health(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client without a certificate was served");

    // Plain h2c: refused.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{}", authz.grpc_port)).unwrap();
    let refused = match plain.connect().await {
        Ok(channel) => grpc_health(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "plaintext was served on a TLS port");
}
