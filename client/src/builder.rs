//! Configuration of a [`Client`]: where the broker is, which key it must prove, who this
//! client is.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use enclave_proto::keys::SIGNATURE_LEN;
use enclave_proto::v1::{SecurityLevel, Suite};
use enclave_proto::{ClientConfig, Fingerprint, IdentityKey, PublicIdentity, RekeyPolicy};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::client::Client;
use crate::connection::{Connection, Settings};
use crate::error::{BoxError, ClientError};
use crate::identity::{ClientIdentity, FnSigner, Signer};
use crate::rekey;

/// Where the CLI and examples look when nothing is configured.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7700";
/// Long enough for a broker across a continent, short enough that a wrong address
/// fails while the user is still looking.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Records and results go up to the protocol's 16 MiB plaintext cap; the broker allows
/// 20 MiB messages. A little more here, so the broker's limit is the one that speaks.
pub const MAX_MESSAGE_BYTES: usize = 32 << 20;
/// Default deadline of every call: a unary call's whole answer, a stream's last event.
/// Past the longest job limit (PERMISSIVE, 60 s) with room for queueing, so it only
/// ends calls to a broker that stopped answering.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// HTTP/2 receive window of each call: what a stream nobody reads may hold.
const STREAM_WINDOW: u32 = 2 << 20;
/// HTTP/2 receive window of the whole connection: the largest there is, so that the
/// streams a caller leaves unread (each holding its own window) can never take the
/// window every other call on the client needs. With hyper's 5 MiB default, three
/// unread streams blocked every request of the client.
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;

/// The key-exchange curve (the protocol's suite). Signatures are always Ed25519.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Curve {
    /// Suite 1, the default: fast, constant-time by construction.
    #[default]
    X25519,
    /// Suite 2, the seed's curve (WebCrypto clients speak it).
    P256,
}

impl Curve {
    pub(crate) fn suite(self) -> Suite {
        match self {
            Curve::X25519 => Suite::X25519Ed25519Aes256gcmSha256,
            Curve::P256 => Suite::P256Ed25519Aes256gcmSha256,
        }
    }
}

impl FromStr for Curve {
    type Err = ClientError;

    /// `x25519`, `p256` or `p-256`, any case: how people write them in env files.
    fn from_str(s: &str) -> Result<Self, ClientError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "x25519" => Ok(Curve::X25519),
            "p256" | "p-256" | "secp256r1" => Ok(Curve::P256),
            other => Err(ClientError::Config(format!(
                "unknown curve {other:?} (expected x25519 or p256)"
            ))),
        }
    }
}

impl fmt::Display for Curve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Curve::X25519 => "x25519",
            Curve::P256 => "p256",
        })
    }
}

/// Builds a [`Client`]. The broker pin is mandatory: docs/PROTOCOL.md section 3 and the
/// broker's start-up line (`enclave-broker ... fingerprint sha256:...`) give it.
#[must_use]
pub struct ClientBuilder {
    server: String,
    pin: Option<Fingerprint>,
    curve: Curve,
    identity: Option<ClientIdentity>,
    identity_file: Option<PathBuf>,
    level: SecurityLevel,
    rekey: RekeyPolicy,
    ca_file: Option<PathBuf>,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
}

impl ClientBuilder {
    /// `server` is `http://host:port`, or `https://host:port` together with
    /// [`ClientBuilder::ca_file`].
    pub fn new(server: impl Into<String>) -> Self {
        ClientBuilder {
            server: server.into(),
            pin: None,
            curve: Curve::default(),
            identity: None,
            identity_file: None,
            level: SecurityLevel::Unspecified,
            rekey: RekeyPolicy::default(),
            ca_file: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
        }
    }

    /// The broker key's fingerprint. Any other key is refused with
    /// [`ClientError::PinMismatch`].
    pub fn pin(mut self, fingerprint: Fingerprint) -> Self {
        self.pin = Some(fingerprint);
        self
    }

    pub fn curve(mut self, curve: Curve) -> Self {
        self.curve = curve;
        self
    }

    /// Authenticate with this key (ClientAuth) on every handshake.
    pub fn identity(mut self, key: IdentityKey) -> Self {
        self.identity = Some(ClientIdentity::Key(Arc::new(key)));
        self.identity_file = None;
        self
    }

