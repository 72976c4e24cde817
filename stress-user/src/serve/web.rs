//! TLS and basic auth for the HTTP endpoint, configured the way every Prometheus exporter is: a
//! `web-config.yml` in the exporter-toolkit format (`tls_server_config`, `basic_auth_users` with
//! bcrypt hashes). TLS is rustls with the ring provider; the file is read at start and on
//! SIGHUP, and a bad file never replaces a good one.

use std::{
    collections::{hash_map::RandomState, BTreeMap, HashSet},
    hash::BuildHasher as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use base64::Engine as _;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer},
        server::WebPkiClientVerifier,
        RootCertStore, ServerConfig,
    },
    TlsAcceptor,
};

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("cannot read web config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("web config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The file as written (exporter-toolkit's keys; those oomlab does not implement are refused
/// by name instead of being ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebFile {
    #[serde(default)]
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    client_auth_type: Option<ClientAuth>,
    #[serde(default)]
    min_version: Option<TlsVersion>,
    #[serde(default)]
    max_version: Option<TlsVersion>,
}

/// exporter-toolkit's names (Go's `tls.ClientAuthType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum ClientAuth {
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
enum TlsVersion {
    TLS10,
    TLS11,
    TLS12,
    TLS13,
}

/// What the running daemon applies to every new connection.
pub struct Web {
    /// None: plain HTTP.
    pub tls: Option<TlsAcceptor>,
    /// None: no credentials asked.
    pub auth: Option<Auth>,
}

impl Web {
    /// No web config: plain HTTP, no auth (and loopback unless `--allow-remote`).
    pub fn plain() -> Web {
        Web {
            tls: None,
            auth: None,
        }
    }

    pub fn load(path: &Path) -> Result<Web, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.into(),
            source,
        })?;
        Web::parse(&text, path)
    }

    /// `path` names the file in messages and anchors the relative paths in it.
    fn parse(text: &str, path: &Path) -> Result<Web, WebConfigError> {
        let invalid = |message: String| WebConfigError::Invalid {
            path: path.into(),
            message,
        };
        let file: WebFile = if text.trim().is_empty() {
            WebFile::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| invalid(e.to_string()))?
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let auth = if file.basic_auth_users.is_empty() {
            None
        } else {
            for (user, hash) in &file.basic_auth_users {
                if user.contains(':') {
                    return Err(invalid(format!(
                        "basic_auth_users: user name {user:?} contains ':'"
                    )));
                }
                hash.parse::<bcrypt::HashParts>().map_err(|e| {
                    invalid(format!(
                        "basic_auth_users: the hash of {user:?} is not bcrypt: {e}"
                    ))
                })?;
            }
            Some(Auth::new(file.basic_auth_users))
        };
        // After the users: a placeholder hash is named even where the certificates are not
        // there yet.
        let tls = file
            .tls_server_config
            .map(|t| tls_acceptor(&t, dir).map_err(invalid))
            .transpose()?;
        Ok(Web { tls, auth })
    }
}

fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

