//! Ephemeral Diffie-Hellman for the two suites, with the peer-share validation each curve
//! needs: RFC 7748's all-zero check for X25519 (which also catches every low-order
//! point), SEC1 on-curve and non-identity checks for P-256.

use p256::elliptic_curve::sec1::ToSec1Point;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::v1::Suite;

/// X25519 shares are 32 bytes.
pub const X25519_SHARE_LEN: usize = 32;
/// P-256 shares are uncompressed SEC1 points: 0x04 || X || Y.
pub const P256_SHARE_LEN: usize = 65;

/// The suite as the transcript encodes it, refusing `SUITE_UNSPECIFIED` and unknown
/// values so that "no suite" can never silently mean a default.
pub fn suite_from_wire(value: i32) -> Result<Suite> {
    match Suite::try_from(value) {
        Ok(s @ (Suite::X25519Ed25519Aes256gcmSha256 | Suite::P256Ed25519Aes256gcmSha256)) => Ok(s),
        _ => Err(Error::UnsupportedSuite(value)),
    }
}

/// A fresh per-session key-exchange secret. Both variants wipe themselves on drop.
pub(crate) enum EphemeralSecret {
    X25519(x25519_dalek::StaticSecret),
    P256(p256::SecretKey),
}

impl EphemeralSecret {
    /// From 32 caller-chosen bytes (test vectors). X25519 clamps any 32 bytes; P-256
    /// refuses zero and values not below the group order.
    pub(crate) fn from_bytes(suite: Suite, bytes: &[u8; 32]) -> Result<Self> {
        match suite {
            Suite::X25519Ed25519Aes256gcmSha256 => Ok(EphemeralSecret::X25519(
                x25519_dalek::StaticSecret::from(*bytes),
            )),
            Suite::P256Ed25519Aes256gcmSha256 => {
                let field = p256::FieldBytes::from(*bytes);
                p256::SecretKey::from_bytes(&field)
                    .map(EphemeralSecret::P256)
                    .map_err(|_| Error::InvalidKey("P-256 scalar out of range".into()))
            }
            Suite::Unspecified => Err(Error::UnsupportedSuite(suite as i32)),
        }
    }

