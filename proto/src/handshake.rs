//! The handshake: SIGMA-I as TLS 1.3 instantiates it (RFC 8446 sections 4.4 and 7.1).
//!
//! - Fresh ephemeral ECDH shares on both sides give forward secrecy.
//! - The broker signs the transcript hash with its long-term Ed25519 key
//!   (CertificateVerify) and MACs it with a key only the ECDH parties know (Finished);
//!   the client pins the broker key's fingerprint, so a man in the middle has neither.
//! - Version and suite are the first bytes of the transcript: changing either changes
//!   every hash the signature and the keys depend on, so a downgrade cannot go unnoticed.
//! - A client that authenticates signs the whole transcript with its own key and adds
//!   its own Finished MAC, in a second round trip (ClientAuth). The MAC is what stops
//!   identity misbinding: another key holder could sign the public transcript, but only
//!   the party holding the ephemeral secret can compute the MAC.
//!
//! The transcript is SHA-256 over a byte string defined here (not over protobuf
//! encodings, which are not canonical): see `encode_*` and docs/PROTOCOL.md.

use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::ecdh::{EphemeralSecret, suite_from_wire};
use crate::error::{Error, Party, Result};
use crate::key_schedule::{self, Secret};
use crate::keys::{Fingerprint, IdentityKey, KEY_LEN, PublicIdentity, SIGNATURE_LEN};
use crate::seal::{ClientChannel, OpenedRequest, RekeyPolicy, ServerChannel, SessionId};
use crate::v1::{self, Suite};

/// The only version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Signed before the transcript hash, as TLS 1.3 prefixes CertificateVerify input, so a
/// signature made here can never be valid in another protocol or for the other role.
pub const SERVER_SIGNATURE_CONTEXT: &[u8] = b"enclave v1 server signature\0";
pub const CLIENT_SIGNATURE_CONTEXT: &[u8] = b"enclave v1 client signature\0";

/// Transcript message tags: each message's encoding starts with its own, so no
/// concatenation of messages can be read as another.
const TAG_CLIENT_HELLO: u8 = 1;
const TAG_SERVER_HELLO: u8 = 2;
const TAG_SERVER_SIGNATURE: u8 = 3;
const TAG_SERVER_FINISHED: u8 = 4;
const TAG_CLIENT_IDENTITY: u8 = 5;
const TAG_CLIENT_SIGNATURE: u8 = 6;

/// ServerHello flag bit: the broker requires client authentication.
const FLAG_CLIENT_AUTH_REQUIRED: u8 = 1;

/// Finished MAC length (HMAC-SHA256).
pub const FINISHED_LEN: usize = 32;

fn put_share(out: &mut Vec<u8>, share: &[u8]) {
    // Shares are 32 or 65 bytes; the length prefix keeps the encoding self-delimiting.
    out.extend_from_slice(&(share.len() as u16).to_be_bytes());
    out.extend_from_slice(share);
}

/// `0x01 || u16 version || u16 suite || u16 len || client_share`
pub(crate) fn encode_client_hello(suite: Suite, client_share: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(7 + client_share.len());
    out.push(TAG_CLIENT_HELLO);
    out.extend_from_slice(&(PROTOCOL_VERSION as u16).to_be_bytes());
    out.extend_from_slice(&(suite as i32 as u16).to_be_bytes());
    put_share(&mut out, client_share);
    out
}

/// `0x02 || u16 version || u16 suite || session_id[16] || u16 len || server_share ||
/// server_identity[32] || u8 flags`
pub(crate) fn encode_server_hello(
    suite: Suite,
    session_id: &SessionId,
    server_share: &[u8],
    server_identity: &[u8; KEY_LEN],
    client_auth_required: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(56 + server_share.len());
    out.push(TAG_SERVER_HELLO);
    out.extend_from_slice(&(PROTOCOL_VERSION as u16).to_be_bytes());
    out.extend_from_slice(&(suite as i32 as u16).to_be_bytes());
    out.extend_from_slice(session_id.as_bytes());
    put_share(&mut out, server_share);
    out.extend_from_slice(server_identity);
    out.push(if client_auth_required {
        FLAG_CLIENT_AUTH_REQUIRED
    } else {
        0
    });
    out
}

fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(tag);
    out.extend_from_slice(body);
    out
}

fn signing_input(context: &[u8], hash: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(context.len() + 32);
    out.extend_from_slice(context);
    out.extend_from_slice(hash);
    out
}

/// The running transcript hash plus the handshake secret: the state both sides walk
/// through in the same order. Its steps are the protocol; the two state machines only
/// add the checks.
#[derive(Clone)]
pub(crate) struct Schedule {
    transcript: Sha256,
    handshake_secret: Secret,
    /// Transcript hash through ServerHello; context of the Finished keys.
    pub(crate) h_sh: [u8; 32],
}

impl Schedule {
    pub(crate) fn new(shared: &[u8; 32], client_hello: &[u8], server_hello: &[u8]) -> Self {
        let mut transcript = Sha256::new();
        transcript.update(client_hello);
        transcript.update(server_hello);
        let h_sh = transcript.clone().finalize().into();
        Schedule {
            transcript,
            handshake_secret: key_schedule::handshake_secret(shared),
            h_sh,
        }
    }

    #[cfg(test)]
    pub(crate) fn handshake_secret(&self) -> &Secret {
        &self.handshake_secret
    }

    fn push(&mut self, bytes: &[u8]) -> [u8; 32] {
        self.transcript.update(bytes);
        self.transcript.clone().finalize().into()
    }

    pub(crate) fn server_signing_input(&self) -> Vec<u8> {
        signing_input(SERVER_SIGNATURE_CONTEXT, &self.h_sh)
    }

    pub(crate) fn finished_key(&self, party: Party) -> Secret {
        let label = match party {
            Party::Server => key_schedule::LABEL_SERVER_FINISHED,
            Party::Client => key_schedule::LABEL_CLIENT_FINISHED,
        };
        key_schedule::expand_secret(&self.handshake_secret, label, &self.h_sh)
    }

    /// Adds the server signature; returns H_SV, the hash the server Finished covers.
    pub(crate) fn push_server_signature(&mut self, signature: &[u8]) -> [u8; 32] {
        self.push(&tagged(TAG_SERVER_SIGNATURE, signature))
    }

    /// Adds the server Finished; returns H_SF, the context of the traffic secrets.
    pub(crate) fn push_server_finished(&mut self, finished: &[u8]) -> [u8; 32] {
        self.push(&tagged(TAG_SERVER_FINISHED, finished))
    }

    /// (client -> broker, broker -> client) epoch-0 traffic secrets.
    pub(crate) fn traffic_secrets(&self, h_sf: &[u8; 32]) -> (Secret, Secret) {
        (
            key_schedule::expand_secret(
                &self.handshake_secret,
                key_schedule::LABEL_CLIENT_TRAFFIC,
                h_sf,
            ),
            key_schedule::expand_secret(
                &self.handshake_secret,
                key_schedule::LABEL_SERVER_TRAFFIC,
                h_sf,
            ),
        )
    }

    /// What remains needed for client authentication, once the traffic keys exist.
    pub(crate) fn into_client_auth(self) -> Box<ClientAuthContext> {
        let finished_key = self.finished_key(Party::Client);
        Box::new(ClientAuthContext {
            transcript: self.transcript,
            finished_key,
        })
    }
}

/// The transcript through the server Finished and the client Finished key. Boxed and
/// dropped as soon as client authentication is done or no longer possible.
#[derive(Clone)]
pub(crate) struct ClientAuthContext {
    transcript: Sha256,
    finished_key: Secret,
}

impl ClientAuthContext {
    /// H_CA: the transcript hash through the client identity.
    pub(crate) fn hash_with_identity(&self, client: &[u8; KEY_LEN]) -> (Sha256, [u8; 32]) {
        let mut t = self.transcript.clone();
        t.update(tagged(TAG_CLIENT_IDENTITY, client));
        let h = t.clone().finalize().into();
        (t, h)
    }

