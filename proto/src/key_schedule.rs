//! The TLS 1.3 key schedule (RFC 8446 section 7.1) cut down to what protocol v1 needs:
//! no PSK and no encrypted handshake, so one HKDF-Extract over the ECDH output, then
//! HKDF-Expand-Label for the Finished keys, the first traffic secrets, each epoch's key
//! and IV, and each key update.

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Prepended to every HKDF-Expand-Label label, as TLS 1.3 prepends "tls13 ": keys of
/// this protocol can never coincide with keys TLS derives from the same secret.
pub const LABEL_PREFIX: &[u8] = b"enclave1 ";

pub const LABEL_SERVER_FINISHED: &str = "s finished";
pub const LABEL_CLIENT_FINISHED: &str = "c finished";
pub const LABEL_CLIENT_TRAFFIC: &str = "c ap traffic";
pub const LABEL_SERVER_TRAFFIC: &str = "s ap traffic";
pub const LABEL_KEY: &str = "key";
pub const LABEL_IV: &str = "iv";
pub const LABEL_UPDATE: &str = "traffic upd";

/// AES-256-GCM key length.
pub const KEY_LEN: usize = 32;
/// AES-GCM nonce (and per-epoch IV) length.
pub const IV_LEN: usize = 12;

/// A 32-byte secret that is wiped on drop.
pub(crate) type Secret = Zeroizing<[u8; 32]>;

/// HKDF-Extract(salt = 32 zero bytes, IKM = ECDH output). The zero salt is RFC 5869's
/// default and what TLS 1.3 ends up with when there is no PSK.
pub(crate) fn handshake_secret(shared: &[u8; 32]) -> Secret {
    let (prk, _) = Hkdf::<Sha256>::extract(Some(&[0u8; 32]), shared);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&prk);
    out
}

/// The serialized `HkdfLabel` struct of RFC 8446 section 7.1:
/// u16 length || u8 len || LABEL_PREFIX || label || u8 len || context.
pub(crate) fn hkdf_label(label: &str, context: &[u8], length: u16) -> Vec<u8> {
    let full_len = LABEL_PREFIX.len() + label.len();
    debug_assert!(full_len <= 255 && context.len() <= 255);
    let mut info = Vec::with_capacity(4 + full_len + context.len());
    info.extend_from_slice(&length.to_be_bytes());
    info.push(full_len as u8);
    info.extend_from_slice(LABEL_PREFIX);
    info.extend_from_slice(label.as_bytes());
    info.push(context.len() as u8);
    info.extend_from_slice(context);
    info
}

/// HKDF-Expand-Label(secret, label, context, out.len()).
pub(crate) fn expand_label(secret: &[u8; 32], label: &str, context: &[u8], out: &mut [u8]) {
    let info = hkdf_label(label, context, out.len() as u16);
    // A 32-byte PRK is always accepted and outputs here are at most 32 bytes, far
    // below HKDF's 255 * 32 limit: neither error can happen.
    if let Ok(hk) = Hkdf::<Sha256>::from_prk(secret) {
        let _ = hk.expand(&info, out);
    }
}

pub(crate) fn expand_secret(secret: &[u8; 32], label: &str, context: &[u8]) -> Secret {
    let mut out = Zeroizing::new([0u8; 32]);
    expand_label(secret, label, context, out.as_mut());
    out
}

/// The next epoch's traffic secret (TLS 1.3 KeyUpdate): one-way, so a leaked current
/// secret does not reveal earlier epochs.
pub(crate) fn next_traffic_secret(secret: &[u8; 32]) -> Secret {
    expand_secret(secret, LABEL_UPDATE, b"")
}

/// The AES key and IV of one epoch of one direction.
pub(crate) fn traffic_key_iv(secret: &[u8; 32]) -> (Zeroizing<[u8; KEY_LEN]>, [u8; IV_LEN]) {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    expand_label(secret, LABEL_KEY, b"", key.as_mut());
    let mut iv = [0u8; IV_LEN];
    expand_label(secret, LABEL_IV, b"", &mut iv);
    (key, iv)
}

pub(crate) fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Constant-time check of a Finished MAC.
pub(crate) fn hmac_sha256_verify(key: &[u8; 32], message: &[u8], tag: &[u8]) -> bool {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
        return false;
    };
    mac.update(message);
    mac.verify_slice(tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::hex;

    #[test]
    fn hkdf_label_layout() {
        assert_eq!(
            hex::encode(&hkdf_label("key", b"", 32)),
            // 0020 | 0c "enclave1 key" | 00
            "00200c656e636c61766531206b657900"
        );
        assert_eq!(
            hex::encode(&hkdf_label("iv", &[0xab; 2], 12)),
            "000c0b656e636c6176653120697602abab"
        );
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        // RFC 4231 test case 2 uses the 4-byte key "Jefe"; HMAC zero-pads short keys to
        // the block size, so the 32-byte zero-padded key gives the same MAC.
        let tag = hmac_sha256(&key, b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(&tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(hmac_sha256_verify(
            &key,
            b"what do ya want for nothing?",
            &tag
        ));
        let mut bad = tag;
        bad[31] ^= 1;
        assert!(!hmac_sha256_verify(
            &key,
            b"what do ya want for nothing?",
            &bad
        ));
        assert!(!hmac_sha256_verify(
            &key,
            b"what do ya want for nothing?",
            &tag[..31]
        ));
    }

    #[test]
    fn update_and_key_iv_differ_per_secret() {
        let s0 = Zeroizing::new([7u8; 32]);
        let s1 = next_traffic_secret(&s0);
        assert_ne!(*s0, *s1);
        let (k0, iv0) = traffic_key_iv(&s0);
        let (k1, iv1) = traffic_key_iv(&s1);
        assert_ne!(*k0, *k1);
        assert_ne!(iv0, iv1);
    }
}
