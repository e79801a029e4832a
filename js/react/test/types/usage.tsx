// Typed uses of @enclave-vm/react: must compile under `tsc -p js/react`; each line marked
// with a ts-expect-error comment must not.
import * as React from 'react';
import { SecureCodeEditor, useEnclave, type SecureCodeEditorProps } from '@enclave-vm/react';
import type { FinalEvent } from '@enclave-vm/client';

const PIN = 'sha256:abb7f16a058a5d546d3645a6fc5c38abb1919cbf18efb4b87467bda2e4b56636';

export function App(): React.ReactElement {
  const [last, setLast] = React.useState<FinalEvent | null>(null);
  return (
    <div>
      <SecureCodeEditor
        serverUrl="http://127.0.0.1:7780"
        pin={PIN}
        curve="P-256"
        initialCode="return 1 + 1"
        limits={{ timeoutMs: 1000 }}
        onResult={(event) => setLast(event)}
        onError={(error) => console.error(error.message)}
      />
      {last ? <pre>{last.resultJson}</pre> : null}
    </div>
  );
}

export function Runner({ code }: { code: string }): React.ReactElement {
  const enclave = useEnclave({ serverUrl: '', pin: PIN });
  const [out, setOut] = React.useState('');
  const run = async () => {
    const { value } = await enclave.execute<number>(code, { level: 'STRICT' });
    setOut(String(value + 1));
    for await (const event of enclave.executeStreaming(code)) if (event.type === 'console') setOut(event.text);
  };
  return (
    <button disabled={!enclave.connected} onClick={run} title={enclave.error?.message ?? enclave.session?.fingerprint ?? enclave.status}>
      {out}
    </button>
  );
}

export const props: SecureCodeEditorProps = { serverUrl: '', pin: PIN, rows: 4 };

export function Mistakes(): React.ReactElement {
  // @ts-expect-error: the pin is required
  useEnclave({ serverUrl: '' });
  return (
    <>
      {/* @ts-expect-error: no such curve */}
      <SecureCodeEditor serverUrl="" pin={PIN} curve="P-521" />
      {/* @ts-expect-error: the pin is required */}
      <SecureCodeEditor serverUrl="" />
    </>
  );
}
