//! Client authentication: with an allow-list, only listed keys are served.

use enclave_proto::IdentityKey;
use enclave_proto::v1::Suite;
use serde_json::json;
use tonic::Code;

use crate::support::*;

#[tokio::test]
async fn only_allowed_client_keys_are_served() {
    let allowed = IdentityKey::generate().unwrap();
    let stranger = IdentityKey::generate().unwrap();
    let broker = Broker::start(&["--allow-client", &allowed.fingerprint().to_string()]);
    let suite = Suite::X25519Ed25519Aes256gcmSha256;

    let mut raw = Raw::connect_as(&broker, suite, Some(&allowed))
        .await
        .expect("allowed key is served");
    assert_eq!(
        value(&raw.execute("return 'in'").await.unwrap()),
        json!("in")
    );

    let err = Raw::connect_as(&broker, suite, Some(&stranger))
        .await
        .err()
        .expect("stranger refused");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("not allowed"), "{err:?}");

    // Skipping authentication does not help: no request is opened without it.
    let mut anonymous = Raw::connect(&broker, suite).await;
    let err = anonymous.execute("return 1").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("requires client authentication"),
        "{err:?}"
    );
}
