//! `dev-pki DIR CLIENT_ID`: a throwaway PKI for `./dev up` — a CA, a server certificate for
//! localhost/127.0.0.1 in `DIR/server/` and a client certificate whose URI SAN is `CLIENT_ID`
//! in `DIR/client/`, each directory with Kubernetes' `kubernetes.io/tls` names (`ca.crt`,
//! `tls.crt`, `tls.key`), as the secrets mounted in a cluster would be. Development only.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, client_id] = args.as_slice() else {
        eprintln!("usage: dev-pki DIR CLIENT_ID");
        return ExitCode::from(2);
    };
    let pki = qiria_test_support::tls::pki(client_id);
    let write = |sub: &str, cert: &str, key: &str| -> std::io::Result<()> {
        let dir = Path::new(dir).join(sub);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("ca.crt"), &pki.ca_pem)?;
        std::fs::write(dir.join("tls.crt"), cert)?;
        std::fs::write(dir.join("tls.key"), key)
    };
    let written = write("server", &pki.server_cert_pem, &pki.server_key_pem)
        .and_then(|()| write("client", &pki.client_cert_pem, &pki.client_key_pem));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dev-pki: {e}");
            ExitCode::FAILURE
        }
    }
}
