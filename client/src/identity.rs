//! Client identities: a key file, or a signer whose key lives elsewhere (the seed's
//! `keyProvider { getPublicKey, sign }`: an HSM, an agent, a cloud KMS).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use enclave_proto::keys::SIGNATURE_LEN;
use enclave_proto::v1;
use enclave_proto::{ClientSession, IdentityKey, PublicIdentity};

use crate::error::{BoxError, ClientError};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A client key held outside this process.
///
/// `sign` must produce a pure Ed25519 signature (RFC 8032, no prehash, no context) over
/// exactly the bytes given: docs/PROTOCOL.md section 6.4's `client_signing_input`. Both
/// methods are async because the seed's `keyProvider` is, and because a remote signer
/// must not block the runtime.
pub trait Signer: Send + Sync + 'static {
    fn public_key(&self) -> BoxFuture<'_, Result<PublicIdentity, BoxError>>;
    fn sign<'a>(
        &'a self,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<[u8; SIGNATURE_LEN], BoxError>>;
}

/// [`Signer`] from a known public key and a signing closure, for
/// [`crate::ClientBuilder::signer_fn`].
pub(crate) struct FnSigner<F> {
    pub(crate) public: PublicIdentity,
    pub(crate) sign: F,
}

impl<F, Fut> Signer for FnSigner<F>
where
    F: Fn(Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<[u8; SIGNATURE_LEN], BoxError>> + Send + 'static,
{
    fn public_key(&self) -> BoxFuture<'_, Result<PublicIdentity, BoxError>> {
        let public = self.public;
        Box::pin(async move { Ok(public) })
    }

    fn sign<'a>(
        &'a self,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<[u8; SIGNATURE_LEN], BoxError>> {
        Box::pin((self.sign)(message.to_vec()))
    }
}

/// Who the client says it is, if anyone.
#[derive(Clone)]
pub(crate) enum ClientIdentity {
    Key(Arc<IdentityKey>),
    Signer(Arc<dyn Signer>),
}

impl ClientIdentity {
    /// The ClientAuth message for this handshake.
    pub(crate) async fn client_auth(
        &self,
        session: &mut ClientSession,
    ) -> Result<v1::ClientAuth, ClientError> {
        match self {
            ClientIdentity::Key(key) => Ok(session.authenticate(key)?),
            ClientIdentity::Signer(signer) => {
                let public = signer.public_key().await.map_err(ClientError::Signer)?;
                let input = session.client_auth_signing_input(&public)?;
                let signature = signer.sign(&input).await.map_err(ClientError::Signer)?;
                // Checked here so that a misconfigured signer (wrong key, prehashing) is
                // reported as such, not as the broker's bare "bad signature".
                if !public.verify(&input, &signature) {
                    return Err(ClientError::Signer(
                        format!(
                            "the signature does not verify with the signer's public key {}",
                            public.fingerprint()
                        )
                        .into(),
                    ));
                }
                Ok(session.authenticate_with_signature(&public, &signature)?)
            }
        }
    }
}
