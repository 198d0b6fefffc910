//! `crypto.x509.parse_certificates` and `crypto.x509.parse_and_verify_certificates`:
//! certificates read from what OPA accepts (PEM, base64 of DER, base64 of PEM), each described
//! by a subset of Go's `x509.Certificate` JSON, which is OPA's output, under the same names:
//!
//! `Raw`, `Version`, `SerialNumber`, `Issuer`, `Subject` (each with `CommonName`,
//! `SerialNumber`, `Country`, `Organization`, `OrganizationalUnit`, `Locality`, `Province`,
//! `StreetAddress`, `PostalCode`, `Names`, `ExtraNames` always null), `NotBefore`, `NotAfter` (RFC 3339), `KeyUsage`,
//! `ExtKeyUsage`, `UnknownExtKeyUsage`, `BasicConstraintsValid`, `IsCA`, `MaxPathLen`,
//! `MaxPathLenZero`, `SubjectKeyId`, `AuthorityKeyId`, `DNSNames`, `EmailAddresses`,
//! `IPAddresses`, `URIStrings` (OPA's addition: SPIFFE ids are read here),
//! `SignatureAlgorithm`, `PublicKeyAlgorithm`.
//!
//! Values are encoded as Go encodes them: enums as Go's numbers, byte strings in base64, an
//! absent list as `null`. Left out: the other `Raw*` fields, `Signature`, `PublicKey`,
//! `Extensions`, `URIs` (Go's `url.URL` structs; `URIStrings` has them), policies, CRL and OCSP
//! locations, name constraints.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, bail, Result};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::{alphabet, Engine};
use x509_parser::asn1_rs::Oid;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::pem::parse_x509_pem;
use x509_parser::prelude::FromDer;
use x509_parser::signature_algorithm::RsaSsaPssParams;
use x509_parser::time::ASN1Time;
use x509_parser::x509::X509Name;

use super::{chain, object, string_arg, Builtin};
use crate::Value;

pub(super) const BUILTINS: &[(&str, u8, Builtin)] = &[
    ("crypto.x509.parse_certificates", 1, parse_certificates),
    ("crypto.x509.parse_and_verify_certificates", 1, parse_and_verify_certificates),
];

/// `crypto.x509.parse_certificates(certs)`: every certificate, in order; unreadable input is an
/// error.
fn parse_certificates(args: &[Value]) -> Result<Value> {
    let der = certificates_der(string_arg(args, 0)?)?;
    let certs = parse_all(&der)?;
    Ok(Value::from(certs.iter().map(certificate_json).collect::<Result<Vec<_>>>()?))
}

/// `crypto.x509.parse_and_verify_certificates(certs)`: `[true, chain]` when the certificates,
/// root first and leaf last, form a valid chain (`chain` runs from the leaf to the root), else
/// `[false, []]`, unreadable input included.
fn parse_and_verify_certificates(args: &[Value]) -> Result<Value> {
    let input = string_arg(args, 0)?;
    let invalid = || Value::from(vec![Value::from(false), Value::new_array()]);
    let Ok(der) = certificates_der(input) else { return Ok(invalid()) };
    let Ok(certs) = parse_all(&der) else { return Ok(invalid()) };
    // Go refuses at parse time what the JSON conversion refuses here (e.g. a bad IP SAN).
    let Ok(json) = certs.iter().map(certificate_json).collect::<Result<Vec<_>>>() else { return Ok(invalid()) };
    let Some(chain) = chain::verify(&certs, ASN1Time::now()) else { return Ok(invalid()) };
    let chain = chain.into_iter().filter_map(|index| json.get(index).cloned()).collect::<Vec<_>>();
    Ok(Value::from(vec![Value::from(true), Value::from(chain)]))
}

/// The certificates' DER, concatenated, from OPA's inputs: PEM (every block must be a
/// certificate; reading stops at the first that does not parse), else base64 of DER or of PEM.
fn certificates_der(input: &str) -> Result<Vec<u8>> {
    // Go's standard decoder skips line breaks and tolerates non-zero trailing bits.
    const LENIENT: GeneralPurpose =
        GeneralPurpose::new(&alphabet::STANDARD, GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true));
    if input.starts_with("-----BEGIN") {
        return pem_certificates(input.as_bytes());
    }
    let text: Vec<u8> = input.bytes().filter(|b| !matches!(b, b'\r' | b'\n')).collect();
    let decoded = LENIENT.decode(text).map_err(|e| anyhow!("illegal base64 data: {e}"))?;
    if decoded.starts_with(b"-----BEGIN") {
        return pem_certificates(&decoded);
    }
    Ok(decoded)
}

