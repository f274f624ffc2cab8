//! ed25519 keys, key ids and domain-separated signatures.
//!
//! Keys are stored as PEM (PKCS#8 for the private key, SPKI for the public key), so
//! `openssl pkey -in signing.key -pubout` reads them too. Every signature covers a domain
//! prefix, so a signature over a manifest can never be replayed as a desired state.

use std::fmt;
use std::path::Path;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The first 8 bytes of SHA-256 over the raw 32-byte public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// What a signature is for; the prefix is part of the signed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureDomain {
    Manifest,
    DesiredState,
}

impl SignatureDomain {
    fn prefix(self) -> &'static [u8] {
        match self {
            SignatureDomain::Manifest => b"fleetml/v1/manifest\0",
            SignatureDomain::DesiredState => b"fleetml/v1/desired-state\0",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("reading key file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not a valid ed25519 PEM key: {detail}")]
    BadKey { what: String, detail: String },
    #[error("signed by key {0}, which is not among the trusted keys")]
    UnknownKey(KeyId),
    #[error("signature does not verify against key {0}")]
    BadSignature(KeyId),
    #[error("signature has {0} bytes, expected 64")]
    BadSignatureLength(usize),
    #[error("no system randomness: {0}")]
    Randomness(String),
}

/// A private signing key (the plane's).
#[derive(Clone)]
pub struct SigningKeyPair {
    signing_key: ed25519_dalek::SigningKey,
}

impl SigningKeyPair {
    pub fn generate() -> Result<Self, SigningError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|error| SigningError::Randomness(error.to_string()))?;
        Ok(SigningKeyPair { signing_key: ed25519_dalek::SigningKey::from_bytes(&seed) })
    }

    pub fn from_pem(pem: &str) -> Result<Self, SigningError> {
        let signing_key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map_err(|error| SigningError::BadKey { what: "private key".into(), detail: error.to_string() })?;
        Ok(SigningKeyPair { signing_key })
    }

    pub fn read(path: &Path) -> Result<Self, SigningError> {
        let pem = read_to_string(path)?;
        Self::from_pem(&pem).map_err(|error| match error {
            SigningError::BadKey { detail, .. } => SigningError::BadKey { what: path.display().to_string(), detail },
            other => other,
        })
    }

    pub fn to_pem(&self) -> Result<String, SigningError> {
        self.signing_key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .map_err(|error| SigningError::BadKey { what: "private key".into(), detail: error.to_string() })
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey { verifying_key: self.signing_key.verifying_key() }
    }

    pub fn key_id(&self) -> KeyId {
        self.public_key().key_id()
    }

    pub fn sign(&self, domain: SignatureDomain, message: &[u8]) -> [u8; 64] {
        let mut signed = Vec::with_capacity(domain.prefix().len() + message.len());
        signed.extend_from_slice(domain.prefix());
        signed.extend_from_slice(message);
        self.signing_key.sign(&signed).to_bytes()
    }
}

/// A public verification key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    verifying_key: ed25519_dalek::VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

impl PublicKey {
    pub fn from_pem(pem: &str) -> Result<Self, SigningError> {
        let verifying_key = ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
            .map_err(|error| SigningError::BadKey { what: "public key".into(), detail: error.to_string() })?;
        Ok(PublicKey { verifying_key })
    }

    pub fn read(path: &Path) -> Result<Self, SigningError> {
        let pem = read_to_string(path)?;
        Self::from_pem(&pem).map_err(|error| match error {
            SigningError::BadKey { detail, .. } => SigningError::BadKey { what: path.display().to_string(), detail },
            other => other,
        })
    }

    pub fn to_pem(&self) -> Result<String, SigningError> {
        self.verifying_key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|error| SigningError::BadKey { what: "public key".into(), detail: error.to_string() })
    }

    pub fn key_id(&self) -> KeyId {
        let digest = Sha256::digest(self.verifying_key.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }

    pub fn verify(&self, domain: SignatureDomain, message: &[u8], signature: &[u8]) -> Result<(), SigningError> {
        let signature_bytes: [u8; 64] = signature.try_into().map_err(|_| SigningError::BadSignatureLength(signature.len()))?;
        let signature = ed25519_dalek::Signature::from_bytes(&signature_bytes);
        let mut signed = Vec::with_capacity(domain.prefix().len() + message.len());
        signed.extend_from_slice(domain.prefix());
        signed.extend_from_slice(message);
        self.verifying_key.verify(&signed, &signature).map_err(|_| SigningError::BadSignature(self.key_id()))
    }
}

/// The set of public keys a device (or `bundle verify`) accepts signatures from.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl TrustedKeys {
    pub fn new(keys: Vec<PublicKey>) -> Self {
        TrustedKeys { keys }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn key_ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(PublicKey::key_id).collect()
    }

    pub fn verify(&self, key_id: KeyId, domain: SignatureDomain, message: &[u8], signature: &[u8]) -> Result<(), SigningError> {
        let key = self.keys.iter().find(|key| key.key_id() == key_id).ok_or(SigningError::UnknownKey(key_id))?;
        key.verify(domain, message, signature)
    }
}

fn read_to_string(path: &Path) -> Result<String, SigningError> {
    std::fs::read_to_string(path).map_err(|source| SigningError::Io { path: path.display().to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_keeps_the_key_id() {
        let key_pair = SigningKeyPair::generate().unwrap();
        let again = SigningKeyPair::from_pem(&key_pair.to_pem().unwrap()).unwrap();
        assert_eq!(key_pair.key_id(), again.key_id());
        let public = PublicKey::from_pem(&key_pair.public_key().to_pem().unwrap()).unwrap();
        assert_eq!(public.key_id(), key_pair.key_id());
    }

    #[test]
    fn signature_is_bound_to_its_domain_and_key() {
        let key_pair = SigningKeyPair::generate().unwrap();
        let other = SigningKeyPair::generate().unwrap();
        let trusted = TrustedKeys::new(vec![key_pair.public_key()]);
        let signature = key_pair.sign(SignatureDomain::Manifest, b"hello");
        trusted.verify(key_pair.key_id(), SignatureDomain::Manifest, b"hello", &signature).unwrap();
        assert!(matches!(
            trusted.verify(key_pair.key_id(), SignatureDomain::DesiredState, b"hello", &signature),
            Err(SigningError::BadSignature(_))
        ));
        assert!(matches!(
            trusted.verify(key_pair.key_id(), SignatureDomain::Manifest, b"hellO", &signature),
            Err(SigningError::BadSignature(_))
        ));
        let foreign = other.sign(SignatureDomain::Manifest, b"hello");
        assert!(matches!(trusted.verify(other.key_id(), SignatureDomain::Manifest, b"hello", &foreign), Err(SigningError::UnknownKey(_))));
        assert!(matches!(
            trusted.verify(key_pair.key_id(), SignatureDomain::Manifest, b"hello", &signature[..10]),
            Err(SigningError::BadSignatureLength(10))
        ));
    }

    #[test]
    fn garbage_pem_is_refused_with_a_reason() {
        let error = PublicKey::from_pem("not a key").unwrap_err();
        assert!(error.to_string().contains("not a valid ed25519 PEM key"), "{error}");
    }
}
