// The protocol code of @enclave-vm/client against the known-answer vectors in
// proto/testdata/ (docs/PROTOCOL.md §14), plus the client-side refusals the protocol
// requires. Environment-neutral: test/vectors.test.mjs runs it under Node, and
// test/browser.test.mjs in headless Chromium. `lib` is the module
// '@enclave-vm/client/protocol' (src/protocol.js).

export function makeChecks(lib) {
  const {
    Suite, RecordKind, EnclaveProtocolError, fromHex, toHex, concat, u8,
    sha256, hkdfExtract, hkdfLabel, hkdfExpandLabel, deriveEpochKeys, nextTrafficSecret, fingerprintOf, parsePin,
    encodeClientHello, encodeServerHello, signingInput, importEphemeral, generateEphemeral, deriveShared,
    recordNonce, associatedData, aesGcmSeal, aesGcmOpen, startHandshake, finishHandshake, importEd25519Seed,
    StreamOpener, encodeExecuteRequest, decodeStreamEvent, decodeExecuteResult,
    handshakeRequestJson, serverHelloFromJson, recordToJson, recordFromJson, toBase64, ndjsonLines,
  } = lib;

  let checks = 0;
  function eq(actual, expected, what) {
    const a = actual instanceof Uint8Array ? toHex(actual) : actual;
    const e = expected instanceof Uint8Array ? toHex(expected) : expected;
    if (a !== e) throw new Error(`${what}: got ${a}, want ${e}`);
    checks++;
  }
  function ok(cond, what) {
    if (!cond) throw new Error(what);
    checks++;
  }
  async function refuses(promiseOrFn, what, kind) {
    try {
      await (typeof promiseOrFn === 'function' ? promiseOrFn() : promiseOrFn);
    } catch (e) {
      if (kind && !(e instanceof EnclaveProtocolError && e.kind === kind)) throw new Error(`${what}: refused, but with ${e && e.name} ${e && e.kind}: ${e && e.message}`);
      checks++;
      return e;
    }
    throw new Error(`${what}: was accepted`);
  }
  const clone = (o) => ({ ...o });
  const flip = (bytes, i = 0) => {
    const b = Uint8Array.from(bytes);
    b[i] ^= 1;
    return b;
  };

  const KIND = Object.fromEntries(Object.entries(lib.RECORD_KIND_NAMES).map(([n, name]) => [name, Number(n)]));

  async function checkVectorFile(file, v) {
    const h = v.handshake;
    const x = (s) => fromHex(s);
    const suite = v.suite;
    eq(v.protocol_version, 1, `${file}: protocol version`);
    ok(suite === Suite.X25519 || suite === Suite.P256, `${file}: suite ${suite}`);

    // Shares and identities from the inputs alone.
    const clientEph = await importEphemeral(suite, x(v.inputs.client_ephemeral_secret));
    const serverEph = await importEphemeral(suite, x(v.inputs.server_ephemeral_secret));
    eq(clientEph.share, h.client_share, `${file}: client_share`);
    eq(serverEph.share, h.server_share, `${file}: server_share`);
    const serverId = await importEd25519Seed(x(v.inputs.server_identity_seed));
    const clientId = await importEd25519Seed(x(v.inputs.client_identity_seed));
    eq(serverId.publicKey, h.server_identity, `${file}: server_identity`);
    eq(clientId.publicKey, h.client_identity, `${file}: client_identity`);
    eq(await fingerprintOf(serverId.publicKey), h.server_fingerprint, `${file}: server_fingerprint`);
    eq(await fingerprintOf(clientId.publicKey), h.client_fingerprint, `${file}: client_fingerprint`);
    eq(await deriveShared(clientEph, serverEph.share), h.shared_secret, `${file}: shared secret (client side)`);
    eq(await deriveShared(serverEph, clientEph.share), h.shared_secret, `${file}: shared secret (broker side)`);

    // Transcript pieces, computed independently of finishHandshake.
    const hello = { version: 1, suite, clientShare: clientEph.share };
    eq(encodeClientHello(hello), h.client_hello_encoding, `${file}: CH`);
    const sh = {
      version: 1,
      suite,
      sessionId: x(v.inputs.session_id),
      serverShare: x(h.server_share),
      serverIdentity: x(h.server_identity),
      clientAuthRequired: v.inputs.client_auth_required,
      signature: x(h.server_signature),
      finished: x(h.server_finished),
    };
    eq(encodeServerHello(sh), h.server_hello_encoding, `${file}: SH`);
    eq(await sha256(x(h.client_hello_encoding), x(h.server_hello_encoding)), h.h_sh, `${file}: H_SH`);
    eq(signingInput('server', x(h.h_sh)), h.server_signing_input, `${file}: server_signing_input`);
    const serverSig = new Uint8Array(await crypto.subtle.sign({ name: 'Ed25519' }, serverId.privateKey, x(h.server_signing_input)));
    eq(serverSig, h.server_signature, `${file}: server_signature (Ed25519 is deterministic)`);
    eq(await hkdfExtract(new Uint8Array(32), x(h.shared_secret)), h.handshake_secret, `${file}: handshake_secret`);

    // The client's whole handshake, from its own ephemeral key and the ServerHello.
    const { state, hello: sentHello } = await startHandshake({ pin: h.server_fingerprint, suite, ephemeral: clientEph, trace: true });
    eq(encodeClientHello(sentHello), h.client_hello_encoding, `${file}: ClientHello from startHandshake`);
    // The proto3 JSON of the ClientHello, and the ServerHello through the JSON mapping.
    const helloJson = handshakeRequestJson(sentHello);
    eq(helloJson.clientHello.clientShare, toBase64(x(h.client_share)), `${file}: clientShare JSON`);
    eq(helloJson.clientHello.suite, v.suite_name, `${file}: suite JSON`);
    const shJson = {
      serverHello: {
        version: 1,
        suite: v.suite_name,
        sessionId: toBase64(sh.sessionId),
        serverShare: toBase64(sh.serverShare),
        serverIdentity: toBase64(sh.serverIdentity),
        clientAuthRequired: sh.clientAuthRequired,
        signature: toBase64(sh.signature),
        finished: toBase64(sh.finished),
      },
    };
    const session = await finishHandshake(state, serverHelloFromJson(JSON.parse(JSON.stringify(shJson))));
    const t = session.trace;
    eq(t.sharedSecret, h.shared_secret, `${file}: trace shared_secret`);
    eq(t.clientHelloEncoding, h.client_hello_encoding, `${file}: trace CH`);
    eq(t.serverHelloEncoding, h.server_hello_encoding, `${file}: trace SH`);
    eq(t.hSh, h.h_sh, `${file}: trace h_sh`);
    eq(t.handshakeSecret, h.handshake_secret, `${file}: trace handshake_secret`);
    eq(t.serverFinishedKey, h.server_finished_key, `${file}: server_finished_key`);
    eq(t.clientFinishedKey, h.client_finished_key, `${file}: client_finished_key`);
    eq(t.serverSigningInput, h.server_signing_input, `${file}: trace server_signing_input`);
    eq(t.hSv, h.h_sv, `${file}: h_sv`);
    eq(t.hSf, h.h_sf, `${file}: h_sf`);
    eq(t.clientTrafficSecret0, h.client_traffic_secret_0, `${file}: client_traffic_secret_0`);
    eq(t.serverTrafficSecret0, h.server_traffic_secret_0, `${file}: server_traffic_secret_0`);
    eq(session.fingerprint, h.server_fingerprint, `${file}: session fingerprint`);
    eq(toHex(session.sessionId), v.inputs.session_id, `${file}: session id`);

    // Client authentication (§6.4).
    const auth = await session.authenticate(clientId);
    eq(t.hCa, h.h_ca, `${file}: h_ca`);
    eq(t.clientSigningInput, h.client_signing_input, `${file}: client_signing_input`);
    eq(auth.signature, h.client_signature, `${file}: client_signature`);
    eq(t.hCv, h.h_cv, `${file}: h_cv`);
    eq(auth.finished, h.client_finished, `${file}: client_finished`);

    // The same ClientAuth from a keyProvider that is not a ClientKey (a KMS, a token: any
    // object with getPublicKey() and sign()), and from a non-extractable imported key.
    {
      const signed = [];
      const external = {
        getPublicKey: async () => clientId.publicKey.buffer.slice(0),
        sign: async (data) => {
          signed.push(Uint8Array.from(data));
          return clientId.sign(data);
        },
      };
      const again = await finishHandshake((await startHandshake({ pin: h.server_fingerprint, suite, ephemeral: clientEph })).state, clone(sh));
      const auth2 = await again.authenticate(external);
      eq(auth2.signature, h.client_signature, `${file}: client_signature through an external keyProvider`);
      eq(auth2.finished, h.client_finished, `${file}: client_finished through an external keyProvider`);
      eq(signed.length, 1, 'the keyProvider signs once');
      eq(signed[0], h.client_signing_input, `${file}: the keyProvider signs exactly the client signing input`);
      const pkcs8 = concat(fromHex('302e020100300506032b657004220420'), x(v.inputs.client_identity_seed));
      const sealedKey = await lib.importClientKey(pkcs8);
      ok(sealedKey.privateKey.extractable === false, 'importClientKey: the private key is not extractable');
      eq(sealedKey.fingerprint, h.client_fingerprint, `${file}: importClientKey fingerprint`);
      const pem = `-----BEGIN PRIVATE KEY-----\n${toBase64(pkcs8)}\n-----END PRIVATE KEY-----\n`;
      eq((await lib.importClientKey(pem)).fingerprint, h.client_fingerprint, `${file}: importClientKey from PEM`);
      const third = await finishHandshake((await startHandshake({ pin: h.server_fingerprint, suite, ephemeral: clientEph })).state, clone(sh));
      eq((await third.authenticate(sealedKey)).signature, h.client_signature, `${file}: client_signature with a non-extractable key`);
      const bad = await finishHandshake((await startHandshake({ pin: h.server_fingerprint, suite, ephemeral: clientEph })).state, clone(sh));
      await refuses(bad.authenticate({ getPublicKey: async () => new Uint8Array(31), sign: async () => new Uint8Array(64) }), 'a 31-byte public key', 'client-auth');
      const bad2 = await finishHandshake((await startHandshake({ pin: h.server_fingerprint, suite, ephemeral: clientEph })).state, clone(sh));
      await refuses(bad2.authenticate({ getPublicKey: async () => clientId.publicKey, sign: async () => new Uint8Array(63) }), 'a 63-byte signature', 'client-auth');
    }

    // Epoch keys, both directions.
    const secrets = { client_to_broker: x(h.client_traffic_secret_0), broker_to_client: x(h.server_traffic_secret_0) };
    for (const e of [...v.epochs].sort((a, b) => a.epoch - b.epoch)) {
      if (e.epoch > 0) secrets[e.direction] = await nextTrafficSecret(secrets[e.direction]);
      eq(secrets[e.direction], e.secret, `${file}: ${e.direction} epoch ${e.epoch} secret`);
      const keys = await deriveEpochKeys(secrets[e.direction]);
      eq(keys.key, e.key, `${file}: ${e.direction} epoch ${e.epoch} key`);
      eq(keys.iv, e.iv, `${file}: ${e.direction} epoch ${e.epoch} iv`);
    }
    const epochKeys = {};
    for (const e of v.epochs) epochKeys[`${e.direction}/${e.epoch}`] = { key: x(e.key), iv: x(e.iv) };

    // Every record with bare AES-GCM: AD, nonce, ciphertext, and the reverse.
    for (const r of v.records) {
      const dir = r.direction === 'client_to_broker' ? 1 : 2;
      eq(KIND[r.kind_name], r.kind, `${file}: kind ${r.kind_name}`);
      const ad = associatedData(x(v.inputs.session_id), dir, r.epoch, BigInt(r.seq), r.kind, BigInt(r.request_seq), r.event_index);
      eq(ad, r.ad, `${file}: record seq ${r.seq} ${r.kind_name} AD`);
      ok(ad.length === 42, 'AD is 42 bytes');
      const k = epochKeys[`${r.direction}/${r.epoch}`];
      const nonce = recordNonce(k.iv, BigInt(r.seq));
      eq(nonce, r.nonce, `${file}: record ${r.kind_name} nonce`);
      eq(await aesGcmSeal(k.key, nonce, x(r.plaintext), ad), r.ciphertext, `${file}: record ${r.kind_name} ciphertext`);
      eq(await aesGcmOpen(k.key, nonce, x(r.ciphertext), ad), r.plaintext, `${file}: record ${r.kind_name} opens`);
      await refuses(aesGcmOpen(k.key, nonce, flip(x(r.ciphertext)), ad), `${file}: tampered ${r.kind_name}`, 'record');
    }

    // The same session through the client's Channel, in sending order: it seals the client's
    // records byte for byte, and opens the broker's only as the answers they are.
    const ch = session.channel;
    const rec = (r) => ({
      sessionId: x(v.inputs.session_id),
      epoch: r.epoch,
      seq: BigInt(r.seq),
      kind: r.kind,
      eventIndex: r.event_index,
      ciphertext: x(r.ciphertext),
    });
    const first = (name) => {
      const r = v.records.find((record) => record.kind_name === `RECORD_KIND_${name}`);
      ok(r, `${file}: a ${name} record`);
      return r;
    };
    const [execReq, execRes, streamEv, streamFin, rekeyRes] = ['EXECUTE_REQUEST', 'EXECUTE_RESULT', 'STREAM_EVENT', 'STREAM_FINAL', 'REKEY_RESULT'].map(first);
    const streamSeq = BigInt(streamFin.request_seq);
    eq(encodeExecuteRequest({ code: 'return 1 + 1', level: 1 }), execReq.plaintext, `${file}: ExecuteRequest encoding`);

    /** Refusals of the stream's records, before any of them opens (none changes the channel). */
    async function streamRefusals() {
      const o = new StreamOpener(streamSeq);
      await refuses(o.open(ch, rec(streamFin)), `${file}: the final event before event 0`, 'stream');
      const o2 = new StreamOpener(streamSeq);
      await refuses(o2.open(ch, { ...rec(streamEv), kind: RecordKind.STREAM_FINAL }), `${file}: STREAM_EVENT relabelled as STREAM_FINAL`, 'record');
      const o3 = new StreamOpener(streamSeq + 100n);
      await refuses(o3.open(ch, rec(streamEv)), `${file}: event from another stream`, 'record');
      const o4 = new StreamOpener(streamSeq);
      await o4.open(ch, rec(streamEv));
      await refuses(async () => o4.finish(), `${file}: stream truncated before STREAM_FINAL`, 'truncated');
    }

    const openers = new Map();
    const streamEvents = [];
    for (const r of v.records) {
      if (r.direction === 'client_to_broker') {
        const sealed = r.kind === RecordKind.REKEY_REQUEST ? await ch.sealRekeyRequest() : await ch.sealRequest(r.kind, x(r.plaintext));
        eq(sealed.seq, BigInt(r.seq), `${file}: ${r.kind_name} seq`);
        eq(sealed.epoch, r.epoch, `${file}: ${r.kind_name} epoch`);
        eq(sealed.ciphertext, r.ciphertext, `${file}: Channel seals ${r.kind_name}`);
        if (r === execReq) {
          // Through the JSON mapping and back.
          const json0 = JSON.parse(JSON.stringify(recordToJson(sealed)));
          eq(json0.kind, 'RECORD_KIND_EXECUTE_REQUEST', 'record JSON kind');
          eq(json0.seq, '0', 'record JSON seq is a decimal string');
          const back0 = recordFromJson(json0);
          eq(back0.ciphertext, sealed.ciphertext, 'record JSON round trip');
          eq(back0.seq, 0n, 'record JSON round trip seq');
        }
        continue;
      }
      if (r.kind === RecordKind.STREAM_EVENT || r.kind === RecordKind.STREAM_FINAL) {
        const key = String(r.request_seq);
        if (!openers.has(key)) {
          await streamRefusals();
          openers.set(key, new StreamOpener(BigInt(r.request_seq)));
        }
        streamEvents.push(await openers.get(key).open(ch, rec(r)));
        continue;
      }
      const requestSeq = BigInt(r.request_seq);
      if (r === execRes) {
        // A reply taken as another request's, or as another kind, or tampered, fails.
        await refuses(ch.openReply(requestSeq + 5n, RecordKind.EXECUTE_RESULT, rec(execRes)), `${file}: reply bound to another request`, 'record');
        await refuses(ch.openReply(requestSeq, RecordKind.CLOSE_RESULT, rec(execRes)), `${file}: reply of another kind`, 'record');
        await refuses(ch.openReply(requestSeq, RecordKind.EXECUTE_RESULT, { ...rec(execRes), seq: 7n }), `${file}: reply with a changed seq`, 'record');
        await refuses(ch.openReply(requestSeq, RecordKind.EXECUTE_RESULT, { ...rec(execRes), sessionId: new Uint8Array(16) }), `${file}: reply from another session`, 'record');
        await refuses(ch.openReply(requestSeq, RecordKind.EXECUTE_RESULT, { ...rec(execRes), epoch: 5 }), `${file}: reply under a far epoch`, 'record');
      }
      if (r === rekeyRes) {
        // The broker's reply is under its next epoch: the receiver derives it on the spot,
        // and only if the record authenticates.
        const before = ch.recv.epoch;
        await refuses(ch.openReply(requestSeq, r.kind, { ...rec(r), ciphertext: flip(x(r.ciphertext), 3) }), `${file}: tampered next-epoch record`, 'record');
        eq(ch.recv.epoch, before, 'a failed next-epoch record changes nothing');
      }
      const plaintext = await ch.openReply(requestSeq, r.kind, rec(r));
      eq(plaintext, r.plaintext, `${file}: ${r.kind_name} (seq ${r.seq}) opens`);
      if (r === execRes) {
        const result = decodeExecuteResult(plaintext);
        eq(result.outcome, 'final', 'ExecuteResult outcome');
        eq(result.final.resultJson, '2', 'ExecuteResult value');
      }
      if (r === rekeyRes) eq(ch.recv.epoch, r.epoch, 'the receive epoch moved with the rekey');
    }
    ok(ch.send.epoch >= 1 && ch.recv.epoch >= 1, `${file}: the session went through a rekey`);
    for (const o of openers.values()) o.finish();
    eq(streamEvents[0].type, 'console', 'stream event 0 type');
    eq(streamEvents[0].value.level, 1, 'stream event 0 level');
    eq(streamEvents[0].value.text, 'hi', 'stream event 0 text');
    const last = streamEvents[streamEvents.length - 1];
    eq(last.type, 'final', 'the stream ends with its final event');
    eq(last.value.outcome, 'resultJson', 'the final event has a value');

    // Records the broker could have sealed (we hold its epoch-0 key here), but that break the
    // stream rules: anything after STREAM_FINAL, and content that disagrees with the kind.
    const forge = async (kind, eventIndex, plaintext, seq) => {
      const k = epochKeys['broker_to_client/0'];
      const sid = x(v.inputs.session_id);
      const ad = associatedData(sid, 2, 0, BigInt(seq), kind, streamSeq, eventIndex);
      return { sessionId: sid, epoch: 0, seq: BigInt(seq), kind, eventIndex, ciphertext: await aesGcmSeal(k.key, recordNonce(k.iv, BigInt(seq)), plaintext, ad) };
    };
    const opener = openers.get(String(streamSeq));
    const afterFinal = await forge(RecordKind.STREAM_EVENT, streamEvents.length, x(streamEv.plaintext), 100);
    const e1 = await refuses(opener.open(ch, afterFinal), `${file}: record after STREAM_FINAL`, 'stream');
    ok(/after STREAM_FINAL/.test(e1.message), `after-final message: ${e1.message}`);
    const consoleAsFinal = await forge(RecordKind.STREAM_FINAL, 0, x(streamEv.plaintext), 101);
    const e2 = await refuses(new StreamOpener(streamSeq).open(ch, consoleAsFinal), `${file}: console event sealed as STREAM_FINAL`, 'stream');
    ok(/disagrees/.test(e2.message), `kind/content message: ${e2.message}`);
    const finalAsEvent = await forge(RecordKind.STREAM_EVENT, 0, x(streamFin.plaintext), 102);
    await refuses(new StreamOpener(streamSeq).open(ch, finalAsEvent), `${file}: final event sealed as STREAM_EVENT`, 'stream');
    const o5 = new StreamOpener(streamSeq);
    ok((await o5.open(ch, await forge(RecordKind.STREAM_EVENT, 0, x(streamEv.plaintext), 103))).type === 'console', 'forged in-order event opens');
    await refuses(o5.open(ch, await forge(RecordKind.STREAM_EVENT, 2, x(streamEv.plaintext), 104)), `${file}: gap in the stream`, 'stream');
    await refuses(o5.open(ch, await forge(RecordKind.STREAM_FINAL, 1, x(streamFin.plaintext), 105)), `${file}: a failed stream stays failed`, 'stream');

    // The previous epoch stays readable during its grace period.
    eq((await ch.openReply(BigInt(execRes.request_seq), RecordKind.EXECUTE_RESULT, rec(execRes))).length, x(execRes.plaintext).length, `${file}: previous epoch within grace`);

    // Handshake refusals (§5.3), each on a fresh state.
    const fresh = async (pin = h.server_fingerprint) => (await startHandshake({ pin, suite, ephemeral: clientEph })).state;
    const wrongPin = `sha256:${'0'.repeat(64)}`;
    const pinErr = await refuses(finishHandshake(await fresh(wrongPin), clone(sh)), `${file}: wrong pin`, 'pin');
    ok(/pin mismatch/.test(pinErr.message) && pinErr.message.includes(h.server_fingerprint), `pin error names both keys: ${pinErr.message}`);
    const upperPin = `sha256:${h.server_fingerprint.slice(7).toUpperCase()}`;
    eq((await finishHandshake(await fresh(upperPin), clone(sh))).fingerprint, h.server_fingerprint, `${file}: upper-case pin accepted`);
    await refuses(finishHandshake(await fresh(), { ...sh, suite: suite === 1 ? 2 : 1 }), `${file}: other suite (downgrade)`, 'downgrade');
    await refuses(finishHandshake(await fresh(), { ...sh, version: 2 }), `${file}: other version`, 'downgrade');
    await refuses(finishHandshake(await fresh(), { ...sh, signature: flip(sh.signature, 10) }), `${file}: bad signature`, 'handshake');
    await refuses(finishHandshake(await fresh(), { ...sh, finished: flip(sh.finished, 31) }), `${file}: bad Finished`, 'handshake');
    await refuses(finishHandshake(await fresh(), { ...sh, clientAuthRequired: !sh.clientAuthRequired }), `${file}: flipped client_auth_required`, 'handshake');
    await refuses(finishHandshake(await fresh(), { ...sh, sessionId: flip(sh.sessionId) }), `${file}: other session id`, 'handshake');
    await refuses(finishHandshake(await fresh(), { ...sh, sessionId: sh.sessionId.subarray(0, 15) }), `${file}: short session id`, 'handshake');
    const otherEph = await generateEphemeral(suite);
    await refuses(finishHandshake(await fresh(), { ...sh, serverShare: otherEph.share }), `${file}: substituted broker share`, 'handshake');
    for (const share of v.invalid_peer_shares) {
      await refuses(deriveShared(clientEph, x(share)), `${file}: invalid peer share ${share.slice(0, 16)}…`, 'handshake');
      await refuses(finishHandshake(await fresh(), { ...sh, serverShare: x(share) }), `${file}: ServerHello with invalid share`, 'handshake');
    }
    return `${file}: ${v.records.length} records, ${v.invalid_peer_shares.length} invalid shares refused`;
  }

  async function checkPieces() {
    // HkdfLabel example of §7.
    eq(hkdfLabel('key', new Uint8Array(0), 32), '00200c656e636c61766531206b657900', 'HkdfLabel example');
    // RFC 5869 test case 1 (HKDF-SHA256), for the generic HKDF under the label helper.
    const prk = await hkdfExtract(fromHex('000102030405060708090a0b0c'), fromHex('0b'.repeat(22)));
    eq(prk, '077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5', 'RFC 5869 PRK');
    eq(await lib.hkdfExpand(prk, fromHex('f0f1f2f3f4f5f6f7f8f9'), 42),
      '3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865', 'RFC 5869 OKM (two blocks)');
    ok((await hkdfExpandLabel(prk, 'iv', new Uint8Array(0), 12)).length === 12, 'iv length');

    // Pins.
    await refuses(async () => parsePin('{{FINGERPRINT}}'), 'unreplaced template pin', 'pin');
    await refuses(async () => parsePin('sha1:' + '0'.repeat(64)), 'pin with another prefix', 'pin');
    await refuses(async () => parsePin('sha256:' + '0'.repeat(63)), 'short pin', 'pin');
    eq(parsePin(`  sha256:${'AB'.repeat(32)}\n`), 'ab'.repeat(32), 'pin: upper-case hex and whitespace');

    // Protobuf: unknown fields of every wire type are skipped, oneofs and nesting decode.
    const tag = (f, wt) => u8((f << 3) | wt);
    const len = (b) => concat(u8(b.length), b);
    const console1 = concat(tag(1, 0), u8(3), tag(2, 2), len(new TextEncoder().encode('warned')), tag(9, 0), u8(0x80), u8(0x01));
    const withUnknowns = concat(
      tag(7, 0), fromHex('ffffffffffffffffff01'), // varint, 10 bytes
      tag(8, 1), new Uint8Array(8), // fixed64
      tag(9, 2), len(fromHex('0a0b0c')), // length-delimited
      tag(10, 5), new Uint8Array(4), // fixed32
      tag(11, 3), tag(1, 0), u8(1), tag(12, 3), tag(12, 4), tag(11, 4), // group with a nested group
      tag(1, 2), len(console1),
      tag(15, 2), len(new Uint8Array(0)),
    );
    const ev = decodeStreamEvent(withUnknowns);
    eq(ev.type, 'console', 'unknown fields skipped: type');
    eq(ev.value.level, 3, 'unknown fields skipped: level');
    eq(ev.value.text, 'warned', 'unknown fields skipped: text');
    const toolCall = decodeStreamEvent(concat(tag(2, 2), len(concat(tag(1, 0), fromHex('ffffffffffffffff7f'), tag(2, 2), len(new TextEncoder().encode('echo')), tag(3, 2), len(new TextEncoder().encode('{"a":1}'))))));
    eq(toolCall.type, 'toolCall', 'tool call');
    eq(toolCall.value.callId, (1n << 63n) - 1n, 'tool call id as u64');
    eq(toolCall.value.name, 'echo', 'tool call name');
    eq(toolCall.value.argsJson, '{"a":1}', 'tool call args');
    const toolResult = decodeStreamEvent(concat(tag(3, 2), len(concat(tag(1, 0), u8(4), tag(2, 0), u8(1), tag(3, 2), len(new TextEncoder().encode('echo'))))));
    eq(toolResult.type, 'toolResult', 'tool result');
    eq(toolResult.value.isError, true, 'tool result is_error');
    const jobErr = concat(tag(1, 0), u8(1), tag(2, 2), len(new TextEncoder().encode('x is not defined')), tag(3, 2), len(new TextEncoder().encode('ReferenceError')), tag(4, 0), u8(3));
    const finalErr = decodeStreamEvent(concat(tag(4, 2), len(concat(tag(2, 2), len(jobErr), tag(3, 2), len(concat(tag(1, 0), fromHex('e807'), tag(2, 0), u8(2)))))));
    eq(finalErr.type, 'final', 'final with error');
    eq(finalErr.value.outcome, 'error', 'final outcome error');
    eq(finalErr.value.error.name, 'ReferenceError', 'job error name');
    eq(finalErr.value.error.line, 3, 'job error line');
    eq(finalErr.value.stats.durationUs, 1000n, 'stats duration');
    eq(finalErr.value.stats.toolCalls, 2, 'stats tool calls');
    const brokerErr = decodeStreamEvent(concat(tag(5, 2), len(concat(tag(1, 0), u8(11)))));
    eq(brokerErr.type, 'error', 'broker error event');
    eq(brokerErr.value.code, 11, 'broker error code');
    eq(decodeStreamEvent(new Uint8Array(0)).type, null, 'empty StreamEvent');
    await refuses(async () => decodeStreamEvent(concat(tag(1, 2), u8(5), u8(1))), 'truncated length-delimited field', 'decode');
    await refuses(async () => decodeStreamEvent(fromHex('0880')), 'truncated varint', 'decode');
    await refuses(async () => decodeStreamEvent(concat(tag(11, 3), tag(1, 0), u8(1))), 'unterminated group', 'decode');
    await refuses(async () => decodeStreamEvent(concat(tag(1, 0), u8(1))), 'known field with the wrong wire type', 'decode');
    await refuses(async () => decodeStreamEvent(concat(tag(1, 2), len(concat(tag(2, 2), len(fromHex('c328')))))), 'invalid UTF-8', 'decode');
    await refuses(async () => decodeStreamEvent(fromHex('0f')), 'wire type 7', 'decode');
    // ExecuteRequest with input and a timeout limit (optional field present even when 0).
    eq(encodeExecuteRequest({ code: 'x', level: 0, limits: { timeoutMs: 0 }, inputJson: '{}' }), '0a0b0a01781a02080022027b7d', 'ExecuteRequest with limits and input');
    eq(
      encodeExecuteRequest({ code: 'x', level: 2, limits: { timeoutMs: 5000, memoryBytes: 1 << 20, maxToolCalls: 7, maxConsoleBytes: 0, maxResultBytes: 1, maxToolArgsBytes: 2 } }),
      '0a160a017810021a0f088827108080401807200028013002',
      'ExecuteRequest with every limit (optional fields present even when 0)',
    );
    eq(encodeExecuteRequest({ code: 'x', limits: {} }), '0a050a01781a00', 'empty Limits message');

    // Proto3 JSON: omitted defaults, numbers and names, snake_case.
    const r = recordFromJson({ session_id: toBase64(new Uint8Array(16)), kind: 5, ciphertext: toBase64(new Uint8Array(16)) });
    eq(r.epoch, 0, 'omitted epoch');
    eq(r.seq, 0n, 'omitted seq');
    eq(r.eventIndex, 0, 'omitted eventIndex');
    eq(r.kind, RecordKind.STREAM_FINAL, 'numeric kind');
    eq(recordFromJson({ seq: '18446744073709551614', kind: 'RECORD_KIND_STREAM_EVENT', eventIndex: '3' }).seq, 18446744073709551614n, 'large seq string');
    await refuses(async () => recordFromJson({ seq: '18446744073709551616' }), 'seq over u64', 'decode');
    await refuses(async () => recordFromJson({ kind: 'RECORD_KIND_NOPE' }), 'unknown kind name', 'decode');
    await refuses(async () => recordFromJson({ ciphertext: 'not base64!' }), 'bad base64', 'decode');
    eq(recordFromJson({ ciphertext: '-_8' }).ciphertext, 'fbff', 'URL-safe unpadded base64');
    await refuses(async () => serverHelloFromJson({ clientAuthAccepted: {} }), 'no ServerHello', 'handshake');

    // Decoded events -> the package's typed events.
    const { eventFrom } = lib;
    ok(JSON.stringify(eventFrom(ev)) === JSON.stringify({ type: 'console', level: 'warn', text: 'warned' }), 'console event');
    const tc = eventFrom(toolCall);
    ok(tc.type === 'tool_call' && tc.name === 'echo' && tc.args.a === 1 && tc.argsJson === '{"a":1}', 'tool_call event');
    ok(JSON.stringify(eventFrom(toolResult)) === JSON.stringify({ type: 'tool_result', callId: 4, name: 'echo', isError: true }), 'tool_result event');
    const fe = eventFrom(finalErr);
    ok(fe.type === 'error' && fe.code === 'SCRIPT_ERROR' && fe.errorName === 'ReferenceError' && fe.line === 3 && fe.stats.durationUs === 1000 && fe.stats.toolCalls === 2, `script error event: ${JSON.stringify(fe)}`);
    const be = eventFrom(brokerErr);
    ok(be.type === 'error' && be.code === 'EXECUTOR_LOST' && be.stats === null && be.line === null, `broker error event: ${JSON.stringify(be)}`);
    await refuses(async () => eventFrom(decodeStreamEvent(new Uint8Array(0))), 'an empty stream event', 'decode');

    // NDJSON reading across arbitrary chunk boundaries.
    const text = '{"a":1}\n\n{"b":"é"}\r\n{"c":3}';
    const bytes = new TextEncoder().encode(text);
    const body = new ReadableStream({
      start(c) {
        for (let i = 0; i < bytes.length; i += 3) c.enqueue(bytes.subarray(i, i + 3));
        c.close();
      },
    });
    const lines = [];
    for await (const line of ndjsonLines(body)) lines.push(line);
    eq(JSON.stringify(lines), JSON.stringify(['{"a":1}', '{"b":"é"}', '{"c":3}']), 'NDJSON lines');
    return 'pieces: HKDF, pins, protobuf, JSON mapping, NDJSON';
  }

  return { checkPieces, checkVectorFile, count: () => checks };
}
