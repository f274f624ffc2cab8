//! The plane's signing key and API tokens: loaded, or made on first start and kept in the
//! data folder (private files readable by the owner only).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use fleetml_shared::signing::SigningKeyPair;
use sha2::{Digest, Sha256};

pub const SIGNING_KEY_FILE: &str = "signing.key";
pub const PUBLIC_KEY_FILE: &str = "signing.pub";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Writes a file only the owner can read; refuses to overwrite.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents).with_context(|| format!("writing {}", path.display()))?;
    file.sync_all()?;
    Ok(())
}

/// Replaces a private file atomically (temporary name, fsync, rename), owner-only.
pub fn replace_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let temporary = path.with_extension(format!("tmp-{:08x}", fastrand::u32(..)));
    write_private(&temporary, contents)?;
    fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// `fleetml keys generate --out DIR`.
pub fn generate(out_dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, SigningKeyPair)> {
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let key_pair = SigningKeyPair::generate()?;
    let private_path = out_dir.join(SIGNING_KEY_FILE);
    let public_path = out_dir.join(PUBLIC_KEY_FILE);
    write_private(&private_path, key_pair.to_pem()?.as_bytes())?;
    fs::write(&public_path, key_pair.public_key().to_pem()?).with_context(|| format!("writing {}", public_path.display()))?;
    Ok((private_path, public_path, key_pair))
}

/// The key given by `--signing-key`, or the data folder's, made on first start.
pub fn load_or_create(configured: Option<&Path>, data_dir: &Path) -> anyhow::Result<SigningKeyPair> {
    if let Some(path) = configured {
        return SigningKeyPair::read(path).with_context(|| format!("loading the signing key {}", path.display()));
    }
    let private_path = data_dir.join(SIGNING_KEY_FILE);
    if private_path.exists() {
        return SigningKeyPair::read(&private_path).with_context(|| format!("loading {}", private_path.display()));
    }
    let (_, public_path, key_pair) = generate(data_dir)?;
    tracing::info!(key_id = %key_pair.key_id(), public_key = %public_path.display(), "generated a signing key; give its public key to devices");
    Ok(key_pair)
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|error| anyhow::anyhow!("no system randomness: {error}"))?;
    Ok(format!("fml_{}", hex::encode(bytes)))
}
