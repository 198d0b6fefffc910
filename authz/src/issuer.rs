//! The token issuer: password and refresh-token grants, revocation. Access tokens are
//! short-lived RS256/ES256 JWTs from the active signing key; refresh tokens are opaque
//! 256-bit random strings, stored only as a SHA-256 hash, rotated on every use. Reusing a
//! rotated refresh token revokes its whole family (reuse detection).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::audit::{self, AuditEvent};
use crate::signing::SigningKeys;
use crate::store::{now, Store, StoreError, User};
use crate::throttle::{Throttle, ThrottleSettings, Verdict};

/// What the issuer stamps into tokens and how long they live.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// `iss`.
    pub issuer: String,
    /// `aud`.
    pub audience: String,
    /// Access token lifetime in seconds.
    pub access_ttl: i64,
    /// Refresh token lifetime in seconds.
    pub refresh_ttl: i64,
}

/// A successful grant (RFC 6749 §5.1).
#[derive(Debug, serde::Serialize)]
pub struct TokenResponse {
    /// The JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds.
    pub expires_in: i64,
    /// The next refresh token of the family.
    pub refresh_token: String,
}

/// A refused grant, in RFC 6749 §5.2 terms.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// A parameter is missing, repeated or malformed; names it.
    #[error("invalid_request: {0}")]
    InvalidRequest(String),
    /// Wrong credentials, unknown/expired/revoked/reused refresh token, disabled user. One
    /// error for all of them, so a caller cannot tell which.
    #[error("invalid_grant")]
    InvalidGrant,
    /// A `grant_type` we do not offer.
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    /// Too many requests from this client or for this user.
    #[error("slow_down")]
    TooManyRequests,
    /// No signing key loaded.
    #[error("no signing key")]
    NoSigningKey,
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Anything else on our side.
    #[error("{0}")]
    Internal(String),
}

/// The issuer.
pub struct Issuer {
    store: Store,
    keys: Arc<ArcSwapOption<SigningKeys>>,
    settings: IssuerSettings,
    throttle: Throttle,
    /// Verified against when the user does not exist, so both paths cost the same.
    decoy_hash: String,
}

impl Issuer {
    /// An issuer over a store and a live slot of signing keys.
    pub fn new(
        store: Store,
        keys: Arc<ArcSwapOption<SigningKeys>>,
        settings: IssuerSettings,
        throttle: &ThrottleSettings,
    ) -> Result<Self, IssuerError> {
        let decoy_hash = hash_password("decoy password, never used")?;
        Ok(Self { store, keys, settings, throttle: Throttle::new(throttle), decoy_hash })
    }

    /// Counts a token request from `client_ip` against its rate limit.
    pub fn admit(&self, client_ip: &str) -> Result<(), IssuerError> {
        match self.throttle.request(client_ip) {
            Verdict::Proceed => Ok(()),
            _ => {
                audit::record(AuditEvent::RateLimited { client_ip });
                Err(IssuerError::TooManyRequests)
            }
        }
    }

    /// The JWKS of every signing key.
    pub fn jwks(&self) -> serde_json::Value {
        self.keys.load().as_ref().map(|k| k.jwks()).unwrap_or_else(|| serde_json::json!({ "keys": [] }))
    }

    /// The user store (for the admin API).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The issuer name.
    pub fn settings(&self) -> &IssuerSettings {
        &self.settings
    }

    /// `grant_type=password`.
    pub async fn password_grant(
        &self,
        username: &str,
        password: &str,
        client_ip: &str,
    ) -> Result<TokenResponse, IssuerError> {
        let verdict = self.throttle.login(username);
        if verdict == Verdict::TooMany {
            audit::record(AuditEvent::RateLimited { client_ip });
            return Err(IssuerError::TooManyRequests);
        }
        // A locked account is answered like a wrong password, after the same work.
        let user = if verdict == Verdict::Locked { None } else { self.store.user_by_name(username).await? };
        let hash = user.as_ref().map(|u| u.password_hash.clone()).unwrap_or_else(|| self.decoy_hash.clone());
        let password = password.to_string();
        let matches = tokio::task::spawn_blocking(move || verify_password(&hash, &password))
            .await
            .map_err(|e| IssuerError::Internal(e.to_string()))?;
        match user {
            Some(user) if matches && !user.disabled => {
                self.throttle.outcome(username, true);
                let family = random_token();
                let response = self.mint(&user, &family).await?;
                audit::record(AuditEvent::LoginSucceeded { user: &user.id, client_ip });
                Ok(response)
            }
            _ => {
                let locked = verdict == Verdict::Locked;
                if !locked {
                    self.throttle.outcome(username, false);
                }
                audit::record(AuditEvent::LoginFailed { username, client_ip, locked });
                Err(IssuerError::InvalidGrant)
            }
        }
    }