    pub(crate) fn signing_input(&self, client: &[u8; KEY_LEN]) -> Vec<u8> {
        signing_input(CLIENT_SIGNATURE_CONTEXT, &self.hash_with_identity(client).1)
    }

    /// H_CV, then the client Finished MAC over it.
    pub(crate) fn finished(&self, client: &[u8; KEY_LEN], signature: &[u8]) -> [u8; 32] {
        let (mut t, _) = self.hash_with_identity(client);
        t.update(tagged(TAG_CLIENT_SIGNATURE, signature));
        let h_cv: [u8; 32] = t.finalize().into();
        key_schedule::hmac_sha256(&self.finished_key, &h_cv)
    }

    fn verify_finished(&self, client: &[u8; KEY_LEN], signature: &[u8], mac: &[u8]) -> bool {
        let (mut t, _) = self.hash_with_identity(client);
        t.update(tagged(TAG_CLIENT_SIGNATURE, signature));
        let h_cv: [u8; 32] = t.finalize().into();
        key_schedule::hmac_sha256_verify(&self.finished_key, &h_cv, mac)
    }

    #[cfg(test)]
    pub(crate) fn h_cv(&self, client: &[u8; KEY_LEN], signature: &[u8]) -> [u8; 32] {
        let (mut t, _) = self.hash_with_identity(client);
        t.update(tagged(TAG_CLIENT_SIGNATURE, signature));
        t.finalize().into()
    }
}

// ---------------------------------------------------------------------------------------
// Broker side.

/// What the broker needs to answer handshakes. Cheap to share: the identity is an Arc.
#[derive(Clone)]
pub struct ServerConfig {
    pub identity: Arc<IdentityKey>,
    /// `Some`: client authentication is required and only these keys are served (an
    /// empty list serves nobody). `None`: anyone may connect; a client that
    /// authenticates anyway is verified and its fingerprint recorded.
    pub allowed_clients: Option<Vec<Fingerprint>>,
    pub rekey: RekeyPolicy,
}

impl ServerConfig {
    pub fn new(identity: Arc<IdentityKey>) -> Self {
        ServerConfig {
            identity,
            allowed_clients: None,
            rekey: RekeyPolicy::default(),
        }
    }

    pub fn client_auth_required(&self) -> bool {
        self.allowed_clients.is_some()
    }
}

enum ServerAuth {
    /// Client authentication may still arrive (before the first request).
    Open(Box<ClientAuthContext>),
    Authenticated(Fingerprint),
    /// The first request was opened without client authentication.
    Closed,
}

/// One session on the broker: the channel, and whether the client has proven its key.
pub struct ServerSession {
    channel: ServerChannel,
    client_auth_required: bool,
    auth: ServerAuth,
}

/// Answers a ClientHello with fresh randomness (OS RNG): the normal entry point.
pub fn accept(
    config: &ServerConfig,
    hello: &v1::ClientHello,
) -> Result<(ServerSession, v1::ServerHello)> {
    let suite = check_client_hello(hello)?;
    let ephemeral = EphemeralSecret::generate(suite)?;
    accept_inner(config, hello, suite, ephemeral, SessionId::generate()?)
}

/// [`accept`] with caller-chosen ephemeral secret and session id, for test vectors.
/// Never use fixed values outside tests: forward secrecy rests on them being fresh.
pub fn accept_with(
    config: &ServerConfig,
    hello: &v1::ClientHello,
    ephemeral_secret: &[u8; 32],
    session_id: SessionId,
) -> Result<(ServerSession, v1::ServerHello)> {
    let suite = check_client_hello(hello)?;
    let ephemeral = EphemeralSecret::from_bytes(suite, ephemeral_secret)?;
    accept_inner(config, hello, suite, ephemeral, session_id)
}

fn check_client_hello(hello: &v1::ClientHello) -> Result<Suite> {
    if hello.version != PROTOCOL_VERSION {
        return Err(Error::UnsupportedVersion(hello.version));
    }
    suite_from_wire(hello.suite)
}

