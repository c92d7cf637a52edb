//! Where `--archive` writes: an object store (the `object_store` crate's
//! S3 client, or a local directory) under a prefix, behind a blocking API
//! for the shipper's thread and the command-line tools.
//!
//! - `s3://bucket/prefix`: AWS S3 and every S3-compatible store (MinIO,
//!   Cloudflare R2, GCS's interoperability endpoint, moto in the tests).
//!   Credentials and the endpoint come the usual way, from the environment
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//!   `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, a web identity token
//!   file, the instance or container metadata service) or, with no keys
//!   there, the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`,
//!   else `~/.aws/credentials`, profile `AWS_PROFILE` or `default`): never
//!   argv, and the object store's errors name the URL, not the credentials.
//! - `file:///path`: a mounted volume. object_store writes a temp file and
//!   renames it; this wrapper also fsyncs the file and its directory, so
//!   "confirmed" means on stable storage there too.
//!
//! Each request is retried by object_store (a few times, within
//! `REQUEST_RETRY_WITHIN`); the shipper retries what still fails with
//! its own backoff.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// How long object_store retries one request before it reports a failure.
const REQUEST_RETRY_WITHIN: Duration = Duration::from_secs(10);
/// One request's time limit (a chunk is at most a segment, 64 MiB).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Target {
    store: Arc<dyn ObjectStore>,
    root: Path,
    /// For `file://`: the directory the keys are under (for the fsyncs).
    local_root: Option<PathBuf>,
    rt: Arc<tokio::runtime::Runtime>,
    /// The URL, for messages.
    shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({})", self.shown)
    }
}

fn s3(bucket: &str) -> Result<Arc<dyn ObjectStore>, String> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    use object_store::{BackoffConfig, ClientConfigKey, RetryConfig};
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: REQUEST_RETRY_WITHIN,
    };
    // Timeouts as config keys: `with_client_options` would replace what
    // the environment set (AWS_ALLOW_HTTP among them).
    let client = |key| AmazonS3ConfigKey::Client(key);
    let mut builder = AmazonS3Builder::from_env();
    // No keys in the environment: the shared credentials file, as the AWS
    // tools read it (object_store reads the environment and the metadata
    // services, not this file).
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        if let Some(keys) = shared_credentials() {
            builder = builder
                .with_access_key_id(keys.access_key_id)
                .with_secret_access_key(keys.secret_access_key);
            if let Some(token) = keys.session_token {
                builder = builder.with_token(token);
            }
        }
    }
    let store = builder
        .with_bucket_name(bucket)
        .with_retry(retry)
        .with_config(
            client(ClientConfigKey::Timeout),
            format!("{}s", REQUEST_TIMEOUT.as_secs()),
        )
        .with_config(client(ClientConfigKey::ConnectTimeout), "5s")
        .build()
        .map_err(|e| format!("s3://{bucket}: {e}"))?;
    Ok(Arc::new(store))
}

/// Keys from an AWS shared credentials file.
#[derive(Debug, PartialEq, Eq)]
struct Keys {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

/// The keys of profile `AWS_PROFILE` (else `default`) in
/// `AWS_SHARED_CREDENTIALS_FILE` (else `~/.aws/credentials`), if any.
fn shared_credentials() -> Option<Keys> {
    let path = match std::env::var_os("AWS_SHARED_CREDENTIALS_FILE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".aws/credentials"),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    profile_keys(&text, &profile)
}

/// A profile's keys in the INI text of a credentials file.
fn profile_keys(text: &str, profile: &str) -> Option<Keys> {
    let mut section = String::new();
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if section != profile {
            continue;
        }
        let value = value.trim().to_string();
        match key.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => id = Some(value),
            "aws_secret_access_key" => secret = Some(value),
            "aws_session_token" => token = Some(value),
            _ => {}
        }
    }
    Some(Keys {
        access_key_id: id?,
        secret_access_key: secret?,
        session_token: token,
    })
}

