//! The signed bundle: a manifest (what the bundle holds, signed over canonical bytes) and a
//! payload (the files it lists, concatenated in order, cut into fixed-size chunks).
//!
//! Invariant: nothing in a payload is trusted until the manifest's signature has been
//! verified and the bytes match the lengths and SHA-256 hashes the manifest gives; the
//! manifest bounds how many bytes a device will ever accept for a bundle.

use std::fmt;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::signing::{KeyId, SignatureDomain, SigningError, SigningKeyPair, TrustedKeys};

/// Bumped only for incompatible changes; fields are added by appending enum variants.
pub const MANIFEST_FORMAT_VERSION: u16 = 1;
/// The role of the ONNX model file in `Manifest::files`.
pub const ROLE_MODEL: &str = "model";
/// The role of a reference profile attachment (`drift::profile`, JSON).
pub const ROLE_PROFILE: &str = "profile";
/// Default payload chunk size: well under every broker's packet limit we configure.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// Largest chunk size a device accepts, whatever a manifest says.
pub const MAX_CHUNK_SIZE: u32 = 1024 * 1024;
/// Largest payload a device accepts, whatever a manifest says.
pub const MAX_PAYLOAD_BYTES: u64 = 2 * 1024 * 1024 * 1024;
const BUNDLE_FILE_MAGIC: &[u8; 8] = b"FMLBNDL\x01";

/// SHA-256 of a manifest's canonical bytes: the bundle's identity everywhere.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BundleDigest(pub [u8; 32]);

impl BundleDigest {
    pub fn of(bytes: &[u8]) -> Self {
        BundleDigest(Sha256::digest(bytes).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text).ok()?;
        Some(BundleDigest(bytes.try_into().ok()?))
    }
}

impl fmt::Display for BundleDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BundleDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BundleDigest({})", self.short())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DType {
    F32,
    I64,
}