fn accept_inner(
    config: &ServerConfig,
    hello: &v1::ClientHello,
    suite: Suite,
    ephemeral: EphemeralSecret,
    session_id: SessionId,
) -> Result<(ServerSession, v1::ServerHello)> {
    let shared = ephemeral.diffie_hellman(&hello.client_share)?;
    let server_share = ephemeral.public_share();
    drop(ephemeral);
    let identity = config.identity.public().to_bytes();
    let required = config.client_auth_required();

    let ch = encode_client_hello(suite, &hello.client_share);
    let sh = encode_server_hello(suite, &session_id, &server_share, &identity, required);
    let mut schedule = Schedule::new(&shared, &ch, &sh);
    drop(shared);
    let signature = config.identity.sign(&schedule.server_signing_input());
    let h_sv = schedule.push_server_signature(&signature);
    let finished = key_schedule::hmac_sha256(&schedule.finished_key(Party::Server), &h_sv);
    let h_sf = schedule.push_server_finished(&finished);
    let (client_secret, server_secret) = schedule.traffic_secrets(&h_sf);

    let session = ServerSession {
        channel: ServerChannel::new(
            session_id,
            client_secret,
            server_secret,
            config.rekey.clone(),
        ),
        client_auth_required: required,
        auth: ServerAuth::Open(schedule.into_client_auth()),
    };
    let reply = v1::ServerHello {
        version: PROTOCOL_VERSION,
        suite: suite as i32,
        session_id: session_id.as_bytes().to_vec(),
        server_share,
        server_identity: identity.to_vec(),
        client_auth_required: required,
        signature: signature.to_vec(),
        finished: finished.to_vec(),
    };
    Ok((session, reply))
}

impl ServerSession {
    pub fn session_id(&self) -> SessionId {
        self.channel.session_id()
    }

    pub fn client_auth_required(&self) -> bool {
        self.client_auth_required
    }

    /// The authenticated client's key fingerprint, if it authenticated.
    pub fn client_fingerprint(&self) -> Option<Fingerprint> {
        match &self.auth {
            ServerAuth::Authenticated(f) => Some(*f),
            _ => None,
        }
    }

    /// Verifies a ClientAuth. A failed attempt leaves the session waiting, so a forged
    /// ClientAuth from someone who saw the session id cannot lock the real client out.
    pub fn verify_client_auth(
        &mut self,
        config: &ServerConfig,
        auth: &v1::ClientAuth,
    ) -> Result<Fingerprint> {
        if auth.session_id.as_slice() != self.session_id().as_bytes() {
            return Err(Error::WrongSession);
        }
        let ServerAuth::Open(context) = &self.auth else {
            return Err(Error::ClientAuthUnexpected);
        };
        let client: &[u8; KEY_LEN] = auth
            .client_identity
            .as_slice()
            .try_into()
            .map_err(|_| Error::Malformed("client identity (must be 32 bytes)"))?;
        let public =
            PublicIdentity::from_bytes(client).map_err(|_| Error::Malformed("client identity"))?;
        let fingerprint = public.fingerprint();
        if let Some(allowed) = &config.allowed_clients {
            // Constant-time per entry (Fingerprint's PartialEq); the list is not secret.
            if !allowed.contains(&fingerprint) {
                return Err(Error::UnknownClientKey(fingerprint));
            }
        }
        if auth.signature.len() != SIGNATURE_LEN
            || !public.verify(&context.signing_input(client), &auth.signature)
        {
            return Err(Error::BadSignature(Party::Client));
        }
        if !context.verify_finished(client, &auth.signature, &auth.finished) {
            return Err(Error::BadFinished(Party::Client));
        }
        self.auth = ServerAuth::Authenticated(fingerprint);
        Ok(fingerprint)
    }

