//! The artifact store behind MLflow's artifact proxy: files under `DATA_DIR/artifacts`,
//! addressed by relative paths that the client sends. Every path is checked before it touches
//! the disk: no `..`, no absolute paths, nothing that decodes once more into a traversal, no
//! NUL, no symbolic link on the way; the root itself cannot be deleted. An MLmodel file may
//! name its ONNX data only by a relative path inside its own folder.

use std::path::{Component, Path, PathBuf};

use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// MLflow's own words; `why` is for the plane's log and tests.
    #[error("Invalid artifact path: '{path}'")]
    InvalidPath { path: String, why: &'static str },
    #[error("the artifact root cannot be deleted; delete a run's or an experiment's artifacts instead")]
    RootNotDeletable,
    #[error("Artifact '{0}' does not exist")]
    NotFound(String),
    #[error("{path}: {why}")]
    BadModelFile { path: String, why: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// One entry of a listed folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactEntry {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
}

#[derive(Clone, Debug)]
pub struct ArtifactStore {
    root: PathBuf,
}

/// Undoes one layer of percent-encoding; `None` when it is not valid UTF-8 afterwards.
fn percent_decoded(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        if bytes[idx] == b'%'
            && let Some(hex) = text.get(idx + 1..idx + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            idx += 3;
            continue;
        }
        out.push(bytes[idx]);
        idx += 1;
    }
    String::from_utf8(out).ok()
}

impl ArtifactStore {
    pub fn new(root: PathBuf) -> Self {
        ArtifactStore { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file or folder a relative artifact path names, refused if it could leave the root.
    pub fn resolve(&self, relative: &str) -> Result<PathBuf, ArtifactError> {
        let invalid = |why| ArtifactError::InvalidPath { path: relative.to_string(), why };
        if relative.contains('\0') {
            return Err(invalid("NUL byte"));
        }
        if relative.starts_with('/') || relative.starts_with('\\') {
            return Err(invalid("absolute path"));
        }
        let mut path = self.root.clone();
        for component in Path::new(relative).components() {
            match component {
                Component::Normal(part) => {
                    let part = part.to_str().ok_or_else(|| invalid("not UTF-8"))?;
                    // A client that encoded twice: `%2E%2E` arrives here as itself.
                    let decoded = percent_decoded(part).ok_or_else(|| invalid("not UTF-8 once decoded"))?;
                    if decoded == ".." || decoded == "." || decoded.contains(['/', '\\', '\0']) {
                        return Err(invalid("percent-encoded traversal"));
                    }
                    path.push(part);
                    // A link inside the store could point anywhere on the host.
                    if std::fs::symlink_metadata(&path).is_ok_and(|metadata| metadata.file_type().is_symlink()) {
                        return Err(invalid("symbolic link"));
                    }
                }
                Component::CurDir => {}
                Component::ParentDir => return Err(invalid("`..`")),
                Component::RootDir | Component::Prefix(_) => return Err(invalid("absolute path")),
            }
        }
        Ok(path)
    }

    /// Writes a file atomically (temporary name, then rename), making its folders.
    pub async fn put(&self, relative: &str, bytes: &[u8]) -> Result<(), ArtifactError> {
        let path = self.resolve(relative)?;
        let io = |source| ArtifactError::Io { what: format!("storing the artifact {relative}"), source };
        if path == self.root {
            return Err(ArtifactError::InvalidPath { path: relative.to_string(), why: "names the root, not a file" });
        }
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io)?;
        }
        let temporary = path.with_extension(format!("upload-{:08x}", fastrand::u32(..)));
        let mut file = tokio::fs::File::create(&temporary).await.map_err(io)?;
        file.write_all(bytes).await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        drop(file);
        tokio::fs::rename(&temporary, &path).await.map_err(io)?;
        Ok(())
    }