impl DType {
    /// The Open Inference Protocol name.
    pub fn oip_name(self) -> &'static str {
        match self {
            DType::F32 => "FP32",
            DType::I64 => "INT64",
        }
    }

    pub fn from_oip_name(name: &str) -> Option<Self> {
        match name {
            "FP32" => Some(DType::F32),
            "INT64" => Some(DType::I64),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dim {
    Fixed(u64),
    /// Any size: the batch dimension, or another dimension the model leaves open.
    Dynamic,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl TensorSpec {
    /// The OIP shape with -1 for open dimensions.
    pub fn oip_shape(&self) -> Vec<i64> {
        self.shape
            .iter()
            .map(|dim| match dim {
                Dim::Fixed(size) => *size as i64,
                Dim::Dynamic => -1,
            })
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TensorValues {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl TensorValues {
    pub fn len(&self) -> usize {
        match self {
            TensorValues::F32(values) => values.len(),
            TensorValues::I64(values) => values.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match self {
            TensorValues::F32(_) => DType::F32,
            TensorValues::I64(_) => DType::I64,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorData {
    pub name: String,
    pub shape: Vec<u64>,
    pub values: TensorValues,
}

/// The check a device runs on a freshly loaded model before it may serve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelfTest {
    pub inputs: Vec<TensorData>,
    /// Outputs recorded when the model was pushed.
    pub expected_outputs: Vec<TensorData>,
    /// An output element passes when |got - expected| <= tolerance * (1 + |expected|).
    pub tolerance: f32,
    /// The self-test run (after one warm-up) must finish within this budget.
    pub latency_budget_ms: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// What the file is for: `model` for the ONNX graph; later roles (a drift profile, say)
    /// are added without a format change, and devices skip roles they do not know.
    pub role: String,
    pub name: String,
    pub length: u64,
    pub sha256: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u16,
    pub model: String,
    pub version: u64,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub key_id: KeyId,
    pub files: Vec<FileEntry>,
    pub chunk_size: u32,
    /// SHA-256 of each payload chunk, in order.
    pub chunk_hashes: Vec<[u8; 32]>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub self_test: SelfTest,
}

impl Manifest {
    /// The sum of the file lengths, or `None` when it does not fit a `u64` (a forged
    /// manifest: `check_structure` refuses it).
    pub fn checked_payload_len(&self) -> Option<u64> {
        self.files.iter().try_fold(0u64, |sum, file| sum.checked_add(file.length))
    }

    /// The sum of the file lengths, saturating at `u64::MAX` (which `check_structure` refuses),
    /// so a manifest whose lengths wrap can never look small.
    pub fn payload_len(&self) -> u64 {
        self.checked_payload_len().unwrap_or(u64::MAX)
    }

    /// Chunk count; saturates at `u32::MAX` (`check_structure` bounds it far below).
    pub fn n_chunks(&self) -> u32 {
        u32::try_from(self.chunk_hashes.len()).unwrap_or(u32::MAX)
    }

    /// Byte range of chunk `index` within the payload (empty beyond the payload's end).
    pub fn chunk_range(&self, index: u32) -> std::ops::Range<u64> {
        let payload_len = self.payload_len();
        // u32 × u32 fits a u64, and so does adding a u32 to it.
        let start = (u64::from(index) * u64::from(self.chunk_size)).min(payload_len);
        let end = (start + u64::from(self.chunk_size)).min(payload_len);
        start..end
    }

    /// Byte range of the file at `file_idx` within the payload (saturating: a manifest that
    /// passed `check_structure` has lengths that sum without overflow).
    pub fn file_range(&self, file_idx: usize) -> std::ops::Range<u64> {
        let start = self.files.iter().take(file_idx).fold(0u64, |sum, file| sum.saturating_add(file.length));
        let length = self.files.get(file_idx).map_or(0, |file| file.length);
        start..start.saturating_add(length)
    }

    pub fn model_file_index(&self) -> Option<usize> {
        self.files.iter().position(|file| file.role == ROLE_MODEL)
    }

    /// The index of the reference profile attachment, if the bundle carries one.
    pub fn profile_file_index(&self) -> Option<usize> {
        self.files.iter().position(|file| file.role == ROLE_PROFILE)
    }

    /// Structural checks that need no key: sizes within bounds, hashes consistent.
    pub fn check_structure(&self) -> Result<(), BundleError> {
        if self.format_version != MANIFEST_FORMAT_VERSION {
            return Err(BundleError::UnsupportedFormat(self.format_version));
        }
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK_SIZE {
            return Err(BundleError::Invalid(format!("chunk size {} out of range", self.chunk_size)));
        }
        // Checked: a signed manifest with lengths that wrap must not pass as a small payload.
        let Some(payload_len) = self.checked_payload_len() else {
            return Err(BundleError::Invalid(format!("file lengths of {} files overflow a 64-bit sum", self.files.len())));
        };
        if payload_len > MAX_PAYLOAD_BYTES {
            return Err(BundleError::Invalid(format!("payload of {payload_len} bytes is too large")));
        }
        // Invariant from here: payload_len <= MAX_PAYLOAD_BYTES (2^31), so every offset, file
        // range and chunk count fits a u32 chunk index and a usize on 32-bit devices.
        let expected_chunks = payload_len.div_ceil(u64::from(self.chunk_size));
        if u64::try_from(self.chunk_hashes.len()).ok() != Some(expected_chunks) {
            return Err(BundleError::Invalid(format!("{} chunk hashes for {expected_chunks} chunks", self.chunk_hashes.len())));
        }
        if self.model_file_index().is_none() {
            return Err(BundleError::Invalid("no file with role `model`".into()));
        }
        Ok(())
    }
}

/// A manifest's canonical bytes with their signature. The bytes are the postcard encoding
/// of `Manifest`; they are verified before they are decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedManifest {
    pub key_id: KeyId,
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
}

/// A manifest whose signature was checked against a trusted key. Only `SignedManifest::verify`
/// makes one.
#[derive(Clone, Debug)]
pub struct VerifiedManifest {
    pub manifest: Manifest,
    pub digest: BundleDigest,
    pub signed: SignedManifest,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Signature(#[from] SigningError),
    #[error("manifest bytes do not decode: {0}")]
    Malformed(String),
    #[error("manifest format version {0} is not supported (this build reads {MANIFEST_FORMAT_VERSION})")]
    UnsupportedFormat(u16),
    #[error("manifest names key {outer} outside and {inner} inside")]
    KeyIdMismatch { outer: KeyId, inner: KeyId },
    #[error("bundle expired at {expires_at_ms} (now {now_ms})")]
    Expired { expires_at_ms: u64, now_ms: u64 },
    #[error("invalid manifest: {0}")]
    Invalid(String),
    #[error("payload is {got} bytes, the manifest says {expected}")]
    LengthMismatch { expected: u64, got: u64 },
    #[error("SHA-256 of {what} does not match the manifest")]
    HashMismatch { what: String },
    #[error("not a fleetml bundle file: {0}")]
    NotABundle(String),
    #[error("reading or writing bundle: {0}")]
    Io(#[from] std::io::Error),
}

impl SignedManifest {
    pub fn sign(manifest: &Manifest, key_pair: &SigningKeyPair) -> Result<Self, BundleError> {
        let mut manifest = manifest.clone();
        manifest.key_id = key_pair.key_id();
        let body = postcard::to_stdvec(&manifest).map_err(|error| BundleError::Malformed(error.to_string()))?;
        let signature = key_pair.sign(SignatureDomain::Manifest, &body).to_vec();
        Ok(SignedManifest { key_id: key_pair.key_id(), body, signature })
    }

    pub fn digest(&self) -> BundleDigest {
        BundleDigest::of(&self.body)
    }

    /// Checks the signature, then decodes and checks the manifest's structure and expiry.
    pub fn verify(&self, trusted_keys: &TrustedKeys, now_ms: u64) -> Result<VerifiedManifest, BundleError> {
        trusted_keys.verify(self.key_id, SignatureDomain::Manifest, &self.body, &self.signature)?;
        let manifest = self.decode_unverified()?;
        if manifest.key_id != self.key_id {
            return Err(BundleError::KeyIdMismatch { outer: self.key_id, inner: manifest.key_id });
        }
        manifest.check_structure()?;
        if let Some(expires_at_ms) = manifest.expires_at_ms
            && expires_at_ms <= now_ms
        {
            return Err(BundleError::Expired { expires_at_ms, now_ms });
        }
        Ok(VerifiedManifest { manifest, digest: self.digest(), signed: self.clone() })
    }

    /// Decodes the manifest without checking the signature: for `bundle inspect` only.
    pub fn decode_unverified(&self) -> Result<Manifest, BundleError> {
        let (manifest, rest): (Manifest, &[u8]) =
            postcard::take_from_bytes(&self.body).map_err(|error| BundleError::Malformed(error.to_string()))?;
        if !rest.is_empty() {
            return Err(BundleError::Malformed(format!("{} trailing bytes after the manifest", rest.len())));
        }
        if manifest.format_version != MANIFEST_FORMAT_VERSION {
            return Err(BundleError::UnsupportedFormat(manifest.format_version));
        }
        Ok(manifest)
    }
}

/// SHA-256 of each `chunk_size` piece of `payload`.
pub fn chunk_hashes(payload: &[u8], chunk_size: u32) -> Vec<[u8; 32]> {
    payload.chunks(chunk_size as usize).map(|chunk| Sha256::digest(chunk).into()).collect()
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Checks one received chunk against the manifest.
pub fn check_chunk(manifest: &Manifest, index: u32, data: &[u8]) -> Result<(), BundleError> {
    let Some(expected_hash) = manifest.chunk_hashes.get(index as usize) else {
        return Err(BundleError::Invalid(format!("chunk index {index} beyond {}", manifest.n_chunks())));
    };
    let range = manifest.chunk_range(index);
    let expected = range.end - range.start;
    if u64::try_from(data.len()).ok() != Some(expected) {
        return Err(BundleError::LengthMismatch { expected, got: u64::try_from(data.len()).unwrap_or(u64::MAX) });
    }
    if &sha256(data) != expected_hash {
        return Err(BundleError::HashMismatch { what: format!("chunk {index}") });
    }
    Ok(())
}

/// Checks a whole payload: length, every chunk, every file.
/// Never panics, even on a manifest that did not pass `check_structure`.
pub fn check_payload(manifest: &Manifest, payload: &[u8]) -> Result<(), BundleError> {
    let got = u64::try_from(payload.len()).unwrap_or(u64::MAX);
    let Some(expected) = manifest.checked_payload_len() else {
        return Err(BundleError::Invalid("file lengths overflow a 64-bit sum".into()));
    };
    if got != expected {
        return Err(BundleError::LengthMismatch { expected, got });
    }
    let chunk_size = usize::try_from(manifest.chunk_size).ok().filter(|size| *size > 0);
    let Some(chunk_size) = chunk_size else {
        return Err(BundleError::Invalid(format!("chunk size {}", manifest.chunk_size)));
    };
    for (chunk_idx, chunk) in payload.chunks(chunk_size).enumerate() {
        let chunk_idx = u32::try_from(chunk_idx).map_err(|_| BundleError::Invalid("more than 2^32 chunks".into()))?;
        check_chunk(manifest, chunk_idx, chunk)?;
    }
    for (file_idx, file) in manifest.files.iter().enumerate() {
        let range = manifest.file_range(file_idx);
        let bytes = usize::try_from(range.start)
            .ok()
            .zip(usize::try_from(range.end).ok())
            .and_then(|(start, end)| payload.get(start..end))
            .ok_or_else(|| BundleError::Invalid(format!("file {} lies outside the payload", file.name)))?;
        if sha256(bytes) != file.sha256 {
            return Err(BundleError::HashMismatch { what: format!("file {}", file.name) });
        }
    }
    Ok(())
}

/// A bundle as one file: magic, the signed manifest (length-prefixed postcard), the payload.
pub fn write_bundle_file(writer: &mut impl Write, signed_manifest: &SignedManifest, payload: &[u8]) -> Result<(), BundleError> {
    let header = postcard::to_stdvec(signed_manifest).map_err(|error| BundleError::Malformed(error.to_string()))?;
    writer.write_all(BUNDLE_FILE_MAGIC)?;
    writer.write_all(&(header.len() as u32).to_le_bytes())?;
    writer.write_all(&header)?;
    writer.write_all(payload)?;
    Ok(())
}

/// Reads a bundle file; nothing is verified yet (see `SignedManifest::verify`, `check_payload`).
pub fn read_bundle_file(reader: &mut impl Read) -> Result<(SignedManifest, Vec<u8>), BundleError> {
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).map_err(|_| BundleError::NotABundle("shorter than its header".into()))?;
    if &magic != BUNDLE_FILE_MAGIC {
        return Err(BundleError::NotABundle("wrong magic bytes".into()));
    }
    let mut header_len = [0u8; 4];
    reader.read_exact(&mut header_len)?;
    let header_len = u32::from_le_bytes(header_len) as usize;
    if header_len > 16 * 1024 * 1024 {
        return Err(BundleError::NotABundle(format!("manifest of {header_len} bytes")));
    }
    let mut header = vec![0u8; header_len];
    reader.read_exact(&mut header).map_err(|_| BundleError::NotABundle("truncated manifest".into()))?;
    let signed_manifest: SignedManifest = postcard::from_bytes(&header).map_err(|error| BundleError::Malformed(error.to_string()))?;
    let mut payload = Vec::new();
    reader.read_to_end(&mut payload)?;
    Ok((signed_manifest, payload))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::signing::SigningKeyPair;

    pub(crate) fn sample_manifest(payload: &[u8], chunk_size: u32) -> Manifest {
        Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            model: "demo".into(),
            version: 1,
            created_at_ms: 1_000,
            expires_at_ms: Some(10_000),
            key_id: KeyId([0; 8]),
            files: vec![FileEntry {
                role: ROLE_MODEL.into(),
                name: "model.onnx".into(),
                length: payload.len() as u64,
                sha256: sha256(payload),
            }],
            chunk_size,
            chunk_hashes: chunk_hashes(payload, chunk_size),
            inputs: vec![TensorSpec { name: "x".into(), dtype: DType::F32, shape: vec![Dim::Dynamic, Dim::Fixed(4)] }],
            outputs: vec![],
            self_test: SelfTest { inputs: vec![], expected_outputs: vec![], tolerance: 1e-4, latency_budget_ms: 100 },
        }
    }

    #[test]
    fn signed_bundle_round_trips_through_a_file_and_verifies() {
        let key_pair = SigningKeyPair::generate().unwrap();
        let payload: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let manifest = sample_manifest(&payload, 256);
        let signed = SignedManifest::sign(&manifest, &key_pair).unwrap();
        let mut file = Vec::new();
        write_bundle_file(&mut file, &signed, &payload).unwrap();
        let (read_back, read_payload) = read_bundle_file(&mut file.as_slice()).unwrap();
        let trusted = TrustedKeys::new(vec![key_pair.public_key()]);
        let verified = read_back.verify(&trusted, 5_000).unwrap();
        assert_eq!(verified.manifest.n_chunks(), 4);
        assert_eq!(verified.manifest.chunk_range(3), 768..1000);
        check_payload(&verified.manifest, &read_payload).unwrap();
    }

    #[test]
    fn every_tampering_is_refused_with_its_reason() {
        let key_pair = SigningKeyPair::generate().unwrap();
        let trusted = TrustedKeys::new(vec![key_pair.public_key()]);
        let payload = vec![7u8; 600];
        let manifest = sample_manifest(&payload, 256);
        let signed = SignedManifest::sign(&manifest, &key_pair).unwrap();

        let mut flipped = signed.clone();
        flipped.body[3] ^= 1;
        assert!(matches!(flipped.verify(&trusted, 5_000), Err(BundleError::Signature(SigningError::BadSignature(_)))));

        let stranger = SigningKeyPair::generate().unwrap();
        let foreign = SignedManifest::sign(&manifest, &stranger).unwrap();
        assert!(matches!(foreign.verify(&trusted, 5_000), Err(BundleError::Signature(SigningError::UnknownKey(_)))));

        assert!(matches!(signed.verify(&trusted, 10_000), Err(BundleError::Expired { .. })));

        let verified = signed.verify(&trusted, 5_000).unwrap();
        let mut bad_payload = payload.clone();
        bad_payload[300] ^= 0x80;
        assert!(matches!(
            check_payload(&verified.manifest, &bad_payload),
            Err(BundleError::HashMismatch { what }) if what == "chunk 1"
        ));
        assert!(matches!(check_payload(&verified.manifest, &payload[..599]), Err(BundleError::LengthMismatch { expected: 600, got: 599 })));
        assert!(check_chunk(&verified.manifest, 9, &[]).is_err());
    }

    /// A manifest whose file lengths wrap to a small sum, signed by a trusted key, and a
    /// payload of that small sum with matching chunk hashes.
    fn wrapping_manifest() -> (Manifest, Vec<u8>) {
        let payload = vec![9u8; 100];
        let mut manifest = sample_manifest(&payload, 64);
        // (2^64 - 28) + 128 wraps to exactly 100: the payload length.
        manifest.files = vec![
            FileEntry { role: ROLE_MODEL.into(), name: "model.onnx".into(), length: u64::MAX - 27, sha256: sha256(&payload) },
            FileEntry { role: ROLE_PROFILE.into(), name: "profile.json".into(), length: 128, sha256: sha256(&[]) },
        ];
        assert_eq!(manifest.files[0].length.wrapping_add(manifest.files[1].length), 100);
        (manifest, payload)
    }

    #[test]
    fn a_signed_manifest_whose_file_lengths_wrap_is_refused_and_never_panics() {
        let key_pair = SigningKeyPair::generate().unwrap();
        let trusted = TrustedKeys::new(vec![key_pair.public_key()]);
        let (manifest, payload) = wrapping_manifest();
        let signed = SignedManifest::sign(&manifest, &key_pair).unwrap();
        match signed.verify(&trusted, 5_000) {
            Err(BundleError::Invalid(reason)) => assert!(reason.contains("overflow"), "{reason}"),
            other => panic!("expected the overflow to be refused, got {other:?}"),
        }
        // The ranges saturate instead of wrapping, and the payload check refuses rather than
        // panicking, even when handed the manifest unverified.
        assert_eq!(manifest.payload_len(), u64::MAX);
        assert_eq!(manifest.file_range(1), u64::MAX - 27..u64::MAX);
        assert!(matches!(check_payload(&manifest, &payload), Err(BundleError::Invalid(_))));
        assert!(check_chunk(&manifest, u32::MAX, &[]).is_err());
    }

    #[test]
    fn manifests_with_out_of_range_numbers_are_refused() {
        #[track_caller]
        fn check(edit: impl FnOnce(&mut Manifest), expected_reason: &str) {
            let payload = vec![1u8; 300];
            let mut manifest = sample_manifest(&payload, 128);
            edit(&mut manifest);
            match manifest.check_structure() {
                Err(BundleError::Invalid(reason)) => assert!(reason.contains(expected_reason), "{reason}"),
                other => panic!("expected `{expected_reason}`, got {other:?}"),
            }
        }
        check(|manifest| manifest.chunk_size = 0, "chunk size 0");
        check(|manifest| manifest.chunk_size = MAX_CHUNK_SIZE + 1, "out of range");
        check(|manifest| manifest.files[0].length = MAX_PAYLOAD_BYTES + 1, "too large");
        check(|manifest| manifest.files.push(manifest.files[0].clone()), "chunk hashes");
        check(|manifest| manifest.files.push(FileEntry { length: u64::MAX, ..manifest.files[0].clone() }), "overflow");
        check(|manifest| manifest.chunk_hashes.push([0; 32]), "4 chunk hashes for 3 chunks");
    }

    #[test]
    fn garbage_bundle_files_are_refused() {
        assert!(matches!(read_bundle_file(&mut &b"hello"[..]), Err(BundleError::NotABundle(_))));
        let mut file = BUNDLE_FILE_MAGIC.to_vec();
        file.extend_from_slice(&5u32.to_le_bytes());
        file.extend_from_slice(&[0xff; 5]);
        assert!(read_bundle_file(&mut file.as_slice()).is_err());
    }
}
