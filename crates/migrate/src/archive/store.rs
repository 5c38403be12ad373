//! Where an archive lives: a folder, or a prefix in an Azure Blob Storage container (through
//! `object_store`). Both keep the same guarantee, each its own way: a file (a chunk, the
//! manifest, a restore checkpoint) is either absent, its old whole content or its new whole
//! content, whenever the process is killed.
//!
//! - **Folder**: a file is written under a temporary name (`.NAME.tmp`) and fsynced, renamed
//!   into place, and its directory fsynced.
//! - **Blob**: a file is one object written by a single Put Blob request, which the service
//!   commits whole or not at all (an interrupted upload leaves nothing readable); replacing an
//!   object (the manifest) is a Put Blob over it, just as atomic. There are no temporary
//!   objects. Removing is a Delete Blob.
//!
//! Names inside an archive are relative, `/`-separated (`manifest.json`,
//! `Accounts/r000-c000001.jsonl.zst`).
//!
//! # Targets
//! - a path: a folder (created when missing);
//! - `az://CONTAINER/PREFIX` (or `azure://`): the account, endpoint and credentials come from
//!   the environment, as `object_store` reads it (`AZURE_STORAGE_ACCOUNT_NAME`,
//!   `AZURE_STORAGE_ACCOUNT_KEY` or `AZURE_STORAGE_SAS_KEY`, `AZURE_STORAGE_ENDPOINT`,
//!   `AZURE_STORAGE_USE_EMULATOR` with `AZURITE_BLOB_STORAGE_URL`, or any other credential it
//!   supports: client secret, workload or managed identity, Azure CLI);
//! - `https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX` (virtual-host style: the
//!   account is the host's first label);
//! - `http(s)://HOST[:PORT]/ACCOUNT/CONTAINER/PREFIX` (path style, when the host is an IP
//!   address, `localhost` or has no dot: Azurite's `http://127.0.0.1:10000/devstoreaccount1`).
//!
//! A URL may carry a SAS token as its query (`...?sv=...&sig=...`): it is used as the
//! credential and never shown (a target is shown without its query). The container must
//! exist: `object_store` has no call that creates one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt as _;
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};

use super::{ArchiveError, blocking};

/// An archive's place.
#[derive(Debug, Clone)]
pub enum Store {
    Folder(PathBuf),
    Blob(BlobStore),
}

/// A prefix in an Azure Blob Storage container. Its `Debug` shows the target only: the
/// client's own would print the credential.
#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    /// The archive's prefix in the container (empty: the container's root).
    prefix: Vec<String>,
    /// The target as given, without a SAS token: for messages and reports.
    shown: String,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("target", &self.shown)
            .finish_non_exhaustive()
    }
}

/// A file written but not yet in place ([`Store::stage`], then [`Store::publish`]).
#[derive(Debug)]
pub enum Staged {
    /// A temporary file, fsynced, and the name it is renamed to.
    File { tmp: PathBuf, path: PathBuf },
    /// The object's content, uploaded by `publish` in one request.
    Object { name: String, bytes: Vec<u8> },
}

impl Store {
    /// The store `target` names: a URL (`az://`, `azure://`, `http://`, `https://`) is Azure
    /// Blob Storage, anything else a folder path.
    pub fn open(target: &str) -> Result<Self, ArchiveError> {
        Self::open_with(target, &[])
    }

    /// [`Self::open`], with `object_store` Azure settings (e.g. `azure_storage_account_key`)
    /// applied over the environment's and under the URL's.
    pub fn open_with(target: &str, settings: &[(&str, &str)]) -> Result<Self, ArchiveError> {
        match target.split_once("://") {
            Some(("az" | "azure" | "http" | "https", _)) => {
                Ok(Self::Blob(BlobStore::open(target, settings)?))
            }
            Some((scheme, _)) if scheme.chars().all(|c| c.is_ascii_alphanumeric()) => {
                Err(ArchiveError::Usage(format!(
                    "{scheme}:// is not a supported archive target: give a folder path, \
                     az://CONTAINER/PREFIX or https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX"
                )))
            }
            _ => Ok(Self::Folder(PathBuf::from(target))),
        }
    }

    /// The target for messages and reports (never a credential).
    pub fn shown(&self) -> String {
        match self {
            Self::Folder(dir) => dir.display().to_string(),
            Self::Blob(blob) => blob.shown.clone(),
        }
    }

