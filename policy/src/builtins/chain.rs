//! Chain verification for `crypto.x509.parse_and_verify_certificates`, following Go's
//! `Certificate.Verify` with the options OPA passes: the first certificate is the only root,
//! the last is the leaf, those between are intermediates (in any order); the time is now, and
//! the requested usage is Go's default, server authentication.
//!
//! As Go: every certificate must be within its validity and carry no critical extension Go
//! does not handle; a certificate that lists extended key usages must allow server
//! authentication (or any); intermediates must be CAs; an issuer must be a CA (when v3),
//! allowed to sign certificates by its key usage (when it has one), and respect its path
//! length; MD5 and SHA-1 signatures are refused. Unlike Go, name constraints are not evaluated:
//! a CA that has any fails the chain, a refusal where Go might accept, never the reverse.

use x509_parser::certificate::X509Certificate;
use x509_parser::time::ASN1Time;
use x509_parser::x509::X509Version;

/// Go's bound on signature checks per verification (`maxChainSignatureChecks`).
const MAX_SIGNATURE_CHECKS: usize = 100;

/// Extensions Go's parser handles; any other that is critical makes a certificate invalid.
const HANDLED_EXTENSIONS: [&str; 13] = [
    "2.5.29.14",         // subject key identifier
    "2.5.29.15",         // key usage
    "2.5.29.17",         // subject alternative name
    "2.5.29.19",         // basic constraints
    "2.5.29.30",         // name constraints
    "2.5.29.31",         // CRL distribution points
    "2.5.29.32",         // certificate policies
    "2.5.29.33",         // policy mappings
    "2.5.29.35",         // authority key identifier
    "2.5.29.36",         // policy constraints
    "2.5.29.37",         // extended key usage
    "2.5.29.54",         // inhibit anyPolicy
    "1.3.6.1.5.5.7.1.1", // authority information access
];

/// md2, md5 and SHA-1 with RSA (two OIDs), ECDSA with SHA-1, DSA with SHA-1.
const INSECURE_SIGNATURES: [&str; 6] = [
    "1.2.840.113549.1.1.2",
    "1.2.840.113549.1.1.4",
    "1.2.840.113549.1.1.5",
    "1.3.14.3.2.29",
    "1.2.840.10045.4.1",
    "1.2.840.10040.4.3",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Leaf,
    Intermediate,
    Root,
}

/// The verified chain as indices into `certs`, leaf first and root last; `None` when the
/// certificates do not form one (fewer than two included, as OPA requires).
pub(super) fn verify(certs: &[X509Certificate<'_>], now: ASN1Time) -> Option<Vec<usize>> {
    let numbered: Vec<Numbered<'_, '_>> = certs.iter().enumerate().collect();
    let (&leaf, rest) = numbered.split_last()?;
    let (&root, intermediates) = rest.split_first()?;
    let mut search = Search { root, intermediates, now, signature_checks: 0 };
    if !search.valid(leaf.1, Role::Leaf, &[]) {
        return None;
    }
    // Go: a leaf that is itself the root is its own chain.
    if leaf.1.as_raw() == root.1.as_raw() {
        return Some(vec![leaf.0]);
    }
    let chain = search.extend(vec![leaf])?;
    Some(chain.into_iter().map(|(index, _)| index).collect())
}

/// A certificate and its position in the input.
type Numbered<'c, 'a> = (usize, &'c X509Certificate<'a>);

struct Search<'n, 'c, 'a> {
    root: Numbered<'c, 'a>,
    intermediates: &'n [Numbered<'c, 'a>],
    now: ASN1Time,
    signature_checks: usize,
}