fn pem_certificates(mut input: &[u8]) -> Result<Vec<u8>> {
    let mut der = Vec::new();
    while !input.is_empty() {
        let Ok((rest, pem)) = parse_x509_pem(input) else { break };
        if pem.label != "CERTIFICATE" {
            bail!("PEM block type is '{}', expected CERTIFICATE", pem.label);
        }
        der.extend_from_slice(&pem.contents);
        input = rest;
    }
    Ok(der)
}

/// Every certificate of concatenated DER (Go's `x509.ParseCertificates`).
fn parse_all(mut der: &[u8]) -> Result<Vec<X509Certificate<'_>>> {
    let mut certs = Vec::new();
    while !der.is_empty() {
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| anyhow!("x509: malformed certificate: {e}"))?;
        certs.push(cert);
        der = rest;
    }
    Ok(certs)
}

fn certificate_json(cert: &X509Certificate<'_>) -> Result<Value> {
    let basic = cert.basic_constraints()?.map(|b| (b.value.ca, b.value.path_len_constraint));
    // Go: -1 when the extension has no pathLenConstraint, 0 (and not "zero") without it.
    let max_path_len = basic.map_or(0, |(_, len)| len.map_or(-1, i64::from));
    let names = SubjectAltNames::of(cert)?;
    let (known_eku, unknown_eku) = extended_key_usage(cert)?;
    let key_ids = key_identifiers(cert);
    Ok(object([
        ("Raw", Value::from(STANDARD.encode(cert.as_raw()))),
        ("Version", Value::from(u64::from(cert.version().0) + 1)),
        ("SerialNumber", Value::from_numeric_string(&cert.tbs_certificate.serial.to_string())?),
        ("Issuer", name_json(cert.issuer())),
        ("Subject", name_json(cert.subject())),
        ("NotBefore", Value::from(rfc3339(&cert.validity().not_before))),
        ("NotAfter", Value::from(rfc3339(&cert.validity().not_after))),
        ("KeyUsage", Value::from(key_usage(cert)?)),
        ("ExtKeyUsage", known_eku),
        ("UnknownExtKeyUsage", unknown_eku),
        ("BasicConstraintsValid", Value::from(basic.is_some())),
        ("IsCA", Value::from(basic.is_some_and(|(ca, _)| ca))),
        ("MaxPathLen", Value::from(max_path_len)),
        ("MaxPathLenZero", Value::from(basic.is_some() && max_path_len == 0)),
        ("SubjectKeyId", bytes_or_null(key_ids.0)),
        ("AuthorityKeyId", bytes_or_null(key_ids.1)),
        ("DNSNames", list_or_null(names.dns)),
        ("EmailAddresses", list_or_null(names.email)),
        ("IPAddresses", list_or_null(names.ip)),
        ("URIStrings", list_or_null(names.uri)),
        ("SignatureAlgorithm", Value::from(signature_algorithm(cert))),
        ("PublicKeyAlgorithm", Value::from(public_key_algorithm(cert))),
    ]))
}

/// A Go slice: `null` when empty (Go leaves it nil).
fn list_or_null(items: Vec<Value>) -> Value {
    if items.is_empty() {
        Value::Null
    } else {
        Value::from(items)
    }
}

fn bytes_or_null(bytes: Option<&[u8]>) -> Value {
    bytes.map_or(Value::Null, |b| Value::from(STANDARD.encode(b)))
}

/// A Go `pkix.Name`, filled as `FillFromRDNSequence` does: string attributes only, the last
/// `CommonName` and `SerialNumber` win.
fn name_json(name: &X509Name<'_>) -> Value {
    const LISTS: [(&str, &str); 7] = [
        ("2.5.4.6", "Country"),
        ("2.5.4.10", "Organization"),
        ("2.5.4.11", "OrganizationalUnit"),
        ("2.5.4.7", "Locality"),
        ("2.5.4.8", "Province"),
        ("2.5.4.9", "StreetAddress"),
        ("2.5.4.17", "PostalCode"),
    ];
    let mut lists: [Vec<Value>; 7] = Default::default();
    let (mut common_name, mut serial, mut names) = ("", "", Vec::new());
    for attribute in name.iter_attributes() {
        let Ok(value) = attribute.as_str() else { continue };
        let oid = attribute.attr_type().to_id_string();
        names.push(object([("Type", oid_json(attribute.attr_type())), ("Value", Value::from(value))]));
        match oid.as_str() {
            "2.5.4.3" => common_name = value,
            "2.5.4.5" => serial = value,
            oid => {
                if let Some(i) = LISTS.iter().position(|(o, _)| *o == oid) {
                    lists[i].push(Value::from(value));
                }
            }
        }
    }
    let [country, organization, unit, locality, province, street, postal] = lists.map(list_or_null);
    object([
        ("CommonName", Value::from(common_name)),
        ("SerialNumber", Value::from(serial)),
        (LISTS[0].1, country),
        (LISTS[1].1, organization),
        (LISTS[2].1, unit),
        (LISTS[3].1, locality),
        (LISTS[4].1, province),
        (LISTS[5].1, street),
        (LISTS[6].1, postal),
        ("Names", list_or_null(names)),
        ("ExtraNames", Value::Null),
    ])
}

