//! Long-term Ed25519 identity keys, their fingerprints, and their files.
//!
//! Files are the standard PEM encodings (RFC 8410): the private key as PKCS#8 v1
//! ("PRIVATE KEY"), the public key as SubjectPublicKeyInfo ("PUBLIC KEY"). Standard, so
//! that `openssl pkey` and Python's `cryptography` read them without any code of ours.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

/// Length of an Ed25519 public key, of a fingerprint, and of a seed.
pub const KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Text form of a fingerprint: this prefix, then 64 lowercase hex digits.
pub const FINGERPRINT_PREFIX: &str = "sha256:";

/// SHA-256 of a raw 32-byte Ed25519 public key: what a client pins.
///
/// Equality is constant-time: a pin comparison must not tell an attacker how many
/// leading bytes of a forged key were right.
#[derive(Clone, Copy)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(public_key: &[u8; KEY_LEN]) -> Self {
        Fingerprint(Sha256::digest(public_key).into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for Fingerprint {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for Fingerprint {}

impl std::hash::Hash for Fingerprint {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{FINGERPRINT_PREFIX}{}", hex::encode(&self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = Error;

    /// Accepts `sha256:` followed by 64 hex digits of either case; surrounding
    /// whitespace is ignored because pins are pasted from terminals and config files.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidFingerprint(s.to_owned());
        let digits = s.trim().strip_prefix(FINGERPRINT_PREFIX).ok_or_else(bad)?;
        let bytes = hex::decode(digits).ok_or_else(bad)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Fingerprint(bytes))
    }
}

/// A validated Ed25519 public key (a broker's or a client's identity).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicIdentity(VerifyingKey);

impl PublicIdentity {
    /// Refuses encodings that are not points and small-order ("weak") keys, for which
    /// a signature can verify on messages the key holder never signed.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Result<Self> {
        let key = VerifyingKey::from_bytes(bytes)
            .map_err(|_| Error::InvalidKey("not an Ed25519 public key".into()))?;
        if key.is_weak() {
            return Err(Error::InvalidKey("small-order Ed25519 public key".into()));
        }
        Ok(PublicIdentity(key))
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let bytes: &[u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| Error::InvalidKey("Ed25519 public key must be 32 bytes".into()))?;
        Self::from_bytes(bytes)
    }

    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0.to_bytes()
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.0.as_bytes())
    }

    /// Strict verification (RFC 8032 with canonical `S` and no small-order `R`), so a
    /// signature has exactly one valid encoding.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = Signature::from_slice(signature) else {
            return false;
        };
        self.0.verify_strict(message, &sig).is_ok()
    }

    /// PEM SubjectPublicKeyInfo ("PUBLIC KEY"), as `openssl pkey -pubout` writes it.
    pub fn to_pem(&self) -> Result<String> {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| Error::InvalidKey(e.to_string()))
    }

    pub fn from_pem(pem: &str) -> Result<Self> {
        let key = VerifyingKey::from_public_key_pem(pem.trim())
            .map_err(|e| Error::InvalidKey(format!("not an Ed25519 PUBLIC KEY PEM: {e}")))?;
        Self::from_bytes(key.as_bytes())
    }

    /// Writes the PEM file; refuses to replace an existing file, so a typo cannot
    /// overwrite another key.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_new_file(path, self.to_pem()?.as_bytes(), 0o644)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path).map_err(|source| Error::KeyFileIo {
            path: path.to_owned(),
            source,
        })?;
        Self::from_pem(&text).map_err(|e| Error::KeyFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }
}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicIdentity({})", self.fingerprint())
    }
}

/// A long-term Ed25519 signing key: the broker's identity, or a client's when it
/// authenticates. The secret is wiped when this is dropped (ed25519-dalek's `zeroize`).
pub struct IdentityKey(SigningKey);

impl IdentityKey {
    pub fn generate() -> Result<Self> {
        let mut seed = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(seed.as_mut()).map_err(Error::Rng)?;
        Ok(Self::from_seed(&seed))
    }

