//! Helpers for this crate's unit tests: signed bundles made in memory.

use fleetml_shared::bundle::{
    FileEntry, MANIFEST_FORMAT_VERSION, Manifest, ROLE_MODEL, SelfTest, SignedManifest, VerifiedManifest, chunk_hashes, sha256,
};
use fleetml_shared::signing::{KeyId, SigningKeyPair, TrustedKeys};

pub fn signed_bundle(payload: &[u8], chunk_size: u32) -> (VerifiedManifest, SigningKeyPair) {
    let key_pair = SigningKeyPair::generate().expect("randomness");
    let manifest = Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        model: "m".into(),
        version: 1,
        created_at_ms: 0,
        expires_at_ms: None,
        key_id: KeyId([0; 8]),
        files: vec![FileEntry {
            role: ROLE_MODEL.into(),
            name: "model.onnx".into(),
            length: payload.len() as u64,
            sha256: sha256(payload),
        }],
        chunk_size,
        chunk_hashes: chunk_hashes(payload, chunk_size),
        inputs: vec![],
        outputs: vec![],
        self_test: SelfTest { inputs: vec![], expected_outputs: vec![], tolerance: 0.0, latency_budget_ms: 1 },
    };
    let signed = SignedManifest::sign(&manifest, &key_pair).expect("signing");
    let verified = signed.verify(&TrustedKeys::new(vec![key_pair.public_key()]), 1).expect("verifies");
    (verified, key_pair)
}