/// An OID as Go's `asn1.ObjectIdentifier` encodes: an array of its arcs.
fn oid_json(oid: &Oid<'_>) -> Value {
    Value::from(oid.iter().map(|arcs| arcs.map(Value::from).collect::<Vec<_>>()).unwrap_or_default())
}

/// A time as Go's `time.Time` encodes it (RFC 3339, fraction only when there is one).
fn rfc3339(time: &ASN1Time) -> String {
    let t = time.to_datetime();
    let mut text = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    if t.nanosecond() != 0 {
        text.push_str(format!(".{:09}", t.nanosecond()).trim_end_matches('0'));
    }
    let (hours, minutes, _) = t.offset().as_hms();
    if (hours, minutes) == (0, 0) {
        text.push('Z');
    } else {
        let sign = if hours < 0 || minutes < 0 { '-' } else { '+' };
        text.push_str(&format!("{sign}{:02}:{:02}", hours.unsigned_abs(), minutes.unsigned_abs()));
    }
    text
}

/// Go's `KeyUsage` bit set: bit i is the i-th bit of the extension (digitalSignature = 1).
fn key_usage(cert: &X509Certificate<'_>) -> Result<u64> {
    let Some(usage) = cert.key_usage()? else { return Ok(0) };
    let usage = usage.value;
    let bits = [
        usage.digital_signature(),
        usage.non_repudiation(),
        usage.key_encipherment(),
        usage.data_encipherment(),
        usage.key_agreement(),
        usage.key_cert_sign(),
        usage.crl_sign(),
        usage.encipher_only(),
        usage.decipher_only(),
    ];
    Ok(bits.iter().enumerate().filter(|(_, set)| **set).map(|(i, _)| 1u64 << i).sum())
}

/// Go's `ExtKeyUsage` (its enum's numbers, in that order rather than the certificate's) and
/// `UnknownExtKeyUsage` (arrays of arcs).
fn extended_key_usage(cert: &X509Certificate<'_>) -> Result<(Value, Value)> {
    /// Go's numbers of the usages `x509-parser` leaves in `other`.
    const OTHER: [(&str, u64); 7] = [
        ("1.3.6.1.5.5.7.3.5", 5),
        ("1.3.6.1.5.5.7.3.6", 6),
        ("1.3.6.1.5.5.7.3.7", 7),
        ("1.3.6.1.4.1.311.10.3.3", 10),
        ("2.16.840.1.113730.4.1", 11),
        ("1.3.6.1.4.1.311.2.1.22", 12),
        ("1.3.6.1.4.1.311.61.1.1", 13),
    ];
    let Some(eku) = cert.extended_key_usage()? else { return Ok((Value::Null, Value::Null)) };
    let eku = eku.value;
    let flags = [
        (eku.any, 0),
        (eku.server_auth, 1),
        (eku.client_auth, 2),
        (eku.code_signing, 3),
        (eku.email_protection, 4),
        (eku.time_stamping, 8),
        (eku.ocsp_signing, 9),
    ];
    let mut known: Vec<u64> = flags.iter().filter(|(set, _)| *set).map(|(_, n)| *n).collect();
    let mut unknown = Vec::new();
    for oid in &eku.other {
        match OTHER.iter().find(|(o, _)| *o == oid.to_id_string()) {
            Some((_, n)) => known.push(*n),
            None => unknown.push(oid_json(oid)),
        }
    }
    known.sort_unstable();
    Ok((list_or_null(known.into_iter().map(Value::from).collect()), list_or_null(unknown)))
}

/// The subject and authority key identifiers.
fn key_identifiers<'a>(cert: &X509Certificate<'a>) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
    let (mut subject, mut authority) = (None, None);
    for extension in cert.extensions() {
        match extension.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => subject = Some(id.0),
            ParsedExtension::AuthorityKeyIdentifier(aki) => authority = aki.key_identifier.as_ref().map(|id| id.0),
            _ => {}
        }
    }
    (subject, authority)
}

