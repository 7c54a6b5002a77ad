/**
 * The development API key, kept in `DATA_DIR/dev-key` (mode 0600) so that it is the same across restarts and saved
 * scripts keep working; `npm run dev-key -- --rotate` (scripts/dev-key.ts) replaces it. It exists only while
 * API_KEYS is unset, and it is an operator key (docs/API.md, "Auth and roles").
 */
import { randomBytes } from 'node:crypto'
import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'

const DEV_KEY = /^dev_[A-Za-z0-9_-]{16,200}$/

export const devKeyPath = (dataDir: string): string => join(dataDir, 'dev-key')

export function newDevKey (): string {
  return `dev_${randomBytes(18).toString('base64url')}`
}

/** Written to a temporary file with mode 0600 and renamed into place: never readable by others, never half. */
async function save (path: string, key: string): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`
  await writeFile(tmp, key + '\n', { mode: 0o600 })
  await chmod(tmp, 0o600)
  await rename(tmp, path)
}

/** The saved key, or a new one saved; `rotate` always makes a new one. */
export async function loadDevKey (dataDir: string, opts: { rotate?: boolean } = {}):
Promise<{ key: string, path: string, created: boolean }> {
  await mkdir(dataDir, { recursive: true })
  const path = devKeyPath(dataDir)
  if (opts.rotate !== true) {
    const saved = (await readFile(path, 'utf8').catch(() => '')).trim()
    if (DEV_KEY.test(saved)) {
      // Kept private even if someone loosened it by hand.
      await chmod(path, 0o600).catch(() => {})
      return { key: saved, path, created: false }
    }
  }
  const key = newDevKey()
  await save(path, key)
  return { key, path, created: true }
}
