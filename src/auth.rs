//! Client authentication: signed tokens (JWT, HS256) that carry an expiry and
//! the channels a client may read.
//!
//! The secret lives in a file (`--auth-secret-file`), never on the command
//! line, where `ps` would show it to every user. The file may hold several
//! secrets, one per line: the first signs (`ringcast token`), any verifies.
//! Rotation is therefore: put the new secret first, reload (SIGHUP; nobody is
//! disconnected), mint with it, and drop the old line once its tokens have
//! expired (and reload again).
//!
//! Under systemd the secret arrives as a credential (`LoadCredential=
//! auth-secret:/etc/ringcast/secret`): systemd copies the root-only file into
//! a directory only the service's (dynamic) user can read, and names it in
//! `$CREDENTIALS_DIRECTORY`. With no `--auth-secret-file`, that credential
//! turns authentication on.

use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not valid before this (seconds since the Unix epoch), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Channels the holder may subscribe to: exact names, `prefix*`, or `*`.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Who the token was issued to (for logs; not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

/// A verified token: what it allows, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub channels: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub expires: u64,
}

impl Grant {
    /// Whether the token lets its holder read `channel`.
    pub fn allows(&self, channel: &str) -> bool {
        self.channels
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => channel.starts_with(prefix),
                None => pattern == channel,
            })
    }

    /// Seconds until expiry at `now` (Unix seconds; 0 when already past).
    pub fn seconds_left_at(&self, now: u64) -> u64 {
        self.expires.saturating_sub(now)
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Expired,
    /// `nbf` is still in the future.
    NotYetValid,
    Invalid(String),
}

impl Refusal {
    pub fn reason(&self) -> String {
        match self {
            Refusal::Expired => "token expired".to_owned(),
            Refusal::NotYetValid => "token not valid yet (nbf is in the future)".to_owned(),
            Refusal::Invalid(why) => format!("invalid token: {why}"),
        }
    }
}

/// Verifies tokens against the secrets of the secret file.
pub struct Authenticator {
    /// Where the secrets come from, to read them again on reload.
    path: Option<PathBuf>,
    /// Read at every verification (handshakes and auth messages, never per
    /// delivery), written only by a reload.
    keys: RwLock<Vec<DecodingKey>>,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    /// Never prints the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Authenticator({} secret(s))", self.key_count())
    }
}

/// The systemd credential that carries the secret.
pub const CREDENTIAL: &str = "auth-secret";

/// The secret file to use: the one configured, else the `auth-secret`
/// credential when systemd passed one.
pub fn secret_source(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = configured {
        return Some(path.to_owned());
    }
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let path = Path::new(&dir).join(CREDENTIAL);
    path.exists().then_some(path)
}

/// Accepted clock skew between the minting host and this one.
const LEEWAY_SECONDS: u64 = 5;

impl Authenticator {
    pub fn from_file(path: &Path) -> Result<Authenticator, String> {
        let secrets = read_secrets(path)?;
        let mut auth = Authenticator::new(&secrets);
        auth.path = Some(path.to_owned());
        Ok(auth)
    }

    pub fn new(secrets: &[Vec<u8>]) -> Authenticator {
        // Time claims are checked by `verify_at` against the time it is
        // given (the shards pass their own clock), not by the library
        // against the system clock.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp"]);
        Authenticator {
            path: None,
            keys: RwLock::new(decoding_keys(secrets)),
            validation,
        }
    }

    /// Reads the secret file again and verifies with its secrets from now
    /// on; connections already authenticated keep their grant. On error the
    /// current secrets stay. Returns how many secrets the file holds.
    pub fn reload(&self) -> Result<usize, String> {
        let path = self
            .path
            .as_deref()
            .ok_or("no secret file to reload from")?;
        let secrets = read_secrets(path)?;
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = decoding_keys(&secrets);
        Ok(secrets.len())
    }

    pub fn key_count(&self) -> usize {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Verifies `token` at the current system time.
    pub fn verify(&self, token: &str) -> Result<Grant, Refusal> {
        self.verify_at(token, unix_now())
    }

    /// Verifies `token` at `now` (Unix seconds): signature, `exp` and `nbf`
    /// (each with [`LEEWAY_SECONDS`] of clock skew allowed).
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Grant, Refusal> {
        let mut last = Refusal::Invalid("no secret configured".into());
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        for key in keys.iter() {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => {
                    if data.claims.exp.saturating_add(LEEWAY_SECONDS) < now {
                        return Err(Refusal::Expired);
                    }
                    if data
                        .claims
                        .nbf
                        .is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECONDS))
                    {
                        return Err(Refusal::NotYetValid);
                    }
                    return Ok(Grant {
                        channels: data.claims.channels,
                        expires: data.claims.exp,
                    });
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => return Err(Refusal::Expired),
                        ErrorKind::InvalidSignature => Refusal::Invalid("bad signature".into()),
                        ErrorKind::InvalidAlgorithm => Refusal::Invalid("not HS256".into()),
                        ErrorKind::MissingRequiredClaim(c) => {
                            Refusal::Invalid(format!("missing claim '{c}'"))
                        }
                        _ => Refusal::Invalid("malformed".into()),
                    }
                }
            }
        }
        Err(last)
    }
}

fn decoding_keys(secrets: &[Vec<u8>]) -> Vec<DecodingKey> {
    secrets
        .iter()
        .map(|s| DecodingKey::from_secret(s))
        .collect()
}

