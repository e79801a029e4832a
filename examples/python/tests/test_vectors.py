"""The implementation reproduces proto/testdata/vectors-*.json from their inputs alone.

The broker's half of the handshake is recomputed here from docs/PROTOCOL.md (§5.2, §6.3)
with the same primitives, so every value in the files is checked, not only the client's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave_client import protocol as p
from enclave_client.errors import InvalidShareError, TruncatedStreamError, RecordError
from enclave_client.stubs import load

TESTDATA = Path(__file__).resolve().parents[3] / "proto" / "testdata"
FILES = ["vectors-x25519.json", "vectors-p256.json"]


def h(s: str) -> bytes:
    return bytes.fromhex(s)


@pytest.fixture(params=FILES)
def vec(request):
    return json.loads((TESTDATA / request.param).read_text())


class Replay:
    """Runs one vector session: the client from enclave_client.protocol, the broker from
    the primitives, both from `inputs` alone."""

    def __init__(self, vec):
        inp = vec["inputs"]
        self.vec = vec
        self.suite = p.Suite(vec["suite"])
        self.server_key = Ed25519PrivateKey.from_private_bytes(h(inp["server_identity_seed"]))
        self.client_key = Ed25519PrivateKey.from_private_bytes(h(inp["client_identity_seed"]))
        self.server_identity = p.public_key_bytes(self.server_key)
        self.session_id = h(inp["session_id"])
        self.client_auth_required = inp["client_auth_required"]

        # client: ClientHello
        self.client_hs = p.ClientHandshake(
            p.fingerprint(self.server_identity), self.suite, h(inp["client_ephemeral_secret"])
        )
        # broker: ServerHello (§5.2)
        server_eph = p.Ephemeral(self.suite, h(inp["server_ephemeral_secret"]))
        self.server_share = server_eph.share
        self.server_shared = server_eph.exchange(self.client_hs.client_share)
        self.ch = p.encode_client_hello(1, self.suite, self.client_hs.client_share)
        self.sh = p.encode_server_hello(
            1, self.suite, self.session_id, self.server_share, self.server_identity,
            self.client_auth_required,
        )
        self.h_sh = p.sha256(self.ch + self.sh)
        self.server_signing_input = p.SERVER_SIGNATURE_CONTEXT + self.h_sh
        self.server_signature = self.server_key.sign(self.server_signing_input)
        self.secrets = p.handshake_secrets(self.server_shared, self.h_sh)
        self.h_sv = p.sha256(self.ch + self.sh + p.encode_sv(self.server_signature))
        self.server_finished = p.hmac_sha256(self.secrets.server_finished_key, self.h_sv)
        self.h_sf = p.sha256(
            self.ch + self.sh + p.encode_sv(self.server_signature) + p.encode_sf(self.server_finished)
        )
        self.client_ts, self.server_ts = p.traffic_secrets(self.secrets.handshake_secret, self.h_sf)
        self.server_hello = p.ServerHelloFields(
            version=1,
            suite=int(self.suite),
            session_id=self.session_id,
            server_share=self.server_share,
            server_identity=self.server_identity,
            client_auth_required=self.client_auth_required,
            signature=self.server_signature,
            finished=self.server_finished,
        )
        # client: checks and session (§5.3)
        self.session = self.client_hs.finish(self.server_hello)
        # client authentication (§6.4)
        self.client_identity = p.public_key_bytes(self.client_key)
        self.auth = self.session.authenticate(self.client_key)
        self.h_ca = p.sha256(
            self.ch + self.sh + p.encode_sv(self.server_signature)
            + p.encode_sf(self.server_finished) + p.encode_ca(self.client_identity)
        )
        self.h_cv = p.sha256(
            self.ch + self.sh + p.encode_sv(self.server_signature)
            + p.encode_sf(self.server_finished) + p.encode_ca(self.client_identity)
            + p.encode_cv(self.auth.signature)
        )


def test_handshake_values(vec):
    r = Replay(vec)
    hs = vec["handshake"]
    assert vec["protocol_version"] == p.PROTOCOL_VERSION
    assert r.client_hs.client_share.hex() == hs["client_share"]
    assert r.server_share.hex() == hs["server_share"]
    assert r.server_identity.hex() == hs["server_identity"]
    assert r.client_identity.hex() == hs["client_identity"]
    assert p.fingerprint(r.server_identity) == hs["server_fingerprint"]
    assert p.fingerprint(r.client_identity) == hs["client_fingerprint"]
    assert r.server_shared.hex() == hs["shared_secret"]
    assert r.client_hs.client_hello_encoding().hex() == hs["client_hello_encoding"]
    assert r.sh.hex() == hs["server_hello_encoding"]
    assert r.h_sh.hex() == hs["h_sh"]
    assert r.secrets.handshake_secret.hex() == hs["handshake_secret"]
    assert r.secrets.server_finished_key.hex() == hs["server_finished_key"]
    assert r.secrets.client_finished_key.hex() == hs["client_finished_key"]
    assert r.server_signing_input.hex() == hs["server_signing_input"]
    assert len(r.server_signing_input) == 60
    assert r.server_signature.hex() == hs["server_signature"]
    assert r.h_sv.hex() == hs["h_sv"]
    assert r.server_finished.hex() == hs["server_finished"]
    assert r.h_sf.hex() == hs["h_sf"]
    assert r.client_ts.hex() == hs["client_traffic_secret_0"]
    assert r.server_ts.hex() == hs["server_traffic_secret_0"]
    assert r.h_ca.hex() == hs["h_ca"]
    signing_input = r.session.client_auth_signing_input(r.client_identity)
    assert signing_input.hex() == hs["client_signing_input"]
    assert len(signing_input) == 60
    assert r.auth.signature.hex() == hs["client_signature"]
    assert r.h_cv.hex() == hs["h_cv"]
    assert r.auth.finished.hex() == hs["client_finished"]
    assert r.auth.session_id == r.session_id


def test_client_hello_proto(vec):
    pb = load()
    hs = vec["handshake"]
    req = pb.broker_pb2.HandshakeRequest(
        client_hello=pb.broker_pb2.ClientHello(
            version=1, suite=vec["suite"], client_share=h(hs["client_share"])
        )
    )
    assert req.SerializeToString().hex() == hs["client_hello_proto"]


def test_epoch_keys(vec):
    r = Replay(vec)
    secrets = {"client_to_broker": r.client_ts, "broker_to_client": r.server_ts}
    for e in vec["epochs"]:
        keys = p.EpochKeys.derive(0, secrets[e["direction"]])
        for _ in range(e["epoch"]):
            keys = keys.next()
        assert keys.secret.hex() == e["secret"]
        assert keys.key.hex() == e["key"]
        assert keys.iv.hex() == e["iv"]


def test_records(vec):
    """Client records are sealed by the client session in order; broker records are sealed
    by a broker-side Sender and opened by the client session as the answers it expects."""
    r = Replay(vec)
    broker = p.Sender(r.session_id, p.Direction.BROKER_TO_CLIENT, r.server_ts)
    streams = {}
    for rec in vec["records"]:
        kind = p.Kind(rec["kind"])
        assert kind.name == rec["kind_name"].removeprefix("RECORD_KIND_")
        pt = h(rec["plaintext"])
        if rec["direction"] == "client_to_broker":
            if kind is p.Kind.REKEY_REQUEST:
                sealed = r.session.seal_rekey_request()
            else:
                sealed = r.session.seal_request(kind, pt)
            direction = p.Direction.CLIENT_TO_BROKER
        else:
            if kind is p.Kind.REKEY_RESULT:
                broker.rotate()  # §9.1: the broker rotates before sealing REKEY_RESULT
            sealed = broker.seal(kind, pt, rec["request_seq"], rec["event_index"])
            direction = p.Direction.BROKER_TO_CLIENT
            # the client opens the vector's own record as the answer it expects
            record = p.Record(
                r.session_id, rec["epoch"], rec["seq"], rec["kind"], rec["event_index"],
                h(rec["ciphertext"]),
            )
            if kind in (p.Kind.STREAM_EVENT, p.Kind.STREAM_FINAL):
                opener = streams.setdefault(
                    rec["request_seq"], r.session.stream_opener(rec["request_seq"])
                )
                opened_kind, opened = opener.open(record)
                assert opened_kind is kind
            else:
                opened = r.session.open_reply(rec["request_seq"], kind, record)
            assert opened == pt
        assert sealed.seq == rec["seq"]
        assert sealed.epoch == rec["epoch"]
        assert sealed.event_index == rec["event_index"]
        assert sealed.ciphertext.hex() == rec["ciphertext"]
        keys = (r.session.sender if direction == 1 else broker).keys
        assert keys.epoch == rec["epoch"]
        ad = p.record_ad(
            r.session_id, direction, rec["epoch"], rec["seq"], kind, rec["request_seq"],
            rec["event_index"],
        )
        assert ad.hex() == rec["ad"] and len(ad) == 42
        assert p.record_nonce(keys.iv, rec["seq"]).hex() == rec["nonce"]
    for opener in streams.values():
        opener.finish()  # every stream in the vectors ended with STREAM_FINAL


def test_record_plaintexts_decode(vec):
    """The plaintexts are the protobuf messages §8.1 names."""
    pb = load().broker_pb2
    messages = {
        1: pb.ExecuteRequest, 2: pb.ExecuteResult, 3: pb.ExecuteRequest, 4: pb.StreamEvent,
        5: pb.StreamEvent, 6: pb.CloseSessionRequest, 7: pb.CloseSessionResponse,
        8: pb.RekeyRequest, 9: pb.RekeyResponse, 10: pb.ListToolsRequest,
        11: pb.ListToolsResponse, 12: pb.SubmitToolResult, 13: pb.SubmitToolResultResponse,
    }
    for rec in vec["records"]:
        msg = messages[rec["kind"]].FromString(h(rec["plaintext"]))
        assert msg.SerializeToString().hex() == rec["plaintext"]
        if rec["kind"] in (4, 5):
            final = msg.WhichOneof("event") in ("final", "error")
            assert final == (rec["kind"] == 5)


def test_invalid_peer_shares_are_refused(vec):
    suite = p.Suite(vec["suite"])
    assert vec["invalid_peer_shares"]
    for share in vec["invalid_peer_shares"]:
        with pytest.raises(InvalidShareError):
            p.Ephemeral(suite).exchange(h(share))


def test_tampered_and_misplaced_replies_are_refused(vec):
    r = Replay(vec)
    recs = vec["records"]
    reply = recs[1]  # EXECUTE_RESULT to request seq 0

    def record(rec, **over):
        fields = dict(
            session_id=r.session_id, epoch=rec["epoch"], seq=rec["seq"], kind=rec["kind"],
            event_index=rec["event_index"], ciphertext=h(rec["ciphertext"]),
        )
        fields.update(over)
        return p.Record(**fields)

    bad = bytearray(h(reply["ciphertext"]))
    bad[0] ^= 1
    with pytest.raises(RecordError):
        r.session.open_reply(0, p.Kind.EXECUTE_RESULT, record(reply, ciphertext=bytes(bad)))
    with pytest.raises(RecordError):  # answer to another request
        r.session.open_reply(1, p.Kind.EXECUTE_RESULT, record(reply))
    with pytest.raises(RecordError):  # another seq: another nonce and AD
        r.session.open_reply(0, p.Kind.EXECUTE_RESULT, record(reply, seq=5))
    with pytest.raises(RecordError):  # epoch more than one ahead
        r.session.open_reply(0, p.Kind.EXECUTE_RESULT, record(reply, epoch=2))
    # the failures changed nothing: the genuine reply still opens
    assert r.session.open_reply(0, p.Kind.EXECUTE_RESULT, record(reply)) == h(reply["plaintext"])

    event, final = recs[3], recs[4]
    # a truncated stream: the final record dropped
    opener = r.session.stream_opener(1)
    opener.open(record(event))
    with pytest.raises(TruncatedStreamError):
        opener.finish()
    # the event relabelled as final
    with pytest.raises(RecordError):
        r.session.stream_opener(1).open(record(event, kind=p.Kind.STREAM_FINAL))
    # the first event dropped: the final one arrives at index 0's place
    with pytest.raises(RecordError):
        r.session.stream_opener(1).open(record(final, event_index=0))
    # a record after STREAM_FINAL
    opener = r.session.stream_opener(1)
    opener.open(record(event))
    opener.open(record(final))
    with pytest.raises(RecordError):
        opener.open(record(final))


def test_document_examples():
    # §7: HkdfLabel for ("key", "", 32)
    assert p.hkdf_label(b"key", b"", 32).hex() == "00200c656e636c61766531206b657900"
    # §8.3: the AD of the first request of the X25519 vectors
    ad = p.record_ad(h("366e5652e49f0b55fdbef53d8401c640"), 1, 0, 0, 1, 0, 0)
    assert ad.hex() == (
        "366e5652e49f0b55fdbef53d8401c640" "01" "00000000" "0000000000000000" "01"
        "0000000000000000" "00000000"
    )
    # §3: fingerprints
    fp = "sha256:abb7f16a058a5d546d3645a6fc5c38abb1919cbf18efb4b87467bda2e4b56636"
    assert len(fp) == 71
    assert p.parse_fingerprint("  " + fp.upper().replace("SHA256:", "sha256:") + "\n") == h(fp[7:])
    for bad in ("SHA256:" + fp[7:], fp[7:], fp[:-1], fp + "0", fp[:-1] + "g"):
        with pytest.raises(ValueError):
            p.parse_fingerprint(bad)


def test_pin_and_downgrade_checks(vec):
    from enclave_client.errors import DowngradeError, HandshakeError, PinMismatchError

    r = Replay(vec)
    inp = vec["inputs"]

    def finish(pin=None, **over):
        hs = p.ClientHandshake(
            pin or p.fingerprint(r.server_identity), r.suite, h(inp["client_ephemeral_secret"])
        )
        fields = dict(r.server_hello.__dict__)
        fields.update(over)
        return hs.finish(p.ServerHelloFields(**fields))

    finish()  # the genuine ServerHello is accepted
    with pytest.raises(PinMismatchError, match="does not match the pinned fingerprint"):
        finish(pin="sha256:" + "00" * 32)
    with pytest.raises(DowngradeError):
        finish(suite=3 - vec["suite"])
    with pytest.raises(DowngradeError):
        finish(version=2)
    with pytest.raises(HandshakeError):  # flag flipped: the signature no longer verifies
        finish(client_auth_required=not r.client_auth_required)
    bad = bytearray(r.server_finished)
    bad[0] ^= 1
    with pytest.raises(HandshakeError, match="Finished"):
        finish(finished=bytes(bad))
    with pytest.raises(HandshakeError):
        finish(session_id=r.session_id[:15])