    pub(crate) fn generate(suite: Suite) -> Result<Self> {
        // For P-256 a random 32-byte string is >= n with probability ~2^-32; retrying
        // keeps the distribution uniform.
        for _ in 0..64 {
            let mut bytes = Zeroizing::new([0u8; 32]);
            getrandom::fill(bytes.as_mut()).map_err(Error::Rng)?;
            match Self::from_bytes(suite, &bytes) {
                Ok(secret) => return Ok(secret),
                Err(Error::InvalidKey(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::InvalidKey(
            "no valid P-256 scalar in 64 draws".into(),
        ))
    }

    pub(crate) fn public_share(&self) -> Vec<u8> {
        match self {
            EphemeralSecret::X25519(s) => x25519_dalek::PublicKey::from(s).to_bytes().to_vec(),
            EphemeralSecret::P256(s) => s.public_key().to_sec1_point(false).as_bytes().to_vec(),
        }
    }

    /// The raw shared secret (X25519 output, or the P-256 x-coordinate as in SEC1 and
    /// WebCrypto `deriveBits`), after validating the peer's share.
    pub(crate) fn diffie_hellman(&self, peer_share: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
        match self {
            EphemeralSecret::X25519(s) => {
                let peer: [u8; X25519_SHARE_LEN] = peer_share
                    .try_into()
                    .map_err(|_| Error::InvalidShare("X25519 (must be 32 bytes)"))?;
                let shared = s.diffie_hellman(&x25519_dalek::PublicKey::from(peer));
                let out = Zeroizing::new(*shared.as_bytes());
                if bool::from(out.ct_eq(&[0u8; 32])) {
                    return Err(Error::ZeroSharedSecret);
                }
                Ok(out)
            }
            EphemeralSecret::P256(s) => {
                // Only the uncompressed form: one encoding per point keeps the
                // transcript unambiguous, and it is what WebCrypto's "raw" export gives.
                if peer_share.len() != P256_SHARE_LEN || peer_share[0] != 0x04 {
                    return Err(Error::InvalidShare(
                        "P-256 (must be a 65-byte uncompressed SEC1 point)",
                    ));
                }
                // Checks the point is on the curve and not the identity.
                let peer = p256::PublicKey::from_sec1_bytes(peer_share)
                    .map_err(|_| Error::InvalidShare("P-256 (not a point on the curve)"))?;
                let shared = s.diffie_hellman(&peer);
                let mut out = Zeroizing::new([0u8; 32]);
                out.copy_from_slice(shared.raw_secret_bytes());
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::hex;

    /// The X25519 low-order points (and their non-canonical encodings) that libsodium
    /// blocklists; each must give the all-zero output.
    pub(crate) const X25519_LOW_ORDER: [&str; 7] = [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ];

    fn x(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn x25519_matches_rfc7748() {
        // RFC 7748 section 6.1.
        let alice: [u8; 32] = x("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .try_into()
            .unwrap();
        let bob_pub = x("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        let a = EphemeralSecret::from_bytes(Suite::X25519Ed25519Aes256gcmSha256, &alice).unwrap();
        assert_eq!(
            hex::encode(&a.public_share()),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        assert_eq!(
            hex::encode(a.diffie_hellman(&bob_pub).unwrap().as_ref()),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        );
    }

    #[test]
    fn x25519_low_order_points_give_zero_and_are_refused() {
        let a = EphemeralSecret::generate(Suite::X25519Ed25519Aes256gcmSha256).unwrap();
        for p in X25519_LOW_ORDER {
            assert!(
                matches!(a.diffie_hellman(&x(p)), Err(Error::ZeroSharedSecret)),
                "{p}"
            );
        }
        assert!(matches!(
            a.diffie_hellman(&[9u8; 31]),
            Err(Error::InvalidShare(_))
        ));
        assert!(matches!(
            a.diffie_hellman(&[9u8; 33]),
            Err(Error::InvalidShare(_))
        ));
    }

    #[test]
    fn p256_agrees_and_refuses_invalid_points() {
        let suite = Suite::P256Ed25519Aes256gcmSha256;
        let a = EphemeralSecret::generate(suite).unwrap();
        let b = EphemeralSecret::generate(suite).unwrap();
        let ab = a.diffie_hellman(&b.public_share()).unwrap();
        let ba = b.diffie_hellman(&a.public_share()).unwrap();
        assert_eq!(*ab, *ba);
        let good = b.public_share();
        assert_eq!(good.len(), 65);
        // Off the curve: flip a bit of Y.
        let mut off = good.clone();
        off[64] ^= 1;
        assert!(matches!(
            a.diffie_hellman(&off),
            Err(Error::InvalidShare(_))
        ));
        // The identity (SEC1 0x00), compressed form, truncated, wrong prefix.
        assert!(a.diffie_hellman(&[0u8]).is_err());
        let mut compressed = vec![0x02 | (good[64] & 1)];
        compressed.extend_from_slice(&good[1..33]);
        assert!(a.diffie_hellman(&compressed).is_err());
        assert!(a.diffie_hellman(&good[..64]).is_err());
        let mut hybrid = good.clone();
        hybrid[0] = 0x06;
        assert!(a.diffie_hellman(&hybrid).is_err());
        // X = p (not a field element) with the prefix 0x04.
        let mut big = vec![0x04];
        big.extend_from_slice(&x(
            "ffffffff00000001000000000000000000000000ffffffffffffffffffffffff",
        ));
        big.extend_from_slice(&good[33..]);
        assert!(a.diffie_hellman(&big).is_err());
        // All zeros with the right prefix and length: (0, 0) is not on the curve.
        let mut zeros = vec![0u8; 65];
        zeros[0] = 0x04;
        assert!(a.diffie_hellman(&zeros).is_err());
    }

    #[test]
    fn p256_scalar_range_is_checked() {
        let suite = Suite::P256Ed25519Aes256gcmSha256;
        assert!(EphemeralSecret::from_bytes(suite, &[0u8; 32]).is_err());
        assert!(EphemeralSecret::from_bytes(suite, &[0xff; 32]).is_err());
        assert!(EphemeralSecret::from_bytes(suite, &[1u8; 32]).is_ok());
    }

    #[test]
    fn unspecified_and_unknown_suites_are_refused() {
        assert!(suite_from_wire(0).is_err());
        assert!(suite_from_wire(3).is_err());
        assert!(suite_from_wire(-1).is_err());
        assert_eq!(
            suite_from_wire(1).unwrap(),
            Suite::X25519Ed25519Aes256gcmSha256
        );
        assert_eq!(
            suite_from_wire(2).unwrap(),
            Suite::P256Ed25519Aes256gcmSha256
        );
    }
}