    /// The 32-byte RFC 8032 private key. For test vectors and for importing keys.
    pub fn from_seed(seed: &[u8; KEY_LEN]) -> Self {
        IdentityKey(SigningKey::from_bytes(seed))
    }

    pub fn public(&self) -> PublicIdentity {
        PublicIdentity(self.0.verifying_key())
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.public().fingerprint()
    }

    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(message).to_bytes()
    }

    /// PEM PKCS#8 v1 ("PRIVATE KEY") without the optional public key, the form OpenSSL
    /// writes for Ed25519 and every PKCS#8 reader accepts.
    pub fn to_pem(&self) -> Result<Zeroizing<String>> {
        let mut bytes = KeypairBytes {
            secret_key: self.0.to_bytes(),
            public_key: None,
        };
        let pem = bytes
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| Error::InvalidKey(e.to_string()));
        // `KeypairBytes` wipes itself only with the `ed25519/zeroize` feature, which
        // ed25519-dalek does not turn on.
        bytes.secret_key.zeroize();
        pem
    }

    /// Also accepts PKCS#8 v2 (with the public key), checking that it matches.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let mut bytes = KeypairBytes::from_pkcs8_pem(pem.trim())
            .map_err(|e| Error::InvalidKey(format!("not an Ed25519 PRIVATE KEY PEM: {e}")))?;
        let key = SigningKey::try_from(&bytes)
            .map_err(|e| Error::InvalidKey(format!("inconsistent Ed25519 key pair: {e}")));
        bytes.secret_key.zeroize();
        Ok(IdentityKey(key?))
    }

    /// Writes the PEM with mode 0600 (owner only) from the moment the file exists, and
    /// refuses to replace an existing file: losing a broker key breaks every pin.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_new_file(path, self.to_pem()?.as_bytes(), 0o600)
    }

    /// Refuses (on Unix) a file that group or others may read or write, as ssh does: a
    /// key that others could read is no longer an identity.
    pub fn load(path: &Path) -> Result<Self> {
        let io = |source| Error::KeyFileIo {
            path: path.to_owned(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(path).map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(Error::KeyFile {
                    path: path.to_owned(),
                    reason: format!(
                        "permissions {:04o} let others access the private key; run chmod 600",
                        mode & 0o7777
                    ),
                });
            }
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(io)?);
        Self::from_pem(&text).map_err(|e| Error::KeyFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({})", self.fingerprint())
    }
}