/// Signs a token with the first secret of `path`.
pub fn mint(
    path: &Path,
    channels: &[String],
    ttl: Duration,
    sub: Option<String>,
) -> Result<String, String> {
    let secrets = read_secrets(path)?;
    mint_with(&secrets[0], channels, ttl, sub)
}

pub fn mint_with(
    secret: &[u8],
    channels: &[String],
    ttl: Duration,
    sub: Option<String>,
) -> Result<String, String> {
    let claims = Claims {
        exp: unix_now() + ttl.as_secs(),
        nbf: None,
        channels: channels.to_vec(),
        sub,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| format!("cannot sign the token: {e}"))
}

/// Reads the secrets (one per non-empty line) and checks the file is not
/// readable by other users.
fn read_secrets(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    use std::os::unix::fs::PermissionsExt;
    let unreadable = |e: std::io::Error| {
        let mut why = format!("cannot read the secret file {}: {e}", path.display());
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            why.push_str(&format!(
                ". The server runs as uid {}; under systemd (DynamicUser=) pass the file as a \
                 credential instead: LoadCredential={CREDENTIAL}:{} in the unit and no \
                 auth-secret-file (see the README's Security section)",
                rustix::process::getuid().as_raw(),
                path.display()
            ));
        }
        why
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(format!(
            "the secret file {} is readable by every user; chmod 600 it (or 640 for a group)",
            path.display()
        ));
    }
    let text = std::fs::read(path).map_err(unreadable)?;
    let secrets: Vec<Vec<u8>> = text
        .split(|&b| b == b'\n')
        .map(|line| line.trim_ascii().to_vec())
        .filter(|line| !line.is_empty())
        .collect();
    if secrets.is_empty() {
        return Err(format!("the secret file {} is empty", path.display()));
    }
    if let Some(short) = secrets.iter().find(|s| s.len() < 32) {
        return Err(format!(
            "a secret in {} is {} bytes; use at least 32 (e.g. `openssl rand -base64 48`)",
            path.display(),
            short.len()
        ));
    }
    Ok(secrets)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &[u8] = b"0123456789abcdef0123456789abcdef-old";
    const NEW: &[u8] = b"0123456789abcdef0123456789abcdef-new";

    fn token(secret: &[u8], channels: &[&str], ttl_secs: i64) -> String {
        let claims = Claims {
            exp: (unix_now() as i64 + ttl_secs) as u64,
            nbf: None,
            channels: channels.iter().map(|c| c.to_string()).collect(),
            sub: None,
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn verifies_and_matches_channels() {
        let auth = Authenticator::new(&[NEW.to_vec()]);
        let grant = auth.verify(&token(NEW, &["prices", "news.*"], 60)).unwrap();
        assert!(grant.allows("prices"));
        assert!(grant.allows("news.sport"));
        assert!(!grant.allows("prices2"));
        assert!(!grant.allows("news"));
        assert!(grant.seconds_left_at(unix_now()) > 50);
        let all = auth.verify(&token(NEW, &["*"], 60)).unwrap();
        assert!(all.allows("anything"));
    }

    #[test]
    fn refusals() {
        let auth = Authenticator::new(&[NEW.to_vec()]);
        assert_eq!(auth.verify(&token(NEW, &["a"], -60)), Err(Refusal::Expired));
        assert!(matches!(
            auth.verify(&token(OLD, &["a"], 60)),
            Err(Refusal::Invalid(_))
        ));
        assert!(matches!(
            auth.verify("not.a.token"),
            Err(Refusal::Invalid(_))
        ));
        assert!(matches!(auth.verify(""), Err(Refusal::Invalid(_))));
        // Within the leeway an expired token still passes.
        assert!(auth.verify(&token(NEW, &["a"], -2)).is_ok());
        // Time is what the caller says it is.
        let t = token(NEW, &["a"], 60);
        assert_eq!(auth.verify_at(&t, unix_now() + 120), Err(Refusal::Expired));
    }

    #[test]
    fn not_before_is_honoured_with_the_leeway() {
        let auth = Authenticator::new(&[NEW.to_vec()]);
        let now = unix_now();
        let claims = Claims {
            exp: now + 600,
            nbf: Some(now + 60),
            channels: vec!["a".into()],
            sub: None,
        };
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(NEW),
        )
        .unwrap();
        assert_eq!(auth.verify_at(&t, now), Err(Refusal::NotYetValid));
        assert!(auth.verify_at(&t, now + 56).is_ok(), "within the leeway");
        assert!(auth.verify_at(&t, now + 61).is_ok());
    }

    #[test]
    fn rotation_accepts_old_and_new() {
        let auth = Authenticator::new(&[NEW.to_vec(), OLD.to_vec()]);
        assert!(auth.verify(&token(OLD, &["a"], 60)).is_ok());
        assert!(auth.verify(&token(NEW, &["a"], 60)).is_ok());
        let minted = mint_with(
            NEW,
            &["a".into()],
            Duration::from_secs(60),
            Some("me".into()),
        )
        .unwrap();
        assert!(auth.verify(&minted).unwrap().allows("a"));
    }

    #[test]
    fn secret_file_rules() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, b"short\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_secrets(&path).unwrap_err().contains("at least 32"));
        std::fs::write(&path, [NEW, b"\n\n", OLD, b"\n"].concat()).unwrap();
        assert_eq!(
            read_secrets(&path).unwrap(),
            vec![NEW.to_vec(), OLD.to_vec()]
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            read_secrets(&path)
                .unwrap_err()
                .contains("readable by every user")
        );
    }
}