impl<'c, 'a> Search<'_, 'c, 'a> {
    /// `chain` (leaf first) extended to the root, the root tried before the intermediates as
    /// Go does; the first complete chain is Go's first.
    fn extend(&mut self, chain: Vec<Numbered<'c, 'a>>) -> Option<Vec<Numbered<'c, 'a>>> {
        let (_, child) = *chain.last()?;
        let intermediates = self.intermediates.iter().map(|&candidate| (candidate, Role::Intermediate));
        let candidates: Vec<_> = std::iter::once((self.root, Role::Root)).chain(intermediates).collect();
        for (candidate, role) in candidates {
            if !may_issue(child, candidate.1, &chain) {
                continue;
            }
            self.signature_checks += 1;
            if self.signature_checks > MAX_SIGNATURE_CHECKS {
                return None;
            }
            if !signed(child, candidate.1) || !self.valid(candidate.1, role, &chain) {
                continue;
            }
            let longer = [&chain[..], &[candidate]].concat();
            if role == Role::Root {
                return Some(longer);
            }
            if let Some(complete) = self.extend(longer) {
                return Some(complete);
            }
        }
        None
    }

    /// Go's `isValid` for a certificate about to join `chain` in `role`.
    fn valid(&self, cert: &X509Certificate<'_>, role: Role, chain: &[Numbered<'_, '_>]) -> bool {
        let now = self.now.to_datetime();
        let validity = cert.validity();
        let current = validity.not_before.to_datetime() <= now && now <= validity.not_after.to_datetime();
        let critical_handled = cert
            .extensions()
            .iter()
            .all(|e| !e.critical || HANDLED_EXTENSIONS.contains(&e.oid.to_id_string().as_str()));
        let constrained = role != Role::Leaf && has_extension(cert, "2.5.29.30");
        let ca_if_intermediate =
            role != Role::Intermediate || matches!(cert.basic_constraints(), Ok(Some(b)) if b.value.ca);
        current
            && critical_handled
            && allows_server_auth(cert)
            && !constrained
            && ca_if_intermediate
            && path_length_respected(cert, chain.len())
    }
}

/// Go's potential parents: named as the child's issuer and not already in the chain (the same
/// subject, key and alternative names), which stops loops of cross-signatures.
fn may_issue(child: &X509Certificate<'_>, parent: &X509Certificate<'_>, chain: &[Numbered<'_, '_>]) -> bool {
    let same = |a: &X509Certificate<'_>| {
        a.subject().as_raw() == parent.subject().as_raw()
            && a.public_key().raw == parent.public_key().raw
            && subject_alt_names(a) == subject_alt_names(parent)
    };
    child.issuer().as_raw() == parent.subject().as_raw() && !chain.iter().any(|(_, cert)| same(cert))
}

/// Go's `CheckSignatureFrom`.
fn signed(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> bool {
    let is_ca = match parent.basic_constraints() {
        Ok(Some(basic)) => basic.value.ca,
        Ok(None) => parent.version() != X509Version::V3,
        Err(_) => false,
    };
    let may_sign_certificates = match parent.key_usage() {
        Ok(Some(usage)) => usage.value.flags == 0 || usage.value.key_cert_sign(),
        Ok(None) => true,
        Err(_) => false,
    };
    let insecure = INSECURE_SIGNATURES.contains(&child.signature_algorithm.algorithm.to_id_string().as_str());
    is_ca && may_sign_certificates && !insecure && child.verify_signature(Some(parent.public_key())).is_ok()
}

/// Whether the certificate lists no extended key usage, or lists server authentication or any.
fn allows_server_auth(cert: &X509Certificate<'_>) -> bool {
    match cert.extended_key_usage() {
        Ok(None) => true,
        Ok(Some(eku)) => {
            let eku = eku.value;
            let lists_any = eku.any
                || eku.server_auth
                || eku.client_auth
                || eku.code_signing
                || eku.email_protection
                || eku.time_stamping
                || eku.ocsp_signing
                || !eku.other.is_empty();
            !lists_any || eku.any || eku.server_auth
        }
        Err(_) => false,
    }
}

/// Go: a CA whose basic constraints set a path length admits at most that many intermediates
/// below it (the chain so far, `chain_len` long, holds the leaf and those intermediates).
fn path_length_respected(cert: &X509Certificate<'_>, chain_len: usize) -> bool {
    match cert.basic_constraints() {
        Ok(Some(basic)) => match basic.value.path_len_constraint {
            Some(max) => chain_len.saturating_sub(1) <= usize::try_from(max).unwrap_or(usize::MAX),
            None => true,
        },
        Ok(None) => true,
        Err(_) => false,
    }
}

fn has_extension(cert: &X509Certificate<'_>, oid: &str) -> bool {
    cert.extensions().iter().any(|e| e.oid.to_id_string() == oid)
}

fn subject_alt_names<'a>(cert: &X509Certificate<'a>) -> Option<&'a [u8]> {
    cert.extensions().iter().find(|e| e.oid.to_id_string() == "2.5.29.17").map(|e| e.value)
}
