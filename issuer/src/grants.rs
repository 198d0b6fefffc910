//! The token issuer: password and refresh-token grants, revocation. Access tokens are
//! short-lived RS256/ES256 JWTs from the active signing key; refresh tokens are opaque
//! 256-bit random strings, stored only as a SHA-256 hash, rotated on every use. Reusing a
//! rotated refresh token revokes its whole family (reuse detection).

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use qiria_runtime::audit::{self, AuditEvent};
use qiria_runtime::clock::now_i64;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::errors::IssuerError;
use crate::hashing::HashingPool;
use crate::signing::SigningKeys;
use crate::store::{fold_username, Rotation, Store, User};
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
    /// Absolute lifetime of a refresh family (one login), in seconds.
    pub family_lifetime: i64,
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

/// The issuer.
pub struct Issuer {
    store: Store,
    keys: Arc<ArcSwapOption<SigningKeys>>,
    settings: IssuerSettings,
    throttle: Throttle,
    hashing: Arc<HashingPool>,
    /// Verified against when the user does not exist, so both paths cost the same.
    decoy_hash: String,
}

impl Issuer {
    /// An issuer over a store, a live slot of signing keys and a password hashing pool.
    pub fn new(
        store: Store,
        keys: Arc<ArcSwapOption<SigningKeys>>,
        settings: IssuerSettings,
        throttle: &ThrottleSettings,
        hashing: Arc<HashingPool>,
    ) -> Result<Self, IssuerError> {
        let decoy_hash = crate::hashing::hash_password("decoy password, never used")
            .ok_or_else(|| IssuerError::Internal("argon2 refused the decoy password".into()))?;
        Ok(Self { store, keys, settings, throttle: Throttle::new(throttle), hashing, decoy_hash })
    }

    /// Counts a token request from `client` against its rate limit.
    pub fn admit(&self, client: IpAddr) -> Result<(), IssuerError> {
        self.limited(self.throttle.request(client), client)
    }

    /// Counts a revocation request from `client` against its rate limit.
    pub fn admit_revoke(&self, client: IpAddr) -> Result<(), IssuerError> {
        self.limited(self.throttle.revoke(client), client)
    }

    fn limited(&self, verdict: Verdict, client: IpAddr) -> Result<(), IssuerError> {
        match verdict {
            Verdict::Proceed => Ok(()),
            _ => {
                audit::record(AuditEvent::RateLimited { client_ip: &client.to_string() });
                Err(IssuerError::TooManyRequests)
            }
        }
    }

    /// The password hashing pool (the admin API hashes new users' passwords on it too).
    pub fn hashing(&self) -> &HashingPool {
        &self.hashing
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
        client: IpAddr,
    ) -> Result<TokenResponse, IssuerError> {
        let client_ip = client.to_string();
        // A name no user can have is answered like a wrong password, without the work.
        let Ok(username) = fold_username(username) else {
            audit::record(AuditEvent::LoginFailed { username: "(invalid)", client_ip: &client_ip, locked: false });
            return Err(IssuerError::InvalidGrant);
        };
        let attempt = match self.throttle.login(&username) {
            Ok(attempt) => attempt,
            Err(Verdict::Locked) => {
                // A locked account is answered like a wrong password.
                audit::record(AuditEvent::LoginFailed { username: &username, client_ip: &client_ip, locked: true });
                return Err(IssuerError::InvalidGrant);
            }
            Err(_) => {
                audit::record(AuditEvent::RateLimited { client_ip: &client_ip });
                return Err(IssuerError::TooManyRequests);
            }
        };
        let user = self.store.user_by_name(&username).await?;
        let hash = user.as_ref().map(|u| u.password_hash.clone()).unwrap_or_else(|| self.decoy_hash.clone());
        // Busy: the attempt is dropped uncounted (no password was checked).
        let matches = self.hashing.verify(hash, password).await?;
        match user {
            Some(user) if matches && !user.disabled => {
                self.throttle.outcome(attempt, true);
                let family = random_token();
                let now = now_i64();
                let refresh_token = random_token();
                let response = self.mint(&user, &refresh_token)?;
                self.store
                    .start_family(
                        &family,
                        &user.id,
                        now.saturating_add(self.settings.family_lifetime),
                        &hash_token(&refresh_token),
                        now.saturating_add(self.settings.refresh_ttl),
                    )
                    .await?;
                audit::record(AuditEvent::LoginSucceeded { user: &user.id, client_ip: &client_ip });
                Ok(response)
            }
            _ => {
                let locked_now = self.throttle.outcome(attempt, false);
                audit::record(AuditEvent::LoginFailed { username: &username, client_ip: &client_ip, locked: false });
                if locked_now {
                    audit::record(AuditEvent::AccountLocked { username: &username, client_ip: &client_ip });
                }
                Err(IssuerError::InvalidGrant)
            }
        }
    }

    /// `grant_type=refresh_token`: rotates the token, detects reuse.
    pub async fn refresh_grant(&self, refresh_token: &str, client: IpAddr) -> Result<TokenResponse, IssuerError> {
        let client_ip = client.to_string();
        let next = random_token();
        match self.store.rotate(&hash_token(refresh_token), &hash_token(&next), self.settings.refresh_ttl).await? {
            Rotation::Refused => Err(IssuerError::InvalidGrant),
            Rotation::Reused { user_id, family_id, revoked } => {
                audit::record(AuditEvent::RefreshReuse {
                    user: &user_id,
                    family: &family_id,
                    revoked,
                    client_ip: &client_ip,
                });
                Err(IssuerError::InvalidGrant)
            }
            Rotation::Rotated { user_id, family_id } => match self.store.user_by_id(&user_id).await? {
                Some(user) if !user.disabled => {
                    let response = self.mint(&user, &next)?;
                    audit::record(AuditEvent::TokenRefreshed { user: &user.id, client_ip: &client_ip });
                    Ok(response)
                }
                _ => {
                    self.store.revoke_family(&family_id).await?;
                    Err(IssuerError::InvalidGrant)
                }
            },
        }
    }

    /// RFC 7009 revocation: a known refresh token revokes its family; anything else is
    /// silently accepted (the endpoint must not reveal which tokens exist).
    pub async fn revoke(&self, token: &str, client: IpAddr) -> Result<(), IssuerError> {
        if let Some((user, revoked)) = self.store.revoke_family_of(&hash_token(token)).await? {
            audit::record(AuditEvent::TokenRevoked { user: &user, revoked, client_ip: &client.to_string() });
        }
        Ok(())
    }

    /// An access token for `user`, answered with `refresh_token` (stored by the caller).
    fn mint(&self, user: &User, refresh_token: &str) -> Result<TokenResponse, IssuerError> {
        let keys = self.keys.load();
        let key = keys.as_ref().and_then(|k| k.active()).ok_or(IssuerError::NoSigningKey)?;
        let now = now_i64();
        let claims = serde_json::json!({
            "iss": self.settings.issuer, "aud": self.settings.audience, "sub": user.id,
            "iat": now, "nbf": now, "exp": now + self.settings.access_ttl,
            "jti": uuid::Uuid::new_v4().to_string(), "roles": user.roles, "typ": "access",
        });
        let mut header = jsonwebtoken::Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        let access_token =
            jsonwebtoken::encode(&header, &claims, &key.encoding).map_err(|e| IssuerError::Internal(e.to_string()))?;
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: self.settings.access_ttl,
            refresh_token: refresh_token.to_string(),
        })
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