    /// Like [`ClientBuilder::identity`], read from a PEM file (`enclave keygen`) when
    /// connecting. The file must not be readable by group or others.
    pub fn identity_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.identity_file = Some(path.into());
        self.identity = None;
        self
    }

    /// Authenticate with a key held elsewhere: the seed's `keyProvider`.
    pub fn signer(mut self, signer: impl Signer) -> Self {
        self.identity = Some(ClientIdentity::Signer(Arc::new(signer)));
        self.identity_file = None;
        self
    }

    /// [`ClientBuilder::signer`] from a public key and a closure that signs the bytes it
    /// is given (pure Ed25519).
    pub fn signer_fn<F, Fut>(self, public: PublicIdentity, sign: F) -> Self
    where
        F: Fn(Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<[u8; SIGNATURE_LEN], BoxError>> + Send + 'static,
    {
        self.signer(FnSigner { public, sign })
    }

    /// Security level for jobs that do not name one (the broker's default is
    /// STANDARD).
    pub fn level(mut self, level: SecurityLevel) -> Self {
        self.level = level;
        self
    }

    /// When the client asks for new keys (`Rekey` RPC). Default: the protocol's
    /// defaults (2^24 records, 64 GiB, 10 minutes).
    pub fn rekey_policy(mut self, policy: RekeyPolicy) -> Self {
        self.rekey = policy;
        self
    }

    /// Trust this PEM CA bundle for an `https://` server. TLS protects the hop; the
    /// pinned session keys still protect the content end to end.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Bounds opening the connection and each handshake (one or two round trips), so
    /// an unresponsive broker fails fast instead of hanging the first request.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Deadline for every call: a unary call's whole answer, a stream's last event;
    /// past it the call fails with DEADLINE_EXCEEDED (a stream, then, with
    /// [`ClientError::StreamTruncated`]) and is cancelled. Default
    /// [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// No deadline on calls: jobs still end at their own time limits, but a broker that
    /// stops answering holds the call for as long as the connection lives.
    pub fn no_request_timeout(mut self) -> Self {
        self.request_timeout = None;
        self
    }

    /// Opens the connection and runs the handshake (and ClientAuth when an identity is
    /// configured or the broker requires one).
    pub async fn connect(self) -> Result<Client, ClientError> {
        let plaintext = self.server.starts_with("http://");
        let (endpoint, settings) = self.into_parts()?;
        let channel = endpoint.connect().await?;
        let client = Client::from_connection(Connection::new(channel, settings));
        client.connect().await.map_err(|e| match e {
            ClientError::Status { code, message }
                if plaintext && looks_like_tls(code, &message) =>
            {
                ClientError::Status {
                    code,
                    message: format!(
                        "{message} (the server does not speak plaintext HTTP/2: if it serves TLS, use https:// and a CA file)"
                    ),
                }
            }
            e => e,
        })?;
        Ok(client)
    }

    /// Everything that can be checked without the network.
    fn into_parts(self) -> Result<(Endpoint, Settings), ClientError> {
        let pin = self.pin.ok_or_else(|| {
            ClientError::Config(
                "no broker pin: pass the broker's fingerprint (sha256:..., printed by \
                 enclave-broker at start-up and by `enclave-broker keygen`)"
                    .into(),
            )
        })?;
        let identity = match (self.identity, self.identity_file) {
            (Some(identity), _) => Some(identity),
            (None, Some(path)) => Some(ClientIdentity::Key(Arc::new(
                IdentityKey::load(&path).map_err(|e| ClientError::Config(e.to_string()))?,
            ))),
            (None, None) => None,
        };
        let endpoint = endpoint(&self.server, self.ca_file, self.connect_timeout)?;
        let mut handshake = ClientConfig::new(pin);
        handshake.suite = self.curve.suite();
        handshake.rekey = rekey::channel_policy(&self.rekey);
        Ok((
            endpoint,
            Settings {
                handshake,
                rekey: self.rekey,
                identity,
                level: self.level,
                handshake_timeout: self.connect_timeout,
                request_timeout: self.request_timeout,
            },
        ))
    }
}

/// What a TLS listener looks like to a plaintext HTTP/2 client's first call: it reads
/// the TLS alert it gets back as a broken frame, or sees the connection drop (which
/// side notices first varies). A broker answering the handshake never says these.
fn looks_like_tls(code: tonic::Code, message: &str) -> bool {
    match code {
        tonic::Code::Internal => message.contains("h2 protocol error"),
        tonic::Code::Cancelled | tonic::Code::Unknown => true,
        _ => false,
    }
}

