import { readFileSync } from 'node:fs'
import { parseEnv } from 'node:util'

/**
 * Reads `path` (default `.env` in the working directory, where `npm start` runs) into `env`; a missing file is fine.
 * The real environment wins: a variable set (non-empty) there is kept, since an empty variable counts as unset
 * everywhere else too. Node's own parser (`util.parseEnv`, as `--env-file` uses), so there is no dotenv dependency,
 * and not `process.loadEnvFile`, which would let a `.env` value replace an empty real one inconsistently.
 * Returns the names taken from the file (never their values: a `.env` holds secrets).
 */
export function loadEnvFile (path = '.env', env: NodeJS.ProcessEnv = process.env): { path: string, names: string[] } {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { path, names: [] }
    throw err
  }
  const names: string[] = []
  for (const [name, value] of Object.entries(parseEnv(text))) {
    if (env[name] !== undefined && env[name] !== '') continue
    env[name] = value
    names.push(name)
  }
  return { path, names }
}