/// Where `keygen` puts the public half: the private key's path with `.pub` appended
/// (the ssh-keygen convention, so `broker.key` pairs with `broker.key.pub`).
pub fn public_key_path(private_key_path: &Path) -> PathBuf {
    let mut s = private_key_path.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// What `enclave-broker keygen` and `enclave keygen` do: a fresh key written to
/// `private_key_path` (0600) and its public key to [`public_key_path`]. Neither file
/// may exist yet.
pub fn keygen(private_key_path: &Path) -> Result<IdentityKey> {
    let key = IdentityKey::generate()?;
    let public_path = public_key_path(private_key_path);
    if public_path.exists() {
        return Err(Error::KeyFile {
            path: public_path,
            reason: "already exists".into(),
        });
    }
    key.save(private_key_path)?;
    key.public().save(&public_path)?;
    Ok(key)
}

fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let io = |source| Error::KeyFileIo {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}

/// Lowercase hex, for fingerprints, session ids and test vectors.
pub(crate) mod hex {
    pub fn encode(bytes: &[u8]) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 15)] as char);
        }
        s
    }

    pub fn decode(s: &str) -> Option<Vec<u8>> {
        fn nibble(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            }
        }
        let s = s.as_bytes();
        if !s.len().is_multiple_of(2) {
            return None;
        }
        s.chunks_exact(2)
            .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "enclave-proto-keys-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn fingerprint_text_round_trip_and_rfc8032_key() {
        // RFC 8032 section 7.1, test 1.
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap();
        let key = IdentityKey::from_seed(&seed);
        assert_eq!(
            hex::encode(&key.public().to_bytes()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        let fp = key.fingerprint();
        let text = fp.to_string();
        assert!(text.starts_with("sha256:") && text.len() == 7 + 64);
        assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(
            text.to_uppercase()
                .replace("SHA256:", "sha256:")
                .parse::<Fingerprint>()
                .unwrap(),
            fp
        );
        for bad in [
            "",
            "sha256:",
            "sha1:00",
            &text[..70],
            &format!("{text}00"),
            &text.replace("sha256:", "SHA256:"),
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn weak_and_invalid_public_keys_are_refused() {
        // The identity point (small order) and a y with no x on the curve.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(PublicIdentity::from_bytes(&identity).is_err());
        assert!(PublicIdentity::from_slice(&[0u8; 31]).is_err());
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        assert!(PublicIdentity::from_bytes(&not_a_point).is_err());
    }

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let a = IdentityKey::from_seed(&[1; 32]);
        let b = IdentityKey::from_seed(&[2; 32]);
        let sig = a.sign(b"transcript");
        assert!(a.public().verify(b"transcript", &sig));
        assert!(!a.public().verify(b"transcripT", &sig));
        assert!(!b.public().verify(b"transcript", &sig));
        assert!(!a.public().verify(b"transcript", &sig[..63]));
    }

    #[test]
    fn keygen_writes_0600_pem_and_refuses_to_overwrite() {
        let dir = temp_dir("keygen");
        let path = dir.join("broker.key");
        let key = keygen(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
        let loaded = IdentityKey::load(&path).unwrap();
        assert_eq!(loaded.fingerprint(), key.fingerprint());
        let public = PublicIdentity::load(&public_key_path(&path)).unwrap();
        assert_eq!(public, key.public());
        assert!(
            fs::read_to_string(public_key_path(&path))
                .unwrap()
                .starts_with("-----BEGIN PUBLIC KEY-----\n")
        );
        assert!(matches!(keygen(&path), Err(Error::KeyFile { .. })));
        assert!(matches!(key.save(&path), Err(Error::KeyFileIo { .. })));
        fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn load_refuses_a_private_key_others_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("perm");
        let path = dir.join("id.key");
        IdentityKey::from_seed(&[7; 32]).save(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            IdentityKey::load(&path),
            Err(Error::KeyFile { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(IdentityKey::load(&path).is_ok());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pem_matches_rfc8410_and_reads_pkcs8_v2() {
        // RFC 8410 section 10.3: the private key example and its public key.
        let v1 = "-----BEGIN PRIVATE KEY-----\n\
                  MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                  -----END PRIVATE KEY-----\n";
        let key = IdentityKey::from_pem(v1).unwrap();
        assert_eq!(key.to_pem().unwrap().as_str(), v1);
        let public = "-----BEGIN PUBLIC KEY-----\n\
                      MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
                      -----END PUBLIC KEY-----\n";
        assert_eq!(key.public().to_pem().unwrap(), public);
        assert_eq!(PublicIdentity::from_pem(public).unwrap(), key.public());
        // PKCS#8 v2 (with the public key) is read when the public key matches.
        let v2 = |public: [u8; 32]| {
            KeypairBytes {
                secret_key: IdentityKey::from_pem(v1).unwrap().0.to_bytes(),
                public_key: Some(ed25519_dalek::pkcs8::PublicKeyBytes(public)),
            }
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap()
        };
        let k2 = IdentityKey::from_pem(&v2(key.public().to_bytes())).unwrap();
        assert_eq!(k2.fingerprint(), key.fingerprint());
        let other = IdentityKey::from_seed(&[9; 32]).public().to_bytes();
        assert!(IdentityKey::from_pem(&v2(other)).is_err());
        assert!(IdentityKey::from_pem(public).is_err());
        assert!(IdentityKey::from_pem("garbage").is_err());
    }
}