fn tls_acceptor(t: &TlsFile, dir: &Path) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let min = t.min_version.unwrap_or(TlsVersion::TLS12);
    let max = t.max_version.unwrap_or(TlsVersion::TLS13);
    if min < TlsVersion::TLS12 {
        return Err(format!(
            "tls_server_config: min_version {min:?}: oomlab (rustls) speaks TLS12 and TLS13 only"
        ));
    }
    if max < min {
        return Err(format!(
            "tls_server_config: max_version {max:?} is below min_version {min:?}"
        ));
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::TLS12, &rustls::version::TLS12),
        (TlsVersion::TLS13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (min..=max).contains(v))
    .map(|(_, p)| p)
    .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config: {e}"))?;
    // exporter-toolkit: a client CA without a client_auth_type means verify every client.
    let auth = match (t.client_auth_type, &t.client_ca_file) {
        (Some(a), _) => a,
        (None, Some(_)) => ClientAuth::RequireAndVerifyClientCert,
        (None, None) => ClientAuth::NoClientCert,
    };
    let builder = match auth {
        ClientAuth::NoClientCert => builder.with_no_client_auth(),
        ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => {
            return Err(format!(
                "tls_server_config: client_auth_type {auth:?} (a client certificate nobody verifies) is not supported; use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file"
            ))
        }
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert => {
            let ca = t.client_ca_file.as_deref().ok_or_else(|| {
                format!("tls_server_config: client_auth_type {auth:?} needs client_ca_file")
            })?;
            let ca = resolve(dir, ca);
            let mut roots = RootCertStore::empty();
            for cert in certs(&ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("client_ca_file {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
            let verifier = if auth == ClientAuth::VerifyClientCertIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("client_ca_file {}: {e}", ca.display()))?,
            )
        }
    };
    let cert_file = resolve(dir, &t.cert_file);
    let key_file = resolve(dir, &t.key_file);
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .map_err(|e| format!("key_file {}: {e}", key_file.display()))?;
    let mut cfg = builder
        .with_single_cert(certs(&cert_file)?, key)
        .map_err(|e| {
            format!(
                "cert_file {} and key_file {}: {e}",
                cert_file.display(),
                key_file.display()
            )
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// Remembered good credentials at most; the cache starts over beyond.
const CACHE_MAX: usize = 64;

/// `basic_auth_users`: bcrypt is slow on purpose (tens of ms per check), so a check runs on the
/// blocking pool, one at a time, and credentials that passed are remembered (as a keyed hash of
/// the header, not the password): a scrape every 15 s costs one bcrypt per daemon start.
pub struct Auth {
    users: BTreeMap<String, String>,
    passed: Mutex<HashSet<u64>>,
    hasher: RandomState,
    one_at_a_time: Arc<Semaphore>,
}

impl Auth {
    fn new(users: BTreeMap<String, String>) -> Auth {
        Auth {
            users,
            passed: Mutex::new(HashSet::new()),
            hasher: RandomState::new(),
            one_at_a_time: Arc::new(Semaphore::new(1)),
        }
    }

    /// Whether the `Authorization` header value names a user with the right password.
    pub async fn check(&self, header: Option<&[u8]>) -> bool {
        let Some((user, password)) = header.and_then(basic_credentials) else {
            return false;
        };
        let Some(hash) = self.users.get(&user).cloned() else {
            return false;
        };
        let key = self.hasher.hash_one((&user, &password));
        let lock = |m: &Mutex<HashSet<u64>>| {
            m.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&key)
        };
        if lock(&self.passed) {
            return true;
        }
        let Ok(permit) = self.one_at_a_time.clone().acquire_owned().await else {
            return false;
        };
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            bcrypt::verify(password, &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if ok {
            let mut passed = self
                .passed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if passed.len() >= CACHE_MAX {
                passed.clear();
            }
            passed.insert(key);
        }
        ok
    }
}

/// `Basic base64(user:password)` → (user, password).
fn basic_credentials(header: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, b64) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Web, WebConfigError> {
        Web::parse(text, Path::new("/etc/oomlab/web.yml"))
    }

    #[test]
    fn base64_of_basic_credentials() {
        // "prometheus:s3cret:x" — a password may hold ':'.
        assert_eq!(
            basic_credentials(b"Basic cHJvbWV0aGV1czpzM2NyZXQ6eA=="),
            Some(("prometheus".into(), "s3cret:x".into()))
        );
        assert_eq!(
            basic_credentials(b"basic YTpi"),
            Some(("a".into(), "b".into()))
        );
        for bad in [
            &b"Bearer YTpi"[..],
            b"Basic YTpi=",
            b"Basic Y=pi",
            b"Basic !!!!",
            b"Basic YWI",
        ] {
            assert_eq!(
                basic_credentials(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[tokio::test]
    async fn bcrypt_users_are_checked_and_remembered() {
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        let web = parse(&format!("basic_auth_users:\n  prometheus: {hash}\n")).expect("parses");
        assert!(web.tls.is_none());
        let auth = web.auth.expect("auth configured");
        // "prometheus:s3cret", "prometheus:wrong", "nobody:s3cret"
        assert!(auth.check(Some(b"Basic cHJvbWV0aGV1czpzM2NyZXQ=")).await);
        assert!(auth.check(Some(b"Basic cHJvbWV0aGV1czpzM2NyZXQ=")).await);
        assert_eq!(auth.passed.lock().expect("lock").len(), 1);
        assert!(!auth.check(Some(b"Basic cHJvbWV0aGV1czp3cm9uZw==")).await);
        assert!(!auth.check(Some(b"Basic bm9ib2R5OnMzY3JldA==")).await);
        assert!(!auth.check(None).await);
    }

    #[test]
    fn bad_files_are_refused_by_name() {
        for (text, needle) in [
            ("basic_auth_users:\n  u: notahash\n", "\"u\""),
            ("tls_server_config:\n  cert_file: a\n", "key_file"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS11\n", "TLS12"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n", "not supported"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n", "client_ca_file"),
            ("tls_server_config:\n  cert_file: /nonexistent/c.pem\n  key_file: /nonexistent/k.pem\n", "/nonexistent/k.pem"),
            ("http_server_config:\n  http2: false\n", "http_server_config"),
        ] {
            let err = parse(text).err().unwrap_or_else(|| panic!("{text} must be refused"));
            let err = err.to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(err.contains("/etc/oomlab/web.yml"), "{err}");
        }
        let empty = parse("").expect("an empty file is no TLS, no auth");
        assert!(empty.tls.is_none() && empty.auth.is_none());
    }
}