    /// Opens a request (see [`ServerChannel::open_request`]), refused while a required
    /// client authentication is missing. The first request opened also ends the chance
    /// to authenticate later, so the identity behind a session never changes mid-way;
    /// a record that fails to open does not, or anyone who saw the session id could
    /// shut the real client out of authenticating.
    pub fn open_request(
        &mut self,
        record: &v1::SealedRecord,
        expected: v1::RecordKind,
    ) -> Result<OpenedRequest> {
        self.open_request_at(Instant::now(), record, expected)
    }

    pub(crate) fn open_request_at(
        &mut self,
        now: Instant,
        record: &v1::SealedRecord,
        expected: v1::RecordKind,
    ) -> Result<OpenedRequest> {
        if self.client_auth_required && !matches!(self.auth, ServerAuth::Authenticated(_)) {
            return Err(Error::ClientAuthRequired);
        }
        let opened = self.channel.open_request_at(now, record, expected)?;
        if matches!(self.auth, ServerAuth::Open(_)) {
            self.auth = ServerAuth::Closed;
        }
        Ok(opened)
    }

    /// The sending side and key management: seal replies to opened requests, rotate
    /// keys, drop expired ones.
    pub fn channel(&mut self) -> &mut ServerChannel {
        &mut self.channel
    }
}

// ---------------------------------------------------------------------------------------
// Client side.

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub suite: Suite,
    /// The broker key's fingerprint; any other key is refused.
    pub server_pin: Fingerprint,
    pub rekey: RekeyPolicy,
}

impl ClientConfig {
    /// X25519, the default suite.
    pub fn new(server_pin: Fingerprint) -> Self {
        ClientConfig {
            suite: Suite::X25519Ed25519Aes256gcmSha256,
            server_pin,
            rekey: RekeyPolicy::default(),
        }
    }
}

/// A client between ClientHello and ServerHello. Holds the ephemeral secret, wiped
/// when this is finished or dropped.
pub struct ClientHandshake {
    config: ClientConfig,
    ephemeral: EphemeralSecret,
    client_hello: Vec<u8>,
}

impl ClientHandshake {
    /// Starts a handshake with a fresh ephemeral key (OS RNG).
    pub fn start(config: &ClientConfig) -> Result<(Self, v1::ClientHello)> {
        let suite = suite_from_wire(config.suite as i32)?;
        Self::start_inner(config, EphemeralSecret::generate(suite)?)
    }

    /// [`ClientHandshake::start`] with a caller-chosen ephemeral secret, for test
    /// vectors only.
    pub fn start_with(
        config: &ClientConfig,
        ephemeral_secret: &[u8; 32],
    ) -> Result<(Self, v1::ClientHello)> {
        let suite = suite_from_wire(config.suite as i32)?;
        Self::start_inner(
            config,
            EphemeralSecret::from_bytes(suite, ephemeral_secret)?,
        )
    }

    fn start_inner(
        config: &ClientConfig,
        ephemeral: EphemeralSecret,
    ) -> Result<(Self, v1::ClientHello)> {
        let share = ephemeral.public_share();
        let hello = v1::ClientHello {
            version: PROTOCOL_VERSION,
            suite: config.suite as i32,
            client_share: share.clone(),
        };
        let state = ClientHandshake {
            config: config.clone(),
            client_hello: encode_client_hello(config.suite, &share),
            ephemeral,
        };
        Ok((state, hello))
    }