/// The subject alternative names Go reads, as strings.
#[derive(Default)]
struct SubjectAltNames {
    dns: Vec<Value>,
    email: Vec<Value>,
    ip: Vec<Value>,
    uri: Vec<Value>,
}

impl SubjectAltNames {
    fn of(cert: &X509Certificate<'_>) -> Result<Self> {
        let mut names = Self::default();
        let Some(san) = cert.subject_alternative_name()? else { return Ok(names) };
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.dns.push(Value::from(*dns)),
                GeneralName::RFC822Name(email) => names.email.push(Value::from(*email)),
                GeneralName::URI(uri) => names.uri.push(Value::from(*uri)),
                GeneralName::IPAddress(ip) => names.ip.push(Value::from(ip_string(ip)?)),
                GeneralName::Invalid(tag, _) => bail!("x509: malformed subject alternative name (tag {tag})"),
                _ => {}
            }
        }
        Ok(names)
    }
}

/// An IP address as Go's `net.IP` writes it (an IPv4-mapped IPv6 address as IPv4).
fn ip_string(ip: &[u8]) -> Result<String> {
    if let Ok(v4) = <[u8; 4]>::try_from(ip) {
        return Ok(Ipv4Addr::from(v4).to_string());
    }
    let Ok(v6) = <[u8; 16]>::try_from(ip) else { bail!("x509: cannot parse IP address of length {}", ip.len()) };
    let v6 = Ipv6Addr::from(v6);
    Ok(v6.to_ipv4_mapped().map_or_else(|| v6.to_string(), |v4| v4.to_string()))
}

/// Go's `SignatureAlgorithm` number (0: unknown to Go).
fn signature_algorithm(cert: &X509Certificate<'_>) -> u64 {
    let algorithm = &cert.signature_algorithm;
    match algorithm.algorithm.to_id_string().as_str() {
        "1.2.840.113549.1.1.2" => 1,
        "1.2.840.113549.1.1.4" => 2,
        "1.2.840.113549.1.1.5" | "1.3.14.3.2.29" => 3,
        "1.2.840.113549.1.1.11" => 4,
        "1.2.840.113549.1.1.12" => 5,
        "1.2.840.113549.1.1.13" => 6,
        "1.2.840.10040.4.3" => 7,
        "2.16.840.1.101.3.4.3.2" => 8,
        "1.2.840.10045.4.1" => 9,
        "1.2.840.10045.4.3.2" => 10,
        "1.2.840.10045.4.3.3" => 11,
        "1.2.840.10045.4.3.4" => 12,
        "1.2.840.113549.1.1.10" => {
            let params = algorithm.parameters.as_ref().and_then(|p| RsaSsaPssParams::try_from(p).ok());
            match params.map(|p| p.hash_algorithm_oid().to_id_string()).as_deref() {
                Some("2.16.840.1.101.3.4.2.1") => 13,
                Some("2.16.840.1.101.3.4.2.2") => 14,
                Some("2.16.840.1.101.3.4.2.3") => 15,
                _ => 0,
            }
        }
        "1.3.101.112" => 16,
        _ => 0,
    }
}

/// Go's `PublicKeyAlgorithm` number (0: unknown to Go).
fn public_key_algorithm(cert: &X509Certificate<'_>) -> u64 {
    match cert.public_key().algorithm.algorithm.to_id_string().as_str() {
        "1.2.840.113549.1.1.1" => 1,
        "1.2.840.10040.4.1" => 2,
        "1.2.840.10045.2.1" => 3,
        "1.3.101.112" => 4,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addresses_read_as_go_writes_them() {
        assert_eq!(ip_string(&[10, 0, 0, 1]).unwrap(), "10.0.0.1");
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1];
        assert_eq!(ip_string(&mapped).unwrap(), "192.0.2.1");
        let v6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(ip_string(&v6).unwrap(), "2001:db8::1");
        assert!(ip_string(&[1, 2, 3]).is_err());
    }

    #[test]
    fn times_are_rfc3339() {
        let time = ASN1Time::from_timestamp(1_700_000_000).unwrap();
        assert_eq!(rfc3339(&time), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn unreadable_input_is_an_error_for_parse_and_false_for_verify() {
        for input in ["not base64!", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "AAAA"] {
            assert!(parse_certificates(&[Value::from(input)]).is_err(), "{input}");
            let verified = parse_and_verify_certificates(&[Value::from(input)]).unwrap();
            assert_eq!(verified, Value::from(vec![Value::from(false), Value::new_array()]));
        }
        assert_eq!(parse_certificates(&[Value::from("")]).unwrap(), Value::new_array());
    }
}