    /// Moves an upload into place as the file `relative` names (atomic: a rename).
    pub async fn put_upload(&self, relative: &str, upload: crate::uploads::Upload) -> Result<(), ArtifactError> {
        let path = self.resolve(relative)?;
        let io = |source| ArtifactError::Io { what: format!("storing the artifact {relative}"), source };
        if path == self.root {
            return Err(ArtifactError::InvalidPath { path: relative.to_string(), why: "names the root, not a file" });
        }
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io)?;
        }
        upload.persist(&path).await.map_err(io)
    }

    pub async fn get(&self, relative: &str) -> Result<Vec<u8>, ArtifactError> {
        let path = self.resolve(relative)?;
        tokio::fs::read(&path).await.map_err(|_| ArtifactError::NotFound(relative.to_string()))
    }

    /// Deletes a file or a whole folder; never the root.
    pub async fn delete(&self, relative: &str) -> Result<(), ArtifactError> {
        let path = self.resolve(relative)?;
        if path == self.root {
            return Err(ArtifactError::RootNotDeletable);
        }
        let removed = if path.is_dir() { tokio::fs::remove_dir_all(&path).await } else { tokio::fs::remove_file(&path).await };
        removed.map_err(|_| ArtifactError::NotFound(relative.to_string()))
    }

    /// The entries of a folder, by name (empty for a file or a missing path, as MLflow does).
    pub async fn list(&self, relative: &str) -> Result<Vec<ArtifactEntry>, ArtifactError> {
        let folder = self.resolve(relative)?;
        let mut entries = Vec::new();
        if let Ok(mut listing) = tokio::fs::read_dir(&folder).await {
            while let Ok(Some(entry)) = listing.next_entry().await {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.contains(".upload-") {
                    continue;
                }
                let Ok(metadata) = entry.metadata().await else { continue };
                entries.push(ArtifactEntry { name, is_dir: metadata.is_dir(), size: if metadata.is_dir() { 0 } else { metadata.len() } });
            }
        }
        entries.sort_by(|left, right| left.name.cmp(&right.name));
        Ok(entries)
    }

    /// The ONNX file of a model folder (or the file itself): the MLmodel's onnx flavour `data`,
    /// else the first `.onnx` by name. `None` when there is none; an MLmodel whose `data`
    /// leaves the folder is an error.
    pub async fn model_onnx(&self, folder: &Path) -> Result<Option<Vec<u8>>, ArtifactError> {
        let Ok(relative_folder) = folder.strip_prefix(&self.root) else {
            return Err(ArtifactError::BadModelFile { path: folder.display().to_string(), why: "outside the artifact store".into() });
        };
        if folder.extension().is_some_and(|extension| extension == "onnx") {
            return Ok(tokio::fs::read(folder).await.ok());
        }
        if let Ok(mlmodel) = tokio::fs::read_to_string(folder.join("MLmodel")).await
            && let Some(data) = onnx_data_path(&mlmodel)
        {
            let relative = model_relative_path(&data).map_err(|why| ArtifactError::BadModelFile {
                path: relative_folder.join("MLmodel").display().to_string(),
                why: format!("its onnx `data: {data}` {why}"),
            })?;
            let path = folder.join(&relative);
            if std::fs::symlink_metadata(&path).is_ok_and(|metadata| metadata.file_type().is_symlink()) {
                let path = relative_folder.join(relative).display().to_string();
                return Err(ArtifactError::BadModelFile { path, why: "is a symbolic link".into() });
            }
            if let Ok(bytes) = tokio::fs::read(&path).await {
                return Ok(Some(bytes));
            }
        }
        let Ok(mut entries) = tokio::fs::read_dir(folder).await else { return Ok(None) };
        let mut candidates = Vec::new();
        while let Ok(Some(entry)) = entries.next_entry().await {
            let is_file = entry.file_type().await.is_ok_and(|file_type| file_type.is_file());
            if is_file && entry.path().extension().is_some_and(|extension| extension == "onnx") {
                candidates.push(entry.path());
            }
        }
        candidates.sort();
        match candidates.first() {
            Some(path) => Ok(tokio::fs::read(path).await.ok()),
            None => Ok(None),
        }
    }
}

/// The `data:` of the `onnx:` flavour in an MLmodel file.
fn onnx_data_path(mlmodel: &str) -> Option<String> {
    mlmodel
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("onnx:"))
        .find_map(|line| line.trim().strip_prefix("data:").map(|value| value.trim().trim_matches(['\'', '"']).to_string()))
}

