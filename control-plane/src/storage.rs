//! The plane's data folder on disk: created private (folders 0700, files 0600), because it
//! holds the signing key, the admin token, the database, bundles and run artifacts.
//!
//! `make_private_data_dir` also sets the process umask to 0077, so every file the plane
//! writes later (artifacts, bundles, SQLite's `-wal` and `-shm`) is private whatever code
//! path writes it, and tightens what an older version left readable.

use std::fs::{self, DirBuilder, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

pub const PRIVATE_DIR_MODE: u32 = 0o700;
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates (or tightens) the data folder and its `bundles/` and `artifacts/` folders, and the
/// SQLite file when the store is one in a local file; sets the umask to 0077.
pub fn make_private_data_dir(data_dir: &Path, database_url: &str) -> anyhow::Result<()> {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    for dir in [data_dir.to_path_buf(), data_dir.join("bundles"), data_dir.join("artifacts")] {
        DirBuilder::new().recursive(true).mode(PRIVATE_DIR_MODE).create(&dir).with_context(|| format!("creating {}", dir.display()))?;
        set_mode(&dir, PRIVATE_DIR_MODE)?;
    }
    // What an older version wrote with the default umask.
    for name in [crate::keys::PUBLIC_KEY_FILE, crate::keys::SIGNING_KEY_FILE, crate::keys::ADMIN_TOKEN_FILE] {
        tighten_if_present(&data_dir.join(name))?;
    }
    let bundles = data_dir.join("bundles");
    for entry in fs::read_dir(&bundles).with_context(|| format!("listing {}", bundles.display()))? {
        let path = entry?.path();
        if path.is_file() {
            tighten_if_present(&path)?;
        }
    }
    if let Some(database) = sqlite_path(database_url) {
        if let Some(parent) = database.parent().filter(|parent| !parent.as_os_str().is_empty() && !parent.exists()) {
            DirBuilder::new()
                .recursive(true)
                .mode(PRIVATE_DIR_MODE)
                .create(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        // SQLite gives its -wal and -shm files the mode of the database file, so the file is
        // made before SQLite opens it (an empty file is a new database to SQLite).
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(PRIVATE_FILE_MODE)
            .open(&database)
            .with_context(|| format!("creating {}", database.display()))?;
        for suffix in ["", "-wal", "-shm"] {
            let mut name = database.clone().into_os_string();
            name.push(suffix);
            tighten_if_present(Path::new(&name))?;
        }
    }
    Ok(())
}

/// Writes `bytes` to a new or truncated file readable by the owner only.
pub async fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let path = path.to_path_buf();
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut file = fs::OpenOptions::new().create(true).write(true).truncate(true).mode(PRIVATE_FILE_MODE).open(&path)?;
        fs::set_permissions(&path, Permissions::from_mode(PRIVATE_FILE_MODE))?;
        file.write_all(&bytes)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The file of a `sqlite:` URL, or `None` for PostgreSQL or an in-memory database.
pub fn sqlite_path(database_url: &str) -> Option<PathBuf> {
    let rest = database_url.strip_prefix("sqlite://").or_else(|| database_url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(path, Permissions::from_mode(mode)).with_context(|| format!("setting the mode of {} to {mode:o}", path.display()))
}

fn tighten_if_present(path: &Path) -> anyhow::Result<()> {
    match fs::metadata(path) {
        Ok(metadata) if metadata.permissions().mode() & 0o077 != 0 => set_mode(path, metadata.permissions().mode() & 0o700),
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(sqlite_path("sqlite:///srv/f/fleetml.db"), Some(PathBuf::from("/srv/f/fleetml.db")));
        assert_eq!(sqlite_path("sqlite://data/x.db?mode=rwc"), Some(PathBuf::from("data/x.db")));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://u@h/db"), None);
    }

    #[test]
    fn an_old_world_readable_data_folder_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        fs::create_dir_all(data_dir.join("bundles")).unwrap();
        fs::set_permissions(&data_dir, Permissions::from_mode(0o755)).unwrap();
        let old_files = [data_dir.join("signing.pub"), data_dir.join("bundles").join("a.bundle"), data_dir.join("fleetml.db")];
        for path in &old_files {
            fs::write(path, b"x").unwrap();
            fs::set_permissions(path, Permissions::from_mode(0o644)).unwrap();
        }
        let url = format!("sqlite://{}", data_dir.join("fleetml.db").display());
        make_private_data_dir(&data_dir, &url).unwrap();
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        for dir in [&data_dir, &data_dir.join("bundles"), &data_dir.join("artifacts")] {
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
        }
        for path in &old_files {
            assert_eq!(mode(path), 0o600, "{}", path.display());
        }
    }
}