    /// `name` in the archive, for messages.
    pub fn shown_name(&self, name: &str) -> String {
        match self {
            Self::Folder(dir) => dir.join(name).display().to_string(),
            Self::Blob(blob) => format!("{}/{name}", blob.shown.trim_end_matches('/')),
        }
    }

    /// Makes the target ready to be written (a folder is created; a container must exist).
    pub async fn prepare(&self) -> Result<(), ArchiveError> {
        match self {
            Self::Folder(dir) => {
                let dir = dir.clone();
                blocking(move || {
                    std::fs::create_dir_all(&dir).map_err(|e| ArchiveError::io(&dir, &e))
                })
                .await?
            }
            Self::Blob(_) => Ok(()),
        }
    }

    /// Whether the target holds nothing at all.
    pub async fn is_empty(&self) -> Result<bool, ArchiveError> {
        match self {
            Self::Folder(dir) => {
                let dir = dir.clone();
                blocking(move || match std::fs::read_dir(&dir) {
                    Ok(mut entries) => Ok(entries.next().is_none()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
                    Err(e) => Err(ArchiveError::io(&dir, &e)),
                })
                .await?
            }
            Self::Blob(blob) => Ok(blob.list().await?.is_empty()),
        }
    }

    /// The content of `name`; `None` when there is no such file.
    pub async fn read(&self, name: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
        match self {
            Self::Folder(dir) => {
                let path = dir.join(name);
                blocking(move || match std::fs::read(&path) {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(ArchiveError::io(&path, &e)),
                })
                .await?
            }
            Self::Blob(blob) => match blob.store.get(&blob.path(name)?).await {
                Ok(result) => Ok(Some(
                    result
                        .bytes()
                        .await
                        .map_err(|e| blob.error(name, &e))?
                        .to_vec(),
                )),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(blob.error(name, &e)),
            },
        }
    }

    /// Writes `name` whole, replacing what it held, atomically (see the module docs).
    pub async fn write(&self, name: &str, bytes: Vec<u8>) -> Result<(), ArchiveError> {
        let staged = self.stage(name, bytes).await?;
        self.publish(staged).await
    }

    /// The first half of a write: a folder writes and fsyncs the temporary file (so the
    /// slow part happens outside the archive's lock); an object is kept in memory.
    pub async fn stage(&self, name: &str, bytes: Vec<u8>) -> Result<Staged, ArchiveError> {
        match self {
            Self::Folder(dir) => {
                let path = dir.join(name);
                let tmp = temp_path(&path);
                blocking(move || -> Result<Staged, ArchiveError> {
                    if let Some(parent) = tmp.parent() {
                        std::fs::create_dir_all(parent)
                            .map_err(|e| ArchiveError::io(parent, &e))?;
                    }
                    write_synced(&tmp, &bytes)?;
                    Ok(Staged::File { tmp, path })
                })
                .await?
            }
            Self::Blob(_) => Ok(Staged::Object {
                name: name.to_owned(),
                bytes,
            }),
        }
    }

    /// The second half: the file appears under its name, whole (a rename and a directory
    /// fsync; one Put Blob).
    pub async fn publish(&self, staged: Staged) -> Result<(), ArchiveError> {
        match (self, staged) {
            (Self::Folder(_), Staged::File { tmp, path }) => {
                blocking(move || rename_synced(&tmp, &path)).await?
            }
            (Self::Blob(blob), Staged::Object { name, bytes }) => blob
                .store
                .put(&blob.path(&name)?, PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|e| blob.error(&name, &e)),
            _ => Err(ArchiveError::Failed(
                "a file staged for another kind of target".into(),
            )),
        }
    }

    /// Every file of the archive by its relative name, sorted: in a folder, its files and
    /// those of its subfolders (the archive's layout has no deeper level); in a container,
    /// every object under the prefix.
    pub async fn list(&self) -> Result<Vec<String>, ArchiveError> {
        match self {
            Self::Folder(dir) => {
                let dir = dir.clone();
                blocking(move || list_folder(&dir)).await?
            }
            Self::Blob(blob) => blob.list().await,
        }
    }

    /// Removes the files `names` (a folder fsyncs each directory it removed from).
    pub async fn remove(&self, names: &[String]) -> Result<(), ArchiveError> {
        if names.is_empty() {
            return Ok(());
        }
        match self {
            Self::Folder(dir) => {
                let dir = dir.clone();
                let names = names.to_vec();
                blocking(move || -> Result<(), ArchiveError> {
                    let mut parents = std::collections::BTreeSet::new();
                    for name in &names {
                        let path = dir.join(name);
                        match std::fs::remove_file(&path) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => return Err(ArchiveError::io(&path, &e)),
                        }
                        parents.insert(path.parent().map(Path::to_path_buf).unwrap_or_default());
                    }
                    parents.iter().try_for_each(|p| sync_dir(p))
                })
                .await?
            }
            Self::Blob(blob) => {
                for name in names {
                    match blob.store.delete(&blob.path(name)?).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(blob.error(name, &e)),
                    }
                }
                Ok(())
            }
        }
    }
}