impl Target {
    /// The store a URL names: `s3://bucket[/prefix]` or `file:///path`.
    pub fn open(url: &str) -> Result<Target, String> {
        // rustls is built with two crypto providers here (ring for the
        // webhooks' ureq, aws-lc-rs for object_store), so it cannot pick
        // one by itself and reqwest's client fails to build ("builder
        // error"): the process's default is set once (Err: already set).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("the archive's runtime: {e}"))?;
        let (store, root, local_root): (Arc<dyn ObjectStore>, String, Option<PathBuf>) =
            if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(format!("{url}: no bucket (s3://bucket/prefix)"));
                }
                // The builder reads the environment; it must run inside the
                // runtime for its HTTP client.
                let _guard = rt.enter();
                (s3(bucket)?, prefix.trim_matches('/').to_string(), None)
            } else if let Some(path) = url.strip_prefix("file://") {
                if !path.starts_with('/') {
                    return Err(format!("{url}: a file URL is absolute (file:///path)"));
                }
                std::fs::create_dir_all(path).map_err(|e| format!("{url}: {e}"))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(path)
                    .map_err(|e| format!("{url}: {e}"))?;
                (Arc::new(store), String::new(), Some(PathBuf::from(path)))
            } else {
                return Err(format!(
                    "{url}: an archive is s3://bucket/prefix or file:///path"
                ));
            };
        let root = Path::parse(&root).map_err(|e| format!("{url}: {e}"))?;
        Ok(Target {
            store,
            root,
            local_root,
            rt: Arc::new(rt),
            shown: url.trim_end_matches('/').to_string(),
        })
    }

    /// The same store under `root/<sub>` (a node's part of the bucket).
    pub fn child(&self, sub: &str) -> Target {
        let mut t = self.clone();
        for part in sub.split('/').filter(|p| !p.is_empty()) {
            t.root = t.root.clone().join(part);
            if let Some(dir) = &mut t.local_root {
                dir.push(part);
            }
        }
        t.shown = format!("{}/{}", self.shown, sub.trim_matches('/'));
        t
    }

    /// The URL this target writes under.
    pub fn url(&self) -> &str {
        &self.shown
    }

    fn path(&self, key: &str) -> Path {
        let mut p = self.root.clone();
        for part in key.split('/').filter(|p| !p.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// Writes `key` (whole, replacing it); Ok once the store confirmed it.
    /// (`Bytes`: a retry puts the same buffer, not a copy of it.)
    pub fn put(&self, key: &str, bytes: impl Into<bytes::Bytes>) -> Result<(), String> {
        let path = self.path(key);
        self.rt
            .block_on(self.store.put(&path, PutPayload::from(bytes.into())))
            .map_err(|e| format!("writing {}/{key}: {e}", self.shown))?;
        if let Some(dir) = &self.local_root {
            let file = dir.join(key);
            let sync = |p: &std::path::Path| std::fs::File::open(p).and_then(|f| f.sync_all());
            sync(&file)
                .and_then(|_| sync(file.parent().unwrap_or(dir)))
                .map_err(|e| format!("syncing {}: {e}", file.display()))?;
        }
        Ok(())
    }

    /// Reads `key`; None when it is not there.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let path = self.path(key);
        let got = self.rt.block_on(async {
            match self.store.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.map(|b| b.map(|b| b.to_vec()))
            .map_err(|e| format!("reading {}/{key}: {e}", self.shown))
    }

    /// The keys under `under` (relative to this target's root), with their
    /// sizes, in key order.
    pub fn list(&self, under: &str) -> Result<Vec<(String, u64)>, String> {
        use futures_util::TryStreamExt as _;
        let prefix = self.path(under);
        let metas: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(self.store.list(Some(&prefix)).try_collect())
            .map_err(|e| format!("listing {}/{under}: {e}", self.shown))?;
        let root_parts = self.root.parts().count();
        let mut out: Vec<(String, u64)> = metas
            .into_iter()
            .map(|m| {
                let key: Vec<String> = m
                    .location
                    .parts()
                    .skip(root_parts)
                    .map(|p| p.as_ref().to_string())
                    .collect();
                (key.join("/"), m.size)
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// The folders right under this target's root (nodes, `parquet`).
    pub fn folders(&self) -> Result<Vec<String>, String> {
        let prefix = (self.root.parts().count() > 0).then_some(&self.root);
        let listed = (self.rt)
            .block_on(self.store.list_with_delimiter(prefix))
            .map_err(|e| format!("listing {}: {e}", self.shown))?;
        let mut out: Vec<String> = (listed.common_prefixes.iter())
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Removes `key` (nothing if it is not there).
    pub fn delete(&self, key: &str) -> Result<(), String> {
        let path = self.path(key);
        match self.rt.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(format!("removing {}/{key}: {e}", self.shown)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profiles_keys_are_read_from_a_credentials_file() {
        let text = "# keys\n[default]\naws_access_key_id = AKIA1\naws_secret_access_key=s1\n\n\
                    [ci]\nAWS_ACCESS_KEY_ID = AKIA2\naws_secret_access_key = s2\n\
                    aws_session_token = t2\n[half]\naws_access_key_id = AKIA3\n";
        assert_eq!(
            profile_keys(text, "default"),
            Some(Keys {
                access_key_id: "AKIA1".into(),
                secret_access_key: "s1".into(),
                session_token: None,
            })
        );
        assert_eq!(
            profile_keys(text, "ci"),
            Some(Keys {
                access_key_id: "AKIA2".into(),
                secret_access_key: "s2".into(),
                session_token: Some("t2".into()),
            })
        );
        assert_eq!(profile_keys(text, "half"), None, "a secret is needed too");
        assert_eq!(profile_keys(text, "absent"), None);
    }
}
