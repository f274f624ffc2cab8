//! `fleetml bundle build|verify|inspect`: the signed bundle format, offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use fleetml_shared::bundle::{check_payload, read_bundle_file};
use fleetml_shared::signing::{PublicKey, SigningKeyPair, TrustedKeys};

use super::output::print_json;
use crate::registry::{self, BundleOptions, DEFAULT_SELF_TEST_TOLERANCE};

#[derive(clap::Subcommand)]
pub enum BundleCommand {
    /// Check an ONNX file with tract and write a signed bundle.
    Build {
        #[arg(long)]
        onnx: PathBuf,
        #[arg(long)]
        model: String,
        #[arg(long)]
        version: u64,
        #[arg(long)]
        signing_key: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Days until devices refuse the bundle (0: never).
        #[arg(long, default_value_t = 365)]
        expires_in_days: u64,
        /// A reference profile to attach for drift monitoring.
        #[arg(long)]
        profile: Option<PathBuf>,
    },
    /// Verify signature, expiry, lengths and hashes.
    Verify {
        file: PathBuf,
        #[arg(long = "trusted-key", required = true)]
        trusted_keys: Vec<PathBuf>,
    },
    /// Print the manifest (without verifying it).
    Inspect { file: PathBuf },
}

pub fn run(command: BundleCommand) -> anyhow::Result<ExitCode> {
    match command {
        BundleCommand::Build { onnx, model, version, signing_key, out, expires_in_days, profile } => {
            let profile = profile.map(|path| super::profile::read_profile(&path, None, None)).transpose()?;
            let digest = bundle_build(&onnx, &model, version, &signing_key, &out, expires_in_days, profile)?;
            println!("wrote {} ({model}@{version}, digest {digest})", out.display());
        }
        BundleCommand::Verify { file, trusted_keys } => match bundle_verify(&file, &trusted_keys) {
            Ok(summary) => println!("{summary}"),
            Err(error) => {
                eprintln!("fleetml: {}: INVALID: {error:#}", file.display());
                return Ok(ExitCode::from(1));
            }
        },
        BundleCommand::Inspect { file } => print_json(&bundle_inspect(&file)?)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `fleetml bundle build`: the same checks and signature as a push, offline.
fn bundle_build(
    onnx_path: &Path,
    model: &str,
    version: u64,
    signing_key: &Path,
    out: &Path,
    expires_in_days: u64,
    profile: Option<Vec<u8>>,
) -> anyhow::Result<String> {
    let onnx = std::fs::read(onnx_path).with_context(|| format!("reading {}", onnx_path.display()))?;
    let key_pair = SigningKeyPair::read(signing_key)?;
    let options = BundleOptions {
        model: model.to_string(),
        version,
        expires_in_ms: (expires_in_days > 0).then(|| expires_in_days * 86_400_000),
        latency_budget_ms: None,
        tolerance: DEFAULT_SELF_TEST_TOLERANCE,
        profile,
    };
    let built = registry::build_bundle(&onnx, &options, &key_pair, fleetml_shared::now_ms())?;
    std::fs::write(out, &built.file_bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(built.signed_manifest.digest().to_hex())
}

/// `fleetml bundle verify`: signature, expiry, lengths and hashes.
fn bundle_verify(path: &Path, trusted_keys: &[std::path::PathBuf]) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (signed, payload) = read_bundle_file(&mut bytes.as_slice())?;
    let keys = trusted_keys.iter().map(|path| PublicKey::read(path)).collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        bail!("give at least one --trusted-key");
    }
    let verified = signed.verify(&TrustedKeys::new(keys), fleetml_shared::now_ms())?;
    check_payload(&verified.manifest, &payload)?;
    Ok(format!(
        "{}: valid bundle of {}@{} signed by key {} ({} bytes, digest {})",
        path.display(),
        verified.manifest.model,
        verified.manifest.version,
        verified.manifest.key_id,
        payload.len(),
        verified.digest
    ))
}

/// `fleetml bundle inspect`: the manifest as JSON, unverified.
fn bundle_inspect(path: &Path) -> anyhow::Result<serde_json::Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (signed, payload) = read_bundle_file(&mut bytes.as_slice())?;
    let manifest = signed.decode_unverified()?;
    let schema = registry::schema_of(&manifest);
    Ok(serde_json::json!({
        "digest": signed.digest().to_hex(),
        "model": manifest.model,
        "version": manifest.version,
        "format_version": manifest.format_version,
        "created_at_ms": manifest.created_at_ms,
        "expires_at_ms": manifest.expires_at_ms,
        "key_id": manifest.key_id.to_string(),
        "files": manifest.files.iter().map(|file| serde_json::json!({
            "role": file.role, "name": file.name, "length": file.length, "sha256": hex::encode(file.sha256),
        })).collect::<Vec<_>>(),
        "chunk_size": manifest.chunk_size,
        "n_chunks": manifest.n_chunks(),
        "payload_bytes_in_file": payload.len(),
        "inputs": schema.inputs,
        "outputs": schema.outputs,
        "self_test": {
            "tolerance": manifest.self_test.tolerance,
            "latency_budget_ms": manifest.self_test.latency_budget_ms,
            "inputs": manifest.self_test.inputs.iter().map(|input| serde_json::json!({"name": input.name, "shape": input.shape})).collect::<Vec<_>>(),
        },
        "verified": false,
    }))
}
