//! PEM files -> a rustls `ServerConfig`: TLS 1.2 and 1.3 only, ALPN `h2`
//! and `http/1.1`. Errors name the file. Read at start-up, by `check` and
//! by every reload, so a renewed certificate serves new connections.

use crate::config::TlsFiles;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// ALPN protocols offered, preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// `files` with relative paths taken from `base` (the config file's directory).
pub fn resolve(files: &TlsFiles, base: &Path) -> TlsFiles {
    let at = |p: &Path| -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    TlsFiles {
        cert: at(&files.cert),
        key: at(&files.key),
    }
}

/// The directory relative paths in the config file at `config_path` start from.
pub fn base_dir(config_path: &Path) -> &Path {
    match config_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Which of the two files an error is about (the pair: both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Cert,
    Key,
}

/// A loaded certificate and key: what new TLS connections use, and what
/// the log and metrics say of the leaf certificate.
#[derive(Clone)]
pub struct Loaded {
    pub server: Arc<ServerConfig>,
    pub leaf: Leaf,
}

/// The facts of a leaf certificate (RFC 5280 §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// The subject's distinguished name, e.g. "CN=lb.example".
    pub subject: String,
    /// `notAfter`, in Unix seconds.
    pub not_after: i64,
    /// A hash of the certificate's DER bytes: a renewal changes it.
    pub digest: u64,
}

impl Leaf {
    /// `notAfter` as RFC 3339 UTC, e.g. "2027-03-01T00:00:00Z".
    pub fn expires(&self) -> String {
        let t = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(u64::try_from(self.not_after).unwrap_or(0));
        humantime::format_rfc3339_seconds(t).to_string()
    }
}

/// Reads the certificate chain and key (paths already resolved) and builds
/// the server config.
pub fn load(files: &TlsFiles) -> Result<Loaded, String> {
    load_which(files).map_err(|(_, e)| e)
}

/// As `load`, also saying which file an error is about.
pub fn load_which(files: &TlsFiles) -> Result<Loaded, (Which, String)> {
    let certs = read_certs(&files.cert).map_err(|e| (Which::Cert, e))?;
    let leaf = leaf(&certs[0]).map_err(|e| {
        let e = format!(
            "{}: the first certificate cannot be read: {e}",
            files.cert.display()
        );
        (Which::Cert, e)
    })?;
    let key = read_key(&files.key).map_err(|e| (Which::Key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| (Which::Cert, format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            let both = format!(
                "{} and {}: not a usable certificate and key: {e}",
                files.cert.display(),
                files.key.display()
            );
            (Which::Key, both)
        })?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Loaded {
        server: Arc::new(config),
        leaf,
    })
}

fn leaf(der: &CertificateDer<'_>) -> Result<Leaf, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    Ok(Leaf {
        subject: cert.subject().to_string(),
        not_after: cert.validity().not_after.timestamp(),
        digest: xxhash_rust::xxh3::xxh3_64(der),
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path, "certificate")?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (\"-----BEGIN CERTIFICATE-----\") in the file",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(path, "key")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        format!(
            "{}: no usable PEM private key (PKCS#8, RSA or EC): {e}",
            path.display()
        )
    })
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    crate::files::read_bounded(path, crate::files::MAX_TLS_BYTES)
        .map_err(|e| format!("TLS {what} file: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_start_at_the_config_directory() {
        let files = TlsFiles {
            cert: "tls/c.pem".into(),
            key: "/etc/k.pem".into(),
        };
        let r = resolve(&files, base_dir(Path::new("/srv/lb/config.toml")));
        assert_eq!(r.cert, PathBuf::from("/srv/lb/tls/c.pem"));
        assert_eq!(r.key, PathBuf::from("/etc/k.pem"));
        assert_eq!(base_dir(Path::new("config.toml")), Path::new("."));
    }

    #[test]
    fn errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("stickylb-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("cert.pem");
        std::fs::write(&cert, "not a certificate\n").unwrap();
        let files = TlsFiles {
            cert: cert.clone(),
            key: dir.join("missing.pem"),
        };
        let Err(e) = load(&files) else {
            panic!("a file that is not a certificate must fail")
        };
        assert!(e.contains(&cert.display().to_string()), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
