//! Why a request carries no verified identity. Each reason has a stable code, which policies
//! see as `input.identity_error` and logs record; services map it to their own status (401).

/// Why a bearer token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// No `Authorization: Bearer` header.
    #[error("missing")]
    Missing,
    /// Not three base64url JSON segments.
    #[error("malformed")]
    Malformed,
    /// `alg` is not RS256/ES256 (this includes `none` and every HS*), or not the key's.
    #[error("unsupported_alg")]
    UnsupportedAlgorithm,
    /// The header lists a `crit` extension we do not implement (RFC 7515 §4.1.11: reject).
    #[error("unsupported_crit")]
    UnsupportedCritical,
    /// No `kid`, or a `kid` the key set does not hold.
    #[error("unknown_kid")]
    UnknownKid,
    /// The signature does not verify.
    #[error("bad_signature")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("not_yet_valid")]
    NotYetValid,
    /// The token lives longer than the configured maximum (`exp − iat`, or `exp − now`).
    #[error("lifetime_too_long")]
    LifetimeTooLong,
    /// `iss` is not an accepted issuer.
    #[error("wrong_issuer")]
    WrongIssuer,
    /// `aud` names none of the accepted audiences.
    #[error("wrong_audience")]
    WrongAudience,
    /// `typ` is not the required token type (e.g. a refresh token).
    #[error("wrong_type")]
    WrongType,
    /// A required claim (`exp`, `iss`, `aud`, `sub`) is absent or of the wrong type.
    #[error("missing_claim")]
    MissingClaim,
    /// No key set has been loaded yet.
    #[error("no_keys")]
    NoKeys,
}

impl IdentityError {
    /// The stable code policies and logs see.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnsupportedAlgorithm => "unsupported_alg",
            Self::UnsupportedCritical => "unsupported_crit",
            Self::UnknownKid => "unknown_kid",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::WrongType => "wrong_type",
            Self::MissingClaim => "missing_claim",
            Self::NoKeys => "no_keys",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IdentityError;

    #[test]
    fn codes_are_the_display_form() {
        for e in [IdentityError::Missing, IdentityError::UnsupportedCritical, IdentityError::LifetimeTooLong] {
            assert_eq!(e.code(), e.to_string());
        }
    }
}