impl BlobStore {
    fn open(target: &str, settings: &[(&str, &str)]) -> Result<Self, ArchiveError> {
        let bad = |why: &str| {
            ArchiveError::Usage(format!(
                "{} is not an Azure Blob Storage target: {why}",
                shown_target(target)
            ))
        };
        let url = url::Url::parse(target).map_err(|e| bad(&e.to_string()))?;
        let shown = shown_target(target);
        let segments: Vec<String> = url
            .path_segments()
            .map(|s| s.filter(|p| !p.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        let host = url.host_str().unwrap_or_default().to_owned();
        let mut builder = MicrosoftAzureBuilder::from_env();
        for (key, value) in settings {
            let key: AzureConfigKey = key
                .parse()
                .map_err(|_| bad(&format!("{key} is not an Azure storage setting")))?;
            builder = builder.with_config(key, *value);
        }
        let rest: &[String] = match url.scheme() {
            "az" | "azure" => {
                if host.is_empty() {
                    return Err(bad("no container (az://CONTAINER/PREFIX)"));
                }
                builder = builder.with_container_name(host);
                &segments
            }
            scheme => {
                let path_style = host == "localhost"
                    || !host.contains('.')
                    || host.parse::<std::net::IpAddr>().is_ok();
                let origin = match url.port() {
                    Some(port) => format!("{scheme}://{host}:{port}"),
                    None => format!("{scheme}://{host}"),
                };
                let (account, endpoint, rest) = if path_style {
                    let Some((account, rest)) = segments.split_first() else {
                        return Err(bad(
                            "no account (http://HOST:PORT/ACCOUNT/CONTAINER/PREFIX)",
                        ));
                    };
                    (account.clone(), format!("{origin}/{account}"), rest)
                } else {
                    let account = host.split('.').next().unwrap_or_default().to_owned();
                    (account, origin, segments.as_slice())
                };
                let Some((container, rest)) = rest.split_first() else {
                    return Err(bad("no container after the account"));
                };
                builder = builder
                    .with_account(account)
                    .with_endpoint(endpoint)
                    .with_container_name(container.clone())
                    .with_allow_http(scheme == "http");
                if let Some(sas) = url.query().filter(|q| !q.is_empty()) {
                    builder = builder.with_config(AzureConfigKey::SasKey, sas);
                }
                rest
            }
        };
        let prefix = rest.to_vec();
        // object_store names objects by segments; ".." or "." would escape or mean nothing
        if prefix.iter().any(|p| p == "." || p == "..") {
            return Err(bad("the prefix holds . or .."));
        }
        let store = builder.build().map_err(|e| {
            bad(&format!(
                "cannot configure the client: {e} (for az://, AZURE_STORAGE_ACCOUNT_NAME names \
                     the account; docs/archive.md lists the settings)"
            ))
        })?;
        Ok(Self {
            store: Arc::new(store),
            prefix,
            shown,
        })
    }

    /// The object's path of archive file `name`.
    fn path(&self, name: &str) -> Result<ObjectPath, ArchiveError> {
        let parts: Vec<&str> = self
            .prefix
            .iter()
            .map(String::as_str)
            .chain(name.split('/'))
            .collect();
        ObjectPath::parse(parts.join("/")).map_err(|e| ArchiveError::Invalid {
            path: format!("{}/{name}", self.shown),
            message: e.to_string(),
        })
    }

    async fn list(&self) -> Result<Vec<String>, ArchiveError> {
        let prefix = if self.prefix.is_empty() {
            None
        } else {
            Some(
                ObjectPath::parse(self.prefix.join("/")).map_err(|e| ArchiveError::Invalid {
                    path: self.shown.clone(),
                    message: e.to_string(),
                })?,
            )
        };
        let objects: Vec<object_store::ObjectMeta> = self
            .store
            .list(prefix.as_ref())
            .try_collect()
            .await
            .map_err(|e| ArchiveError::Io {
                path: self.shown.clone(),
                message: format!("cannot list: {e}"),
            })?;
        let skip = self.prefix.len();
        let mut names: Vec<String> = objects
            .into_iter()
            .map(|o| {
                o.location
                    .parts()
                    .skip(skip)
                    .map(|p| p.as_ref().to_owned())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect();
        names.sort();
        Ok(names)
    }

    fn error(&self, name: &str, e: &object_store::Error) -> ArchiveError {
        ArchiveError::Io {
            path: format!("{}/{name}", self.shown.trim_end_matches('/')),
            message: e.to_string(),
        }
    }
}

/// `target` without its query (a SAS token) or user information.
fn shown_target(target: &str) -> String {
    match url::Url::parse(target) {
        Ok(mut url) => {
            url.set_query(None);
            let _ = url.set_password(None);
            let _ = url.set_username("");
            url.to_string()
        }
        Err(_) => target.split('?').next().unwrap_or_default().to_owned(),
    }
}

fn list_folder(dir: &Path) -> Result<Vec<String>, ArchiveError> {
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(ArchiveError::io(dir, &e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| ArchiveError::io(dir, &e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() {
            let sub = entry.path();
            for inner in std::fs::read_dir(&sub).map_err(|e| ArchiveError::io(&sub, &e))? {
                let inner = inner.map_err(|e| ArchiveError::io(&sub, &e))?;
                if !inner.path().is_dir() {
                    names.push(format!("{name}/{}", inner.file_name().to_string_lossy()));
                }
            }
        } else {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The temporary name a file is written under before it is renamed to `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp"))
}

/// Whether `name` (relative) is a temporary file of a folder write.
pub fn is_temporary(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.starts_with('.') && base.ends_with(".tmp")
}

/// Creates (or truncates) `path` with `bytes` and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path).map_err(|e| ArchiveError::io(path, &e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| ArchiveError::io(path, &e))
}

/// Renames `from` to `to` and fsyncs the directory, so the rename survives a crash.
fn rename_synced(from: &Path, to: &Path) -> Result<(), ArchiveError> {
    std::fs::rename(from, to).map_err(|e| ArchiveError::io(to, &e))?;
    sync_dir(to.parent().unwrap_or(Path::new(".")))
}

/// fsyncs a directory (its entries: created, renamed and removed files).
fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ArchiveError::io(dir, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_folders_or_blob_urls_and_a_sas_token_is_never_shown() {
        assert!(matches!(Store::open("/backup/x"), Ok(Store::Folder(_))));
        assert!(matches!(Store::open("relative/dir"), Ok(Store::Folder(_))));
        assert!(matches!(
            Store::open("s3://bucket/x"),
            Err(ArchiveError::Usage(_))
        ));
        let Ok(Store::Blob(blob)) =
            Store::open("https://acct.blob.core.windows.net/backups/2026/12?sv=1&sig=SECRET")
        else {
            panic!("a blob URL");
        };
        assert_eq!(blob.prefix, ["2026", "12"]);
        assert!(!blob.shown.contains("SECRET"), "{}", blob.shown);
        assert!(!format!("{blob:?}").contains("SECRET"), "{blob:?}");
        assert_eq!(
            blob.path("Accounts/r000-c000001.jsonl.zst")
                .expect("path")
                .as_ref(),
            "2026/12/Accounts/r000-c000001.jsonl.zst"
        );
        let Ok(Store::Blob(azurite)) = Store::open("http://127.0.0.1:10000/devstoreaccount1/c/p")
        else {
            panic!("a path-style URL");
        };
        assert_eq!(azurite.prefix, ["p"]);
        assert!(matches!(
            Store::open("http://127.0.0.1:10000/devstoreaccount1"),
            Err(ArchiveError::Usage(_))
        ));
        // az:// takes the account from the environment or the settings, the prefix from the path
        let Ok(Store::Blob(az)) = Store::open_with(
            "az://backups/cosmos/2026",
            &[
                ("azure_storage_account_name", "acct"),
                ("azure_storage_account_key", "a2V5"),
            ],
        ) else {
            panic!("an az:// URL with an account");
        };
        assert_eq!(az.prefix, ["cosmos", "2026"]);
        assert_eq!(az.shown, "az://backups/cosmos/2026");
        // the key (base64 of "key") appears in no debug output either
        assert!(!format!("{az:?}").contains("107, 101, 121"), "{az:?}");
        assert!(matches!(
            Store::open_with("az://backups/x", &[("no_such_setting", "1")]),
            Err(ArchiveError::Usage(_))
        ));
    }
}