fn endpoint(
    server: &str,
    ca_file: Option<PathBuf>,
    connect_timeout: Duration,
) -> Result<Endpoint, ClientError> {
    let mut endpoint = Endpoint::from_shared(server.to_owned())
        .map_err(|e| ClientError::Config(format!("invalid server URL {server:?}: {e}")))?
        .connect_timeout(connect_timeout)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .tcp_nodelay(true);
    let scheme = endpoint.uri().scheme_str().unwrap_or_default().to_owned();
    match (scheme.as_str(), ca_file) {
        ("http", None) => {}
        ("https", Some(path)) => {
            let pem = std::fs::read(&path).map_err(|e| {
                ClientError::Config(format!("cannot read CA file {}: {e}", path.display()))
            })?;
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            endpoint = endpoint.tls_config(tls)?;
        }
        // No system roots are compiled in: a broker's TLS certificate comes from the
        // operator's own CA, and the content is end-to-end sealed either way.
        ("https", None) => {
            return Err(ClientError::Config(format!(
                "{server}: https needs a CA file (ENCLAVE_CA_FILE / ClientBuilder::ca_file)"
            )));
        }
        ("http", Some(_)) => {
            return Err(ClientError::Config(format!(
                "{server}: a CA file only applies to https:// servers"
            )));
        }
        _ => {
            return Err(ClientError::Config(format!(
                "invalid server URL {server:?}: expected http://host:port or https://host:port"
            )));
        }
    }
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin() -> Fingerprint {
        Fingerprint::from_bytes([7; 32])
    }

    #[test]
    fn curves_parse_as_people_write_them() {
        for (text, curve) in [
            ("x25519", Curve::X25519),
            ("X25519", Curve::X25519),
            ("p256", Curve::P256),
            ("P-256", Curve::P256),
            (" p-256 ", Curve::P256),
        ] {
            assert_eq!(text.parse::<Curve>().unwrap(), curve, "{text}");
        }
        assert!("ed25519".parse::<Curve>().is_err());
        assert_eq!(Curve::P256.suite(), Suite::P256Ed25519Aes256gcmSha256);
        assert_eq!(Curve::default().to_string(), "x25519");
    }

    #[test]
    fn a_pin_is_required() {
        let err = ClientBuilder::new(DEFAULT_SERVER)
            .into_parts()
            .err()
            .unwrap();
        assert!(
            matches!(err, ClientError::Config(ref m) if m.contains("pin")),
            "{err}"
        );
    }

    #[test]
    fn urls_and_tls_options_are_checked_before_connecting() {
        let ok = ClientBuilder::new("http://127.0.0.1:1")
            .pin(pin())
            .into_parts();
        let (endpoint, settings) = ok.unwrap();
        assert_eq!(endpoint.uri().port_u16(), Some(1));
        assert_eq!(
            settings.handshake.suite,
            Suite::X25519Ed25519Aes256gcmSha256
        );
        // The channel's own rotation is off: the client's clock drives the Rekey RPC.
        assert_eq!(settings.handshake.rekey.max_records, u64::MAX);

        for (url, ca, needle) in [
            ("not a url", None, "invalid server URL"),
            ("ftp://host:1", None, "expected http"),
            ("https://host:1", None, "CA file"),
            (
                "http://host:1",
                Some("/nonexistent/ca.pem"),
                "only applies to https",
            ),
            (
                "https://host:1",
                Some("/nonexistent/ca.pem"),
                "cannot read CA file",
            ),
        ] {
            let mut b = ClientBuilder::new(url).pin(pin());
            if let Some(ca) = ca {
                b = b.ca_file(ca);
            }
            let err = b.into_parts().err().unwrap();
            assert!(err.to_string().contains(needle), "{url}: {err}");
        }
    }

    #[test]
    fn a_missing_identity_file_is_a_config_error() {
        let err = ClientBuilder::new(DEFAULT_SERVER)
            .pin(pin())
            .identity_file("/nonexistent/client.key")
            .into_parts()
            .err()
            .unwrap();
        assert!(
            matches!(err, ClientError::Config(ref m) if m.contains("client.key")),
            "{err}"
        );
    }
}