    /// Checks the ServerHello (version and suite echoed, pinned key, signature,
    /// Finished) and derives the session keys.
    pub fn finish(self, hello: &v1::ServerHello) -> Result<ClientSession> {
        let suite = self.config.suite;
        if hello.version != PROTOCOL_VERSION || hello.suite != suite as i32 {
            return Err(Error::Downgrade {
                version: hello.version,
                suite: hello.suite,
            });
        }
        let session_id = SessionId::from_slice(&hello.session_id)?;
        let identity: &[u8; KEY_LEN] = hello
            .server_identity
            .as_slice()
            .try_into()
            .map_err(|_| Error::Malformed("server identity (must be 32 bytes)"))?;
        // The pin first: nothing from an unpinned key is worth any further work.
        let actual = Fingerprint::of(identity);
        if actual != self.config.server_pin {
            return Err(Error::PinMismatch {
                pinned: self.config.server_pin,
                actual,
            });
        }
        let server = PublicIdentity::from_bytes(identity)
            .map_err(|_| Error::Malformed("server identity"))?;
        if hello.signature.len() != SIGNATURE_LEN {
            return Err(Error::BadSignature(Party::Server));
        }
        if hello.finished.len() != FINISHED_LEN {
            return Err(Error::BadFinished(Party::Server));
        }
        let shared = self.ephemeral.diffie_hellman(&hello.server_share)?;
        let sh = encode_server_hello(
            suite,
            &session_id,
            &hello.server_share,
            identity,
            hello.client_auth_required,
        );
        let mut schedule = Schedule::new(&shared, &self.client_hello, &sh);
        drop(shared);
        if !server.verify(&schedule.server_signing_input(), &hello.signature) {
            return Err(Error::BadSignature(Party::Server));
        }
        let h_sv = schedule.push_server_signature(&hello.signature);
        if !key_schedule::hmac_sha256_verify(
            &schedule.finished_key(Party::Server),
            &h_sv,
            &hello.finished,
        ) {
            return Err(Error::BadFinished(Party::Server));
        }
        let h_sf = schedule.push_server_finished(&hello.finished);
        let (client_secret, server_secret) = schedule.traffic_secrets(&h_sf);
        Ok(ClientSession {
            channel: ClientChannel::new(
                session_id,
                client_secret,
                server_secret,
                self.config.rekey.clone(),
            ),
            server_fingerprint: actual,
            client_auth_required: hello.client_auth_required,
            auth: Some(schedule.into_client_auth()),
        })
    }
}

/// An established client session. If the broker requires it (or the client wants to
/// be known), send [`ClientSession::authenticate`]'s message before any request.
pub struct ClientSession {
    channel: ClientChannel,
    server_fingerprint: Fingerprint,
    client_auth_required: bool,
    auth: Option<Box<ClientAuthContext>>,
}

impl ClientSession {
    pub fn session_id(&self) -> SessionId {
        self.channel.session_id()
    }

    pub fn server_fingerprint(&self) -> Fingerprint {
        self.server_fingerprint
    }

    pub fn client_auth_required(&self) -> bool {
        self.client_auth_required
    }

    pub fn channel(&mut self) -> &mut ClientChannel {
        &mut self.channel
    }

    pub fn into_channel(self) -> ClientChannel {
        self.channel
    }

    /// The ClientAuth message, signed with a local key.
    pub fn authenticate(&mut self, key: &IdentityKey) -> Result<v1::ClientAuth> {
        let public = key.public();
        let input = self.client_auth_signing_input(&public)?;
        let signature = key.sign(&input);
        self.authenticate_with_signature(&public, &signature)
    }

    /// The bytes a client key must sign (Ed25519, no prehash), for keys held
    /// elsewhere (the seed's `keyProvider.sign`, an HSM, an agent).
    pub fn client_auth_signing_input(&self, client: &PublicIdentity) -> Result<Vec<u8>> {
        let context = self.auth.as_ref().ok_or(Error::ClientAuthUnexpected)?;
        Ok(context.signing_input(&client.to_bytes()))
    }

    /// The ClientAuth message around a signature made over
    /// [`ClientSession::client_auth_signing_input`]. Usable once.
    pub fn authenticate_with_signature(
        &mut self,
        client: &PublicIdentity,
        signature: &[u8; SIGNATURE_LEN],
    ) -> Result<v1::ClientAuth> {
        let context = self.auth.take().ok_or(Error::ClientAuthUnexpected)?;
        let identity = client.to_bytes();
        let finished = context.finished(&identity, signature);
        Ok(v1::ClientAuth {
            session_id: self.session_id().as_bytes().to_vec(),
            client_identity: identity.to_vec(),
            signature: signature.to_vec(),
            finished: finished.to_vec(),
        })
    }
}
