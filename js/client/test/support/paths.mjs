import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
/** The repository's root (js/client/test/support/ is four levels down). */
export const repoRoot = resolve(here, '..', '..', '..', '..');
export const clientRoot = join(repoRoot, 'js', 'client');
export const reactRoot = join(repoRoot, 'js', 'react');
