use std::sync::Arc;

use enclave_client::{Client, ClientError, Curve, Fingerprint, IdentityKey};
use serde_json::json;
use tonic::Code;

use crate::support::{Broker, client_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_refuses_to_connect() {
    let broker = Broker::start("pin");
    let wrong = Fingerprint::from_bytes([0x42; 32]);
    let err = Client::builder(broker.url())
        .pin(wrong)
        .connect()
        .await
        .unwrap_err();
    match &err {
        ClientError::PinMismatch { pinned, actual } => {
            assert_eq!(*pinned, wrong);
            assert_eq!(*actual, broker.fingerprint);
        }
        other => panic!("expected PinMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("refusing to connect"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_curves_work() {
    let broker = Broker::start("curves");
    for curve in [Curve::X25519, Curve::P256] {
        let client = broker.builder().curve(curve).connect().await.unwrap();
        let run = client.execute("return 'hello from ' + 'p' ").await.unwrap();
        assert_eq!(run.result, Ok(json!("hello from p")), "{curve}");
        let info = client.session().unwrap();
        assert_eq!(info.server, broker.fingerprint);
        assert_eq!(info.client, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_authentication_with_a_key_file_or_a_signer() {
    let keys = crate::support::TempDir::new("client-keys");
    let (allowed_path, allowed) = client_key(keys.path(), "allowed.key");
    let (other_path, _) = client_key(keys.path(), "other.key");
    let signer_key = Arc::new(IdentityKey::generate().unwrap());
    let allow = format!("{allowed},{}", signer_key.fingerprint());
    let broker = Broker::start_with("client-auth", &["--allow-client", &allow]);

    // A key file on the allow-list.
    let client = broker
        .builder()
        .identity_file(&allowed_path)
        .connect()
        .await
        .unwrap();
    assert_eq!(client.session().unwrap().client, Some(allowed));
    assert_eq!(
        client.execute("return 1").await.unwrap().result,
        Ok(json!(1))
    );

    // An external signer (the seed's keyProvider), over P-256 for good measure.
    let key = signer_key.clone();
    let client = broker
        .builder()
        .curve(Curve::P256)
        .signer_fn(signer_key.public(), move |message| {
            let key = key.clone();
            async move { Ok(key.sign(&message)) }
        })
        .connect()
        .await
        .unwrap();
    assert_eq!(
        client.session().unwrap().client,
        Some(signer_key.fingerprint())
    );
    assert_eq!(
        client.execute("return 2").await.unwrap().result,
        Ok(json!(2))
    );

    // No identity: a typed configuration error, not a status.
    let err = broker.builder().connect().await.unwrap_err();
    assert!(matches!(err, ClientError::ClientAuthRequired), "{err:?}");

    // A key the broker does not know.
    let err = broker
        .builder()
        .identity_file(&other_path)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated), "{err:?}");

    // A signer that signs with the wrong key is caught before the broker sees it.
    let wrong = Arc::new(IdentityKey::generate().unwrap());
    let err = broker
        .builder()
        .signer_fn(signer_key.public(), move |message| {
            let wrong = wrong.clone();
            async move { Ok(wrong.sign(&message)) }
        })
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Signer(_)), "{err:?}");
}