/// A path an MLmodel names: relative, plain names only.
fn model_relative_path(data: &str) -> Result<PathBuf, &'static str> {
    if data.contains('\0') {
        return Err("holds a NUL byte");
    }
    let path = Path::new(data);
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("leaves the model folder (`..`)"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path; it must be relative to the model folder"),
        }
    }
    if relative.as_os_str().is_empty() {
        return Err("names no file");
    }
    Ok(relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ArtifactStore) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("artifacts");
        std::fs::create_dir_all(&root).unwrap();
        (dir, ArtifactStore::new(root))
    }

    #[track_caller]
    fn check(store: &ArtifactStore, relative: &str, expected: Result<&str, &str>) {
        match (store.resolve(relative), expected) {
            (Ok(path), Ok(suffix)) => assert_eq!(path, store.root().join(suffix), "{relative}"),
            (Err(ArtifactError::InvalidPath { why, .. }), Err(expected_why)) => assert_eq!(why, expected_why, "{relative}"),
            (got, expected) => panic!("{relative}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn paths_stay_inside_the_root() {
        let (_dir, store) = store();
        check(&store, "1/abc/artifacts/model/MLmodel", Ok("1/abc/artifacts/model/MLmodel"));
        check(&store, "1/./abc", Ok("1/abc"));
        check(&store, "", Ok(""));
        check(&store, ".", Ok(""));
        check(&store, "1/../../etc/passwd", Err("`..`"));
        check(&store, "..", Err("`..`"));
        check(&store, "/etc/passwd", Err("absolute path"));
        check(&store, "\\etc", Err("absolute path"));
        check(&store, "1/%2E%2E/%2e%2e/x", Err("percent-encoded traversal"));
        check(&store, "1/a%2Fb", Err("percent-encoded traversal"));
        check(&store, "1/%2e", Err("percent-encoded traversal"));
        check(&store, "1/a\0b", Err("NUL byte"));
        check(&store, "1/100%25done", Ok("1/100%25done"));
    }

    #[test]
    fn a_symbolic_link_in_the_store_is_not_followed() {
        let (dir, store) = store();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.onnx"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, store.root().join("link")).unwrap();
        check(&store, "link/secret.onnx", Err("symbolic link"));
        check(&store, "link", Err("symbolic link"));
    }

    #[tokio::test]
    async fn files_round_trip_and_the_root_cannot_be_deleted() {
        let (_dir, store) = store();
        store.put("1/run/a.txt", b"hello").await.unwrap();
        assert_eq!(store.get("1/run/a.txt").await.unwrap(), b"hello");
        let listed = store.list("1/run").await.unwrap();
        assert_eq!(listed, vec![ArtifactEntry { name: "a.txt".into(), is_dir: false, size: 5 }]);
        assert!(matches!(store.delete(".").await, Err(ArtifactError::RootNotDeletable)));
        assert!(matches!(store.delete("").await, Err(ArtifactError::RootNotDeletable)));
        assert!(matches!(store.put(".", b"x").await, Err(ArtifactError::InvalidPath { .. })));
        assert_eq!(store.get("1/run/a.txt").await.unwrap(), b"hello", "nothing was deleted");
        store.delete("1/run").await.unwrap();
        assert!(matches!(store.get("1/run/a.txt").await, Err(ArtifactError::NotFound(_))));
        assert!(matches!(store.delete("1/run").await, Err(ArtifactError::NotFound(_))));
    }

    #[tokio::test]
    async fn an_mlmodel_names_its_onnx_only_inside_its_folder() {
        let (dir, store) = store();
        let outside = dir.path().join("elsewhere.onnx");
        std::fs::write(&outside, b"outside").unwrap();
        store.put("m/model.onnx", b"inside").await.unwrap();
        store.put("m/MLmodel", b"flavors:\n  onnx:\n    data: model.onnx\n").await.unwrap();
        assert_eq!(store.model_onnx(&store.root().join("m")).await.unwrap(), Some(b"inside".to_vec()));

        let absolute = format!("flavors:\n  onnx:\n    data: {}\n", outside.display());
        store.put("abs/MLmodel", absolute.as_bytes()).await.unwrap();
        let error = store.model_onnx(&store.root().join("abs")).await.unwrap_err().to_string();
        assert!(error.contains("is an absolute path"), "{error}");

        store.put("up/MLmodel", b"flavors:\n  onnx:\n    data: ../m/model.onnx\n").await.unwrap();
        let error = store.model_onnx(&store.root().join("up")).await.unwrap_err().to_string();
        assert!(error.contains("leaves the model folder"), "{error}");

        // No MLmodel: the first .onnx by name; none at all: no model.
        store.put("plain/b.onnx", b"b").await.unwrap();
        store.put("plain/a.onnx", b"a").await.unwrap();
        assert_eq!(store.model_onnx(&store.root().join("plain")).await.unwrap(), Some(b"a".to_vec()));
        store.put("empty/readme.txt", b"-").await.unwrap();
        assert_eq!(store.model_onnx(&store.root().join("empty")).await.unwrap(), None);
        assert!(store.model_onnx(dir.path()).await.is_err(), "a folder outside the store");
    }
}