    /// `grant_type=refresh_token`: rotates the token, detects reuse.
    pub async fn refresh_grant(&self, refresh_token: &str, client_ip: &str) -> Result<TokenResponse, IssuerError> {
        let hash = hash_token(refresh_token);
        let Some(stored) = self.store.refresh(&hash).await? else {
            return Err(IssuerError::InvalidGrant);
        };
        if stored.revoked_at.is_some() {
            return Err(IssuerError::InvalidGrant);
        }
        if stored.rotated_at.is_some() || !self.store.mark_rotated(&hash).await? {
            // Someone presents a token that was already exchanged: either it was stolen or
            // the legitimate client was; the family can no longer be trusted.
            let revoked = self.store.revoke_family(&stored.family_id).await?;
            audit::record(AuditEvent::RefreshReuse {
                user: &stored.user_id,
                family: &stored.family_id,
                revoked,
                client_ip,
            });
            return Err(IssuerError::InvalidGrant);
        }
        if stored.expires_at <= now() {
            return Err(IssuerError::InvalidGrant);
        }
        let user = self.store.user_by_id(&stored.user_id).await?;
        match user {
            Some(user) if !user.disabled => {
                let response = self.mint(&user, &stored.family_id).await?;
                audit::record(AuditEvent::TokenRefreshed { user: &user.id, client_ip });
                Ok(response)
            }
            _ => {
                self.store.revoke_family(&stored.family_id).await?;
                Err(IssuerError::InvalidGrant)
            }
        }
    }

    /// RFC 7009 revocation: a known refresh token revokes its family; anything else is
    /// silently accepted (the endpoint must not reveal which tokens exist).
    pub async fn revoke(&self, token: &str, client_ip: &str) -> Result<(), IssuerError> {
        if let Some(stored) = self.store.refresh(&hash_token(token)).await? {
            let revoked = self.store.revoke_family(&stored.family_id).await?;
            audit::record(AuditEvent::TokenRevoked { user: &stored.user_id, revoked, client_ip });
        }
        Ok(())
    }

    async fn mint(&self, user: &User, family: &str) -> Result<TokenResponse, IssuerError> {
        let keys = self.keys.load();
        let key = keys.as_ref().and_then(|k| k.active()).ok_or(IssuerError::NoSigningKey)?;
        let now = now();
        let claims = serde_json::json!({
            "iss": self.settings.issuer, "aud": self.settings.audience, "sub": user.id,
            "iat": now, "nbf": now, "exp": now + self.settings.access_ttl,
            "jti": uuid::Uuid::new_v4().to_string(), "roles": user.roles, "typ": "access",
        });
        let mut header = jsonwebtoken::Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        let access_token =
            jsonwebtoken::encode(&header, &claims, &key.encoding).map_err(|e| IssuerError::Internal(e.to_string()))?;
        let refresh_token = random_token();
        self.store
            .insert_refresh(&hash_token(&refresh_token), family, &user.id, now + self.settings.refresh_ttl)
            .await?;
        Ok(TokenResponse { access_token, token_type: "Bearer", expires_in: self.settings.access_ttl, refresh_token })
    }
}

/// 256 random bits, base64url.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Refresh tokens are high-entropy, so a plain SHA-256 is a safe at-rest form.
fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// argon2id with the crate's defaults (OWASP's recommended parameters), as a PHC string.
pub fn hash_password(password: &str) -> Result<String, IssuerError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| IssuerError::Internal(e.to_string()))
}

fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}
